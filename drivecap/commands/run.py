"""``drivecap run --source SRC``: live captioning of a camera, stream or pipeline (window where possible)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from drivecap.config import Config
from drivecap.errors import ConfigError
from drivecap.web.options import add_serve_args, live_server

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="caption a live source: camera index, rtsp/http URL, GStreamer pipeline (or a file, paced)",
        description="Live captioning. Shows a window where a display exists; prints captions otherwise. "
        "With --out DIR also records <name>.mp4/.srt/.vtt/.jsonl. Ctrl-C stops cleanly.",
    )
    p.add_argument(
        "--source",
        required=True,
        metavar="SRC",
        help="0 (camera index), rtsp://..., http://.../video.mjpg, 'nvarguscamerasrc ! ... ! appsink', "
        "a video file or an image folder (played at its own rate)",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="also record video, subtitles and events here")
    p.add_argument(
        "--speech",
        choices=("auto", "pyttsx3", "espeak", "wav", "none"),
        help="default: speech.backend (auto: speak where sound can play)",
    )
    p.add_argument("--no-window", action="store_true", help="never open a window")
    p.add_argument("--max-seconds", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N output frames")
    p.add_argument("--loop", action="store_true", help="files: start again at the end")
    add_serve_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.commands.replay import print_summary, resolve_input
    from drivecap.metrics import LatencyRecorder
    from drivecap.outputs.tts import backend_for_job
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.inference import CaptionEvent, load_models
    from drivecap.pipeline.runner import Pipeline, safe_name, sigint_stops
    from drivecap.pipeline.sources import open_source, parse_source
    from drivecap.security import write_output_text

    if args.speech:
        cfg.speech.backend = args.speech
    cfg.speech.backend, speech_warning = backend_for_job(cfg.speech.backend, "run")
    if speech_warning:
        log.warning(speech_warning)
    if cfg.speech.backend == "wav" and args.out is None:
        raise ConfigError(
            "speech.backend=wav writes one WAV file per utterance: give --out DIR (or --speech none)"
        )
    for opt, val in (("--max-frames", args.max_frames), ("--max-seconds", args.max_seconds)):
        if val is not None and val <= 0:  # would end at once with empty outputs
            raise ConfigError(f"{opt} {val} is not allowed: use a positive number")
    if args.loop:
        cfg.capture.loop = True
    if not args.serve:
        from drivecap.outputs.window import display_available

        can_show, why = (False, "--no-window") if args.no_window else display_available()
        if not can_show:  # said once, before the model loads: the only hint a headless user gets
            print(f"no window here ({why}): add --serve 8080 and open http://127.0.0.1:8080/ to watch")
    spec = parse_source(resolve_input(args.source, cfg))
    name = safe_name(spec.name, "live")
    source = open_source(spec, cfg.capture)
    enc, captioner = load_models(cfg)

    def say(c: CaptionEvent) -> None:
        print(f"[{c.t:8.2f} s] {'URGENT ' if c.urgent else ''}{c.text}", flush=True)

    mode = "live" if spec.live else "realtime"
    metrics = LatencyRecorder()
    with enc, live_server(args, metrics) as feed:
        pipe = Pipeline(
            cfg,
            enc,
            captioner,
            Outputs(args.out, name, window=not args.no_window),
            mode=mode,
            max_frames=args.max_frames,
            max_seconds=args.max_seconds,
            on_caption=say,
            metrics=metrics,
            live=feed,
        )
        with sigint_stops(pipe):
            summary = pipe.run(source)
    if args.out is not None:
        write_output_text(
            args.out / f"{name}.summary.json", json.dumps(summary.as_dict(), indent=1, default=str) + "\n"
        )
    print_summary(summary, args.out)
    return 130 if summary.interrupted else 0
