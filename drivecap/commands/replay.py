"""``drivecap replay FILE --out DIR``: caption a recorded drive into video, subtitles and an event log."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.web.options import add_serve_args, live_server


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
    add_serve_args(p)
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
    from drivecap.metrics import LatencyRecorder
    from drivecap.pipeline.inference import load_models
    from drivecap.pipeline.replay import replay_config, replay_file
    from drivecap.pipeline.runner import safe_name
    from drivecap.pipeline.sources import CaptureError, parse_source

    mode = args.mode or cfg.replay.mode
    if args.serve and mode != "realtime":
        raise ConfigError(f"--serve shows a run as it happens: add --mode realtime (replay.mode is {mode})")
    if args.max_frames is not None and args.max_frames < 1:  # would end at once with empty outputs
        raise ConfigError(f"--max-frames {args.max_frames} is not allowed: use 1 or more")
    if args.stride is not None:
        if args.stride < 1:
            raise ConfigError(f"--stride {args.stride} is not allowed: use 1 or more")
        cfg.replay.stride = args.stride
    if args.speech:
        cfg.speech.backend = args.speech
    replay_config(cfg)  # auto: silent for replay
    if args.loop:
        cfg.capture.loop = True
    spec = parse_source(resolve_input(args.file, cfg))
    if spec.live:
        raise CaptureError(
            f"{args.file!r} is a live source; replay reads files and folders: use `drivecap run --source`"
        )
    name = safe_name(spec.name, "replay")
    out_dir: Path = args.out
    enc, captioner = load_models(cfg)
    metrics = LatencyRecorder()
    with enc, live_server(args, metrics) as feed:
        bar = tqdm(
            unit="frame",
            desc=f"replay {name} ({mode})",
            disable=args.no_progress or None,
            dynamic_ncols=True,
        )

        def set_total(total: int | None) -> None:
            bar.total = total
            bar.refresh()

        try:
            # The fleet's workers call the same function: one drive's outputs are the same either way.
            summary = replay_file(
                cfg,
                enc,
                captioner,
                spec,
                out_dir,
                name,
                mode=mode,
                max_frames=args.max_frames,
                window=args.show,
                on_total=set_total,
                on_frame=lambda n: bar.update(n),
                metrics=metrics,
                live=feed,
            )
        finally:
            bar.close()
    print_summary(summary, out_dir)
    return 130 if summary.interrupted else 0
