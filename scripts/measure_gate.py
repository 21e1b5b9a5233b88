"""Measures what the scene-change gate sees on the real *training* drives, to choose its thresholds.

Pixel pre-gate: the mean abs difference of 32x32 grey thumbnails between consecutive frames of every
frame of each training clip (driving), against the noise floor of a frame compared with itself after JPEG
re-compression and mild sensor noise (a camera that does not move).

Semantic gate: cosine distance of global-pooled conv5 features between frames at time lags 0.2-8 s (the
encoder runs on frames sampled every ``--every`` frames), then the gate is simulated on those features with
candidate thresholds to give captions per minute and why they opened.

Held-out clips (project_video01, challenge01, street from frame 1440) are never read.

    OMP_NUM_THREADS=1 nice python scripts/measure_gate.py --set encoder.precision=fp32 --out /tmp/gate.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

TRAIN = ("project_video02", "project_video03", "challenge02", "challenge03", "street")
LAGS_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)


def main(argv: list[str] | None = None) -> int:
    import cv2

    from drivecap.assets import CLIPS, AssetStore, drivecap_home
    from drivecap.config import load_config
    from drivecap.encoders.base import global_pool
    from drivecap.encoders.factory import make_encoder
    from drivecap.pipeline.gate import SemanticGate, grey_thumbnail, thumb_diff

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--every", type=int, default=5, help="encode every Nth frame")
    ap.add_argument("--max-encoded", type=int, default=120, help="per clip")
    ap.add_argument("--out", type=Path, default=Path("gate_measurements.json"))
    a = ap.parse_args(argv)
    cfg = load_config(None, a.overrides)
    store = AssetStore(drivecap_home(cfg.paths.home))
    enc = make_encoder(cfg)
    rng = np.random.default_rng(0)
    clips_report: dict[str, Any] = {}
    report: dict[str, Any] = {"clips": clips_report, "encoder": enc.describe(), "every": a.every}
    all_pix: list[float] = []
    all_noise: list[float] = []
    lag_d: dict[float, list[float]] = {lag: [] for lag in LAGS_S}
    feats_by_clip: dict[str, tuple[list[float], list[np.ndarray]]] = {}
    for name in TRAIN:
        clip = CLIPS[name]
        stop_at = clip.held_out_from if clip.held_out_from else None
        cap = cv2.VideoCapture(str(store.clip(name)))
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        prev = None
        i = 0
        ts: list[float] = []
        feats: list[np.ndarray] = []
        pix: list[float] = []
        while True:
            if stop_at is not None and i >= stop_at:
                break
            ok, raw = cap.read()
            if not ok:
                break
            img = np.asarray(raw, dtype=np.uint8)
            th = grey_thumbnail(img, cfg.gate.thumb_size)
            if prev is not None:
                pix.append(thumb_diff(th, prev))
            prev = th
            if i % 25 == 0:  # noise floor: the same picture through JPEG q70 + sigma-2 sensor noise
                noisy = np.clip(img.astype(np.float32) + rng.normal(0, 2.0, img.shape), 0, 255).astype(
                    np.uint8
                )
                _ok2, buf = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 70])
                again = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)
                all_noise.append(thumb_diff(grey_thumbnail(again, cfg.gate.thumb_size), th))
            if i % a.every == 0 and len(feats) < a.max_encoded:
                feats.append(global_pool(enc.encode(img).features))
                ts.append(i / fps)
            i += 1
        cap.release()
        all_pix.extend(pix)
        feats_by_clip[name] = (ts, feats)
        from drivecap.pipeline.gate import cosine_distance

        for lag in LAGS_S:
            step = max(1, round(lag * fps / a.every))
            lag_d[lag].extend(cosine_distance(feats[k], feats[k + step]) for k in range(len(feats) - step))
        clips_report[name] = {
            "frames": i,
            "encoded": len(feats),
            "pixel_lag1_p1": float(np.percentile(pix, 1)),
            "pixel_lag1_p50": float(np.percentile(pix, 50)),
        }
        print(f"{name}: {i} frames, {len(feats)} encoded", file=sys.stderr, flush=True)
    pct = (1, 5, 10, 25, 50, 75, 90, 95, 99)
    report["pixel_lag1"] = {f"p{q}": float(np.percentile(all_pix, q)) for q in pct}
    report["pixel_noise_floor"] = {f"p{q}": float(np.percentile(all_noise, q)) for q in pct}
    report["semantic_lag"] = {
        str(lag): {f"p{q}": float(np.percentile(v, q)) for q in pct} | {"n": len(v)}
        for lag, v in lag_d.items()
    }
    sims = {}
    for open_t, close_t in (
        (0.04, 0.02),
        (0.06, 0.03),
        (0.08, 0.05),
        (0.10, 0.05),
        (0.12, 0.06),
        (0.15, 0.08),
    ):
        cfg.gate.open_threshold, cfg.gate.close_threshold = open_t, close_t
        reasons: dict[str, int] = {}
        minutes = 0.0
        for ts, feats in feats_by_clip.values():
            g = SemanticGate(cfg.gate)
            for t, f in zip(ts, feats, strict=True):
                d = g.update(f, t)
                if d.open:
                    reasons[d.reason] = reasons.get(d.reason, 0) + 1
            minutes += (ts[-1] + a.every / 25.0) / 60.0
        sims[f"open={open_t},close={close_t}"] = {
            "captions_per_min": sum(reasons.values()) / minutes,
            "reasons": reasons,
        }
    report["gate_simulation"] = sims
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
