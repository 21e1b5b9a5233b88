"""fp32 vs INT8 encoder timing and feature agreement on real frames, measured in one process."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivecap.assets import CLIPS, AssetStore, drivecap_home
from drivecap.config import Config
from drivecap.encoders.base import cosine, global_pool, pool_grid
from drivecap.encoders.factory import make_encoder
from drivecap.errors import DrivecapError


def sample_clip(path: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DrivecapError(f"{path} cannot be opened as a video")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        want = set(np.linspace(0, max(total - 1, 0), n).round().astype(int).tolist())
        frames: list[np.ndarray] = []
        i = 0
        while len(frames) < len(want):
            ok, img = cap.read()
            if not ok:
                break
            if i in want:
                frames.append(img)
            i += 1
    finally:
        cap.release()
    if not frames:
        raise DrivecapError(f"{path} has no readable frames")
    return frames


def bench_precisions(cfg: Config, clip: str, n_frames: int = 24, runs: int = 24) -> dict[str, Any]:
    """Times both precisions, interleaved run by run so machine noise hits both alike."""
    if runs < 20:
        raise DrivecapError(f"--runs {runs} is too few for a stable median; use at least 20")
    path = AssetStore(drivecap_home(cfg.paths.home)).clip(clip) if clip in CLIPS else Path(clip)
    frames = sample_clip(path, n_frames)
    encs = {p: make_encoder(cfg, backend="onnxruntime", precision=p) for p in ("fp32", "int8")}
    times: dict[str, list[float]] = {p: [] for p in encs}
    feats: dict[str, list[np.ndarray]] = {p: [] for p in encs}
    for i in range(max(runs, len(frames))):
        x = encs["fp32"].preprocess(frames[i % len(frames)])
        for p, enc in encs.items():
            t0 = time.perf_counter()
            y = enc.infer(x)
            dt = (time.perf_counter() - t0) * 1e3
            if i < runs:
                times[p].append(dt)
            if i < len(frames):
                feats[p].append(y[0])
    cos = [cosine(global_pool(a), global_pool(b)) for a, b in zip(feats["fp32"], feats["int8"], strict=True)]
    cos_grid = [cosine(pool_grid(a), pool_grid(b)) for a, b in zip(feats["fp32"], feats["int8"], strict=True)]
    med = {p: statistics.median(t) for p, t in times.items()}
    out: dict[str, Any] = {
        p: {
            "median_ms": round(med[p], 2),
            "p90_ms": round(float(np.percentile(times[p], 90)), 2),
            "runs": len(times[p]),
            "model": Path(str(getattr(encs[p], "path", ""))).name,
        }
        for p in encs
    }
    out.update(
        {
            "speedup": round(med["fp32"] / med["int8"], 3),
            "cosine_mean": round(float(np.mean(cos)), 5),
            "cosine_min": round(float(np.min(cos)), 5),
            "cosine_grid1x3_mean": round(float(np.mean(cos_grid)), 5),
            "frames": len(frames),
            "clip": clip,
            "input": [cfg.encoder.input_height, cfg.encoder.input_width],
            "threads": cfg.encoder.threads,
            "warmup_runs": cfg.encoder.warmup_runs,
        }
    )
    for enc in encs.values():
        enc.close()
    return out


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"encoder bench on {r['frames']} frames of {r['clip']}, input {r['input'][0]}x{r['input'][1]}, "
        f"{r['fp32']['runs']} runs each after {r['warmup_runs']} warm-up",
        f"{'precision':10s} {'median ms':>10s} {'p90 ms':>8s}",
        f"{'fp32':10s} {r['fp32']['median_ms']:10.1f} {r['fp32']['p90_ms']:8.1f}",
        f"{'int8':10s} {r['int8']['median_ms']:10.1f} {r['int8']['p90_ms']:8.1f}",
        f"speed-up fp32/int8: {r['speedup']:.2f}x",
        f"pooled-feature cosine int8 vs fp32: mean {r['cosine_mean']:.4f}, min {r['cosine_min']:.4f}",
    ]
    return "\n".join(lines)
