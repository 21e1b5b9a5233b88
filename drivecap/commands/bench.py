"""``drivecap bench SOURCE``: latency of the real pipeline per stage and end to end, and comparisons."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivecap.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure the pipeline: per-stage and glass-to-caption latency, fps, drops, CPU, memory",
        description="Runs the real pipeline on SOURCE (a clip name like project_video01, a video file, or a "
        "live URL/camera for --seconds) and reports p50/p95/p99/max per stage and end to end. "
        "--compare runs two configurations in the same process, alternating, and reports ratios a/b.",
    )
    p.add_argument(
        "source", metavar="SOURCE", help="clip name, video file, image folder, camera index or URL"
    )
    p.add_argument(
        "--compare",
        choices=("loop", "precision", "gate", "hold", "backend", "writer"),
        help="loop: pipeline vs the naive one-thread loop; precision: int8 vs fp32; gate: on vs off; "
        "hold: fact hold on vs off (subtitle cues under 2 s); "
        "backend: tensorrt vs onnxruntime (GPU machines only); writer: mp4v vs H.264 presets (realtime "
        "replay: write ms, fps_out, MB/min, PSNR)",
    )
    p.add_argument(
        "--mode",
        choices=("realtime", "offline"),
        default="realtime",
        help="files: realtime (paced like a camera, default) or offline (every frame, as fast as possible)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, metavar="N", help="runs per side, order alternating (default 1)"
    )
    p.add_argument("--loops", type=int, default=1, metavar="N", help="files: play the clip N times per run")
    p.add_argument(
        "--seconds", type=float, metavar="S", help="stop each run after S s (live sources: default 10)"
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        metavar="S",
        help="leave out the first S s of each run (default 1)",
    )
    p.add_argument(
        "--speech",
        choices=("auto", "pyttsx3", "espeak", "wav", "none"),
        help="default: speech.backend (auto: silent)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--report", type=Path, metavar="DIR", help="write README.md, bench.json and PNG plots here"
    )
    p.add_argument("--keep", type=Path, metavar="DIR", help="keep each run's video/subtitles/event log here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--web",
        action="store_true",
        help="measure the live web view instead: glass-to-browser latency in headless Chromium (WebSocket vs "
        "MJPEG) and fps_out with 8 + 1 stalled + 100 churning clients (--seconds per scenario, default 12; "
        "--report DIR writes web.json + README.md)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.bench.compare import close_sides, make_sides
    from drivecap.bench.figures import BenchPlan, table, to_json
    from drivecap.bench.runner import run_bench
    from drivecap.commands.replay import resolve_input
    from drivecap.errors import ConfigError
    from drivecap.outputs.tts import backend_for_job
    from drivecap.pipeline.sources import open_source, parse_source

    for flag, value, low in (("--rounds", args.rounds, 1), ("--loops", args.loops, 1)):
        if value < low:
            raise ConfigError(f"{flag} {value} is not allowed: use {low} or more")
    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError(f"--seconds {args.seconds} is not allowed: use a positive number of seconds")
    if args.warmup < 0:
        raise ConfigError(f"--warmup {args.warmup} is not allowed: use 0 or more seconds")
    if args.speech:
        cfg.speech.backend = args.speech
    cfg.speech.backend, _ = backend_for_job(cfg.speech.backend, "bench")  # auto: silent for bench
    cfg.output.window = False
    # Gate reasons and speech start per caption are read back from the event log.
    cfg.output.events = True
    path = resolve_input(args.source, cfg)
    if args.web:
        from drivecap.web.latency import markdown, run_web_bench

        command = "drivecap " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        body = run_web_bench(
            cfg, path, args.seconds or 12.0, args.report, rounds=args.rounds, command=command
        )
        print(markdown(body))
        return 0
    if args.compare == "writer":
        from drivecap.bench.writer import run_writer_command

        return run_writer_command(args, cfg, path)
    spec = parse_source(path)
    seconds = args.seconds if args.seconds is not None else (10.0 if spec.live else None)
    if args.report is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--report needs matplotlib: pip install 'drivecap[bench]'")
    mode = "live" if spec.live else args.mode
    sides = make_sides(cfg, args.compare)
    try:
        plan = BenchPlan(
            source=args.source,
            path=path,
            mode=mode,
            live=spec.live,
            sides=sides,
            rounds=args.rounds,
            loops=args.loops,
            seconds=seconds,
            warmup_s=args.warmup,
            compare=args.compare,
        )

        total = None if spec.live else _frame_count(spec, cfg, args.loops)
        bars: list[Any] = []

        def start_round(label: str, i: int) -> Callable[[int], object]:
            from tqdm import tqdm

            for bar in bars:
                bar.close()
            bars.clear()
            # mininterval keeps the bar's own redraws out of the figures being taken.
            bar = tqdm(
                total=total,
                unit="frame",
                desc=f"{label} (round {i + 1}/{args.rounds})",
                disable=args.no_progress or None,
                dynamic_ncols=True,
                mininterval=1.0,
            )
            bars.append(bar)
            return bar.update

        try:
            result = run_bench(
                plan, lambda: open_source(spec, cfg.capture), work_dir=args.keep, on_round=start_round
            )
        finally:
            for bar in bars:
                bar.close()
    finally:
        close_sides(sides)
    if args.json:
        print(to_json(result.figures))
    else:
        print("\n".join(table(result.figures)))
    if args.report is not None:
        from drivecap.bench.report import write_report

        command = (
            "drivecap " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "drivecap bench"
        )
        md = write_report(result, args.report, command)
        print(f"report: {md}", file=sys.stderr)
    return 0


def _frame_count(spec: Any, cfg: Config, loops: int) -> int | None:
    """Frames one run will read from a file (for the progress bar), or None when the file does not say."""
    from drivecap.pipeline.sources import open_source

    src = open_source(spec, cfg.capture)
    try:
        src.open()
        n = src.frame_count
    finally:
        src.close()
    return n * loops if n else None
