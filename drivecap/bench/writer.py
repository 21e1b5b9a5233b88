"""``drivecap bench --compare writer``: the mp4v and H.264 writers on the same realtime replay.

Each variant replays the same file in ``realtime`` mode with the encoder running (as a drive would be
recorded), and its video writes are timed and tapped: every ``tap_every``-th written frame is kept so the
file can be decoded afterwards and compared against exactly what was handed to the writer (the overlaid
frame; a frame repeated to fill a live gap counts once per copy written). Variants alternate over rounds (A B C, C B A, ...) so a drift in machine load hits them alike.

Figures per variant: write ms per frame p50/p95 (the video writer alone), fps_out (output frames per second
of source time), frames dropped, encoder ms p50 (the encoder did run), MB per minute of drive, PSNR of the
written frames against the overlaid source frames (mean, min), and the machine's load.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.config import Config
from drivecap.metrics import percentile

log = logging.getLogger(__name__)


@dataclass
class WriterVariant:
    label: str
    codec: str
    preset: str = ""
    crf: int = 0


@dataclass
class WriterRun:
    label: str
    write_ms: list[float] = field(default_factory=list)
    taps: dict[int, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    bytes: int = 0
    psnr: list[float] = field(default_factory=list)
    loadavg: float = 0.0


def default_variants(cfg: Config) -> list[WriterVariant]:
    """mp4v, the configured H.264 setting, and the neighbouring presets at the same CRF (to choose by)."""
    v = cfg.video
    out = [WriterVariant("mp4v (OpenCV)", "mp4v")]
    for preset in dict.fromkeys([v.preset, "ultrafast", "superfast", "veryfast"]):
        out.append(WriterVariant(f"h264 {preset} crf {v.crf}", "h264", preset, v.crf))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    import cv2

    return float(cv2.PSNR(a, b))


def _decode_all(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def run_variant(
    cfg: Config,
    models: tuple[Any, Any],
    source_path: str,
    variant: WriterVariant,
    out_dir: Path,
    tap_every: int,
    mode: str = "realtime",
) -> WriterRun:
    from drivecap.pipeline.core import Outputs
    from drivecap.pipeline.runner import Pipeline
    from drivecap.pipeline.sources import open_source, parse_source

    c = copy.deepcopy(cfg)
    c.video.codec = variant.codec
    if variant.codec == "h264":
        c.video.preset, c.video.crf = variant.preset, variant.crf
    c.output.window = False
    c.speech.backend = "none"
    run = WriterRun(variant.label)

    class Tapped(Pipeline):
        def _open_sinks(self, stack: Any, fps: float) -> dict[str, Any]:
            sinks = super()._open_sinks(stack, fps)
            video = sinks["video"]
            inner: Callable[[Any, float], int] = video.write_at
            plain: Callable[[Any], None] = video.write

            def write(frame: Any) -> None:  # offline: every frame once
                t0 = time.perf_counter()
                if video.frames % tap_every == 0:
                    run.taps[video.frames] = frame.copy()
                plain(frame)
                run.write_ms.append((time.perf_counter() - t0) * 1e3)

            def write_at(frame: Any, t: float) -> int:
                first = video.frames
                t0 = time.perf_counter()
                n = inner(frame, t)
                ms = (time.perf_counter() - t0) * 1e3
                run.write_ms.extend([ms / n] * n if n else [])  # per written frame (repeats included)
                for k in range(first, first + n):
                    if k % tap_every == 0:
                        run.taps[k] = frame.copy()
                return n

            video.write_at = write_at
            video.write = write
            return sinks

    enc, cap = models
    pipe = Tapped(c, enc, cap, Outputs(out_dir, "drive", window=False), mode=mode)
    source = open_source(parse_source(source_path), c.capture)
    summary = pipe.run(source)
    run.loadavg = os.getloadavg()[0]
    run.summary = {
        "source_fps": summary.source_fps,
        "output_fps": summary.output_fps,
        "frames_out": summary.frames_out,
        "dropped": summary.dropped,
        "source_s": summary.source_s,
        "encode_p50_ms": summary.stage("encode"),
        "encoded": summary.encoded,
    }
    video = out_dir / "drive.mp4"
    run.bytes = video.stat().st_size
    decoded = _decode_all(video)
    run.psnr = [_psnr(img, decoded[k]) for k, img in sorted(run.taps.items()) if k < len(decoded)]
    run.taps.clear()  # frames are large: keep only the figures
    return run


def figures(runs: dict[str, list[WriterRun]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, rs in runs.items():
        ms = [m for r in rs for m in r.write_ms]
        src_s = sum(r.summary["source_s"] for r in rs)
        out[label] = {
            "rounds": len(rs),
            "write_ms_p50": round(percentile(ms, 50), 2),
            "write_ms_p95": round(percentile(ms, 95), 2),
            "fps_out": round(float(np.median([r.summary["output_fps"] for r in rs])), 2),
            "source_fps": round(rs[0].summary["source_fps"], 3),
            "fps_out_ratio": round(
                float(np.median([r.summary["output_fps"] / r.summary["source_fps"] for r in rs])), 3
            ),
            "dropped": int(sum(r.summary["dropped"] for r in rs)),
            "encode_p50_ms": round(float(np.median([r.summary["encode_p50_ms"] for r in rs])), 1),
            "mb_per_min": round(sum(r.bytes for r in rs) / 1e6 / src_s * 60.0, 2),
            "psnr_mean_db": round(float(np.mean([p for r in rs for p in r.psnr])), 2),
            "psnr_min_db": round(float(np.min([p for r in rs for p in r.psnr])), 2),
            "loadavg_1min": round(float(np.median([r.loadavg for r in rs])), 2),
        }
    return out


def table(fig: dict[str, Any]) -> list[str]:
    head = (
        "| writer | write ms p50 | p95 | fps_out / source | dropped | encoder ms p50 | MB/min | "
        "PSNR mean dB | min dB | load |"
    )
    lines = [head, "|" + "---|" * 10]
    for label, f in fig.items():
        lines.append(
            f"| {label} | {f['write_ms_p50']:.1f} | {f['write_ms_p95']:.1f} | {f['fps_out']:.2f} / "
            f"{f['source_fps']:.2f} ({f['fps_out_ratio']:.3f}) | {f['dropped']} | {f['encode_p50_ms']:.0f} | "
            f"{f['mb_per_min']:.1f} | {f['psnr_mean_db']:.2f} | {f['psnr_min_db']:.2f} | {f['loadavg_1min']:.1f} |"
        )
    return lines


def run_writer_bench(
    cfg: Config,
    source_path: str,
    work_dir: Path,
    *,
    rounds: int = 1,
    variants: list[WriterVariant] | None = None,
    tap_every: int = 5,
    on_run: Callable[[str, int], None] | None = None,
    mode: str = "realtime",
) -> dict[str, Any]:
    """Runs every variant ``rounds`` times (order alternating); returns the figures per variant."""
    from drivecap.pipeline.inference import load_models

    vs = variants or default_variants(cfg)
    models = load_models(cfg)
    runs: dict[str, list[WriterRun]] = {v.label: [] for v in vs}
    try:
        for i in range(rounds):
            for v in vs if i % 2 == 0 else list(reversed(vs)):
                if on_run:
                    on_run(v.label, i)
                out = work_dir / f"{''.join(ch if ch.isalnum() else '_' for ch in v.label)}-r{i + 1}"
                out.mkdir(parents=True, exist_ok=True)
                runs[v.label].append(run_variant(cfg, models, source_path, v, out, tap_every, mode))
    finally:
        models[0].close()
    return figures(runs)


def to_json(fig: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    return json.dumps({"command": command, "machine": machine, "writers": fig}, indent=1) + "\n"


def run_writer_command(args: argparse.Namespace, cfg: Config, path: str) -> int:
    """``drivecap bench SOURCE --compare writer``: prints the table; ``--report DIR`` also keeps the JSON
    and a README.md with the command that made them."""
    from drivecap.bench.runner import machine_info

    command = "drivecap " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    machine = machine_info()

    def progress(label: str, i: int) -> None:
        if not args.no_progress:
            print(f"round {i + 1}/{args.rounds}: {label}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="drivecap-writer-") as tmp:
        work = args.keep or Path(tmp)
        fig = run_writer_bench(cfg, path, work, rounds=args.rounds, on_run=progress, mode=args.mode)
    machine["loadavg_end"] = list(os.getloadavg())
    lines = table(fig)
    print("\n".join(lines))
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "writer.json").write_text(to_json(fig, machine, command))
        md = [
            f"# Video writers on {args.source} ({args.mode} replay, encoder running)",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model')}), load average at start "
            f"{machine.get('loadavg')}, at end {machine.get('loadavg_end')}.",
            "",
            *lines,
            "",
            "write ms: the video writer alone, per written frame; fps_out: output frames per second of source "
            "time; PSNR: every 5th written frame decoded back against the overlaid frame handed to the writer.",
            "",
        ]
        (args.report / "README.md").write_text("\n".join(md))
        print(f"report: {args.report / 'README.md'}", file=sys.stderr)
    return 0
