"""Per-drive feature normalisation (AdaBN-style) measured under leave-one-clip-out, training clips only.

    drivecap --set encoder.threads=2 train --extract-only              # the conv5 feature cache (every 4th frame)
    python scripts/drive_norm_loco.py --modes off center standardise concat --json out.json

For each mode (`drivecap.training.drive_norm`; ``off`` is the control: the same loop without it) and each fold
(one training clip left out), the running per-drive statistics are computed causally over each clip's frames
(every 4th, in order, at the clip's frame rate), shrunk towards the statistics of the fold's *training* clips
only, and applied to every view (mirrored views against the column-reversed statistics). The merge2x3 decoder
is trained on the other clips (one seed, the 12-epoch cosine schedule) and the left-out clip captioned by the
runtime numpy decoder with the mirror view after each checked epoch. Nothing here reads a held-out frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivecap.assets import AssetStore, drivecap_home, sha256_file
from drivecap.config import load_config
from drivecap.encoders.paths import encoder_onnx_path
from drivecap.training.data import Split, load_split
from drivecap.training.drive_norm import DriveNorm, DriveNormSettings, normalise

log = logging.getLogger("drive_norm_loco")


def clip_fps(store: AssetStore, clip: str) -> float:
    cap = cv2.VideoCapture(str(store.clip(clip)))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
    finally:
        cap.release()


def normalised(data: Split, s: DriveNormSettings, prior_from: list[bool], fps: dict[str, float]) -> Split:
    """``data`` with every view's cells read against its clip's running statistics (causal, frame order)."""
    plain = np.array([not x.mirrored and not x.augmented for x in data.samples])
    base = data.cells[plain & np.asarray(prior_from)]
    mean, var = base.mean(axis=0), base.var(axis=0)
    rows, cols = 2, 3
    at: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for clip in sorted({x.clip for x in data.samples}):
        idx = sorted((x.frame, i) for i, x in enumerate(data.samples) if x.clip == clip and plain[i])
        norm = DriveNorm(s, mean, var, rows, cols)
        for fr, i in idx:
            norm.update(data.cells[i], fr / fps[clip])
            at[(clip, fr)] = norm.stats()
    out = np.empty(
        (len(data), data.cells.shape[1], data.cells.shape[2] * (2 if s.mode == "concat" else 1)), np.float32
    )
    for i, x in enumerate(data.samples):
        m, sd = at[(x.clip, x.frame)]
        out[i] = normalise(data.cells[i], m, sd, s.mode, rows, cols, x.mirrored)
    return Split(data.samples, out, data.meta)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--modes", nargs="+", default=["off", "center", "standardise", "concat"])
    p.add_argument("--tau", type=float, nargs="+", default=[30.0], help="time constants (s) to try")
    p.add_argument("--prior", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--stride", type=int, default=4, help="every Nth training frame (cached by `drivecap train`)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from drivecap.training.crossval import best_epoch_summary, decode_members, fold_scores, keep_snapshot
    from drivecap.training.features import features_dir
    from drivecap.training.pipeline import CV_EPOCHS, caption_vocab, train_ranges, training_clips
    from drivecap.training.train import TrainSettings, train_fixed

    cfg = load_config(None, args.set)
    home = drivecap_home(cfg.paths.home)
    store = AssetStore(home)
    sha = sha256_file(encoder_onnx_path(cfg))
    folder = features_dir(home, sha, cfg.encoder.input_height, cfg.encoder.input_width)
    clips = training_clips()
    data = load_split(home, folder, clips, 2, 3, train_ranges(), stride=args.stride)
    data = data.select([not x.augmented for x in data.samples])
    fps = {c: clip_fps(store, c) for c in clips}
    vocab = caption_vocab()
    s = TrainSettings(kind="merge", rows=2, cols=3, max_epochs=max(CV_EPOCHS), threads=args.threads)
    report: dict[str, Any] = {
        "settings": asdict(s),
        "stride": args.stride,
        "fps": fps,
        "samples": len(data),
        "runs": {},
    }
    runs = [(m, t) for m in args.modes for t in (args.tau if m != "off" else [0.0])]
    for mode, tau in runs:
        name = mode if mode == "off" else f"{mode}-tau{tau:g}"
        ns = DriveNormSettings(mode, tau_s=tau or 30.0, prior_s=args.prior)
        t0 = time.perf_counter()
        folds: dict[str, dict[int, dict[str, float]]] = {}
        for clip in sorted({x.clip for x in data.samples}):
            keep = [x.clip != clip for x in data.samples]
            d = data if mode == "off" else normalised(data, ns, keep, fps)
            train, val = d.select(keep), d.select([not k for k in keep])
            snaps: dict[int, list[dict[str, np.ndarray]]] = {e: [] for e in CV_EPOCHS}
            train_fixed(train, vocab, replace(s, seed=0), max(CV_EPOCHS), partial(keep_snapshot, snaps))
            folds[clip] = {
                e: fold_scores(decode_members(snaps[e][:1], s, vocab, val), val) for e in CV_EPOCHS
            }
            log.info(
                "%s fold %s: %s", name, clip, {e: round(r["val_fact_f1"], 3) for e, r in folds[clip].items()}
            )
        report["runs"][name] = {
            "drive_norm": asdict(ns),
            "folds": folds,
            **best_epoch_summary(folds, CV_EPOCHS),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("%s: %s", name, {k: v for k, v in report["runs"][name].items() if k.startswith("best")})
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
