"""``drivecap replay FILE --out DIR``: caption a recorded drive into video, subtitles and an event log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from drivecap.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="caption a video file (or a clip name like project_video01): mp4 + srt + vtt + jsonl",
        description="Replays FILE through the pipeline and writes DIR/<name>.mp4, .srt, .vtt, .jsonl and "
        ".summary.json (+ <name>.speechNNNN.wav with --speech wav). offline mode is deterministic.",
    )
    p.add_argument(
        "file", metavar="FILE", help="video file, image folder, or a fetched clip name (project_video01)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("out"), metavar="DIR", help="output folder (default: out)"
    )
    p.add_argument("--mode", choices=("offline", "realtime"), help="default: replay.mode from the config")
    p.add_argument(
        "--stride", type=int, metavar="N", help="offline: encode every Nth frame (default: replay.stride)"
    )
    p.add_argument(
        "--speech",
        choices=("auto", "pyttsx3", "espeak", "wav", "none"),
        help="default: speech.backend (auto: silent)",
    )
    p.add_argument("--loop", action="store_true", help="start the file again at its end (stop with Ctrl-C)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N output frames")
    p.add_argument("--show", action="store_true", help="also show a window (where a display exists)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def resolve_input(spec: str, cfg: Config) -> str:
    """A path as given, or the fetched clip of that name."""
    from drivecap.assets import CLIPS, AssetStore, drivecap_home

    if not Path(spec).expanduser().exists() and spec in CLIPS:
        return str(AssetStore(drivecap_home(cfg.paths.home)).clip(spec))
    return spec


def print_summary(summary: Any, out_dir: Path | None) -> None:
    for line in summary.lines():
        print(line)
    if out_dir is not None and summary.outputs:
        print("outputs: " + ", ".join(summary.outputs.values()))


def run(args: argparse.Namespace, cfg: Config) -> int:
    from tqdm import tqdm

    from drivecap.errors import ConfigError
    from drivecap.outputs.tts import backend_for_job
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.inference import load_models
    from drivecap.pipeline.runner import Pipeline, safe_name, sigint_stops
    from drivecap.pipeline.sources import CaptureError, open_source, parse_source
    from drivecap.security import write_output_text

    mode = args.mode or cfg.replay.mode
    if args.max_frames is not None and args.max_frames < 1:  # would end at once with empty outputs
        raise ConfigError(f"--max-frames {args.max_frames} is not allowed: use 1 or more")
    if args.stride is not None:
        if args.stride < 1:
            raise ConfigError(f"--stride {args.stride} is not allowed: use 1 or more")
        cfg.replay.stride = args.stride
    if args.speech:
        cfg.speech.backend = args.speech
    cfg.speech.backend, _ = backend_for_job(cfg.speech.backend, "replay")  # auto: silent for replay
    if args.loop:
        cfg.capture.loop = True
    spec = parse_source(resolve_input(args.file, cfg))
    if spec.live:
        raise CaptureError(
            f"{args.file!r} is a live source; replay reads files and folders: use `drivecap run --source`"
        )
    name = safe_name(spec.name, "replay")
    out_dir: Path = args.out
    source = open_source(spec, cfg.capture)
    enc, captioner = load_models(cfg)
    with enc:
        total = None
        try:
            source.open()
            total = source.frame_count
        finally:
            source.close()
        bar = tqdm(
            total=None if cfg.capture.loop else total,
            unit="frame",
            desc=f"replay {name} ({mode})",
            disable=args.no_progress or None,
            dynamic_ncols=True,
        )
        pipe = Pipeline(
            cfg,
            enc,
            captioner,
            Outputs(out_dir, name, window=args.show),
            mode=mode,
            max_frames=args.max_frames,
            on_frame=lambda n: bar.update(n),
        )
        try:
            with sigint_stops(pipe):
                summary = pipe.run(source)
        finally:
            bar.close()
    write_output_text(
        out_dir / f"{name}.summary.json", json.dumps(summary.as_dict(), indent=1, default=str) + "\n"
    )
    print_summary(summary, out_dir)
    return 130 if summary.interrupted else 0
