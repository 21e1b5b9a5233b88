"""``drivecap soak``: a live 30 fps camera through the full pipeline for a fixed time; prints the figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drivecap.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "soak",
        help="soak test: a 30 fps MJPEG camera on 127.0.0.1 through the full pipeline (memory, threads, drops)",
        description="Serves a real clip as a live HTTP MJPEG camera on 127.0.0.1 and runs the full pipeline "
        "on it (speech in wav mode) for --minutes. Reports resident memory after the warm-up and at the end "
        "(growth must stay under 5%), whether every worker thread stayed alive, the largest frame-slot "
        "depths and the frame accounting. Exit 0 when every check holds, 1 otherwise, 130 after Ctrl-C (the figures then cover the time run).",
    )
    p.add_argument("--minutes", type=float, default=10.0, metavar="M", help="how long (default 10)")
    p.add_argument(
        "--warmup-s",
        type=float,
        metavar="S",
        help="memory baseline after S seconds (default: 60, or 30%% of a run shorter than 200 s)",
    )
    p.add_argument("--clip", default="project_video02", help="clip name or video file the camera serves")
    p.add_argument("--fps", type=float, default=30.0, help="camera frame rate (default 30)")
    p.add_argument("--width", type=int, default=640, help="camera frame width in pixels (default 640)")
    p.add_argument(
        "--out", type=Path, metavar="DIR", help="keep the outputs here (default: a temporary folder)"
    )
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="sampling interval (default 1 s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.bench.soak import run_soak
    from drivecap.commands.replay import resolve_input
    from drivecap.errors import ConfigError

    seconds = args.minutes * 60.0
    if not 0 < seconds <= 24 * 3600:
        raise ConfigError(f"--minutes {args.minutes} is not allowed: use more than 0 and at most 1440")
    if not 1.0 <= args.fps <= 120.0:
        raise ConfigError(f"--fps {args.fps} is not allowed: use 1 to 120")
    if not 64 <= args.width <= 3840:
        raise ConfigError(f"--width {args.width} is not allowed: use 64 to 3840")
    if not 0.05 <= args.interval <= seconds / 4:
        raise ConfigError(f"--interval {args.interval} is not allowed: use 0.05 s to a quarter of the soak")
    warmup = args.warmup_s if args.warmup_s is not None else (60.0 if seconds >= 200 else 0.3 * seconds)
    clip = resolve_input(args.clip, cfg)
    if not Path(clip).is_file():
        raise ConfigError(f"--clip {args.clip!r} is neither a video file nor a known clip name")
    report = run_soak(
        cfg,
        seconds=seconds,
        warmup_s=warmup,
        clip=clip,
        fps=args.fps,
        width=args.width,
        out_dir=args.out,
        interval_s=args.interval,
    )
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        for line in report.lines():
            print(line)
        print(f"outputs: {report.out_dir}")
    if report.interrupted:
        return 130
    return 0 if report.ok else 1
