"""Chooses the INT8 calibration (range estimator) by caption agreement on *training* frames only.

    python scripts/choose_calibration.py --frames 150 --out benchmarks/backends/calibration_choice.json

For every candidate (minmax, entropy, percentile 99.999 / 99.99) the INT8 QDQ model is made from the same fp32
encoder and the same calibration set (``calibration.frames`` frames, ``calibration.seed``) in a scratch folder, and
run on ONNX Runtime and on OpenVINO. The check frames are other frames of the training clips (sampled with another
seed; calibration frames excluded), never a held-out one. Each frame is captioned by the shipped decoder (mirror
view as configured) from the fp32 maps and from each INT8 model's maps; the score of a candidate is the lower of
its two fp32-vs-INT8 caption agreements (ONNX Runtime, OpenVINO), ties broken by the mean pooled-feature cosine.
The held-out agreement of the chosen candidate is then measured once with ``drivecap encoder bench
--caption-frames 100``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.assets import AssetStore, drivecap_home
from drivecap.bench.backends import encoder_captions, label
from drivecap.config import Config, load_config
from drivecap.decoder.captioner import Captioner
from drivecap.encoders.base import cosine
from drivecap.encoders.calibrate import CalibFrame, calibrate, count_frames, read_frames, sample_frames
from drivecap.encoders.factory import make_encoder
from drivecap.encoders.paths import encoder_onnx_path

log = logging.getLogger("choose_calibration")

CANDIDATES: dict[str, list[str]] = {
    "minmax": ["calibration.method=minmax"],
    "entropy": ["calibration.method=entropy"],
    "percentile99.999": ["calibration.method=percentile", "calibration.percentile=99.999"],
    "percentile99.99": ["calibration.method=percentile", "calibration.percentile=99.99"],
    # Mixed precision: the last conv layer(s), where the decoder reads, left in fp32.
    "minmax+fp32conv5_3": ["calibration.method=minmax", "calibration.float_layers=[block5_conv3]"],
    "minmax+fp32block5": [
        "calibration.method=minmax",
        "calibration.float_layers=[block5_conv1,block5_conv2,block5_conv3]",
    ],
}
BACKENDS = ("onnxruntime", "openvino")


def check_frames(
    cfg: Config, store: AssetStore, n: int, clips: list[str] | None = None
) -> list[tuple[CalibFrame, np.ndarray]]:
    lengths = {c: count_frames(store.clip(c)) for c in clips or cfg.calibration.clips}
    every = {c: count_frames(store.clip(c)) for c in cfg.calibration.clips}
    calib = set(sample_frames(every, cfg.calibration.frames, cfg.calibration.seed))
    picked = [f for f in sample_frames(lengths, n + len(calib), cfg.calibration.seed + 1) if f not in calib]
    step = len(picked) / n
    chosen = sorted({picked[int(i * step)] for i in range(n)}, key=lambda f: (f.clip, f.frame))
    return list(read_frames(store, chosen))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=150, help="training check frames (not calibration frames)")
    ap.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    ap.add_argument(
        "--clips", nargs="+", help="training clips to take the check frames from (default: calibration.clips)"
    )
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/drivecap-calibration-choice"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="config override, as for drivecap --set")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base = load_config(None, args.set)
    store = AssetStore(drivecap_home(base.paths.home))
    frames = check_frames(base, store, args.frames, args.clips)
    log.info("%d check frames from %s", len(frames), sorted({f.clip for f, _ in frames}))
    images = [img for _, img in frames]
    fp32_onnx = encoder_onnx_path(base).resolve()
    captioner = Captioner.load(base)
    mirror = base.decoder.mirror_view and captioner.mirror_view

    ref: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    for backend in BACKENDS:
        enc = make_encoder(base, backend=backend, precision="fp32")
        try:
            ref[backend] = encoder_captions(enc, captioner, mirror, images)
        finally:
            enc.close()
    result: dict[str, Any] = {
        "check_frames": [[f.clip, f.frame] for f, _ in frames],
        "mirror_view": bool(mirror),
        "fp32_onnx_vs_openvino": round(
            float(np.mean([a == b for a, b in zip(ref["onnxruntime"][0], ref["openvino"][0], strict=True)])),
            4,
        ),
        "candidates": {},
    }
    for name in args.candidates:
        work = args.scratch / name
        work.mkdir(parents=True, exist_ok=True)
        link = work / fp32_onnx.name
        if not link.exists():
            os.symlink(fp32_onnx, link)
        cfg = load_config(
            None,
            [
                *args.set,
                *CANDIDATES[name],
                f"paths.engines_dir={work}",
                f"paths.calibration_dir={work / 'cal'}",
            ],
        )
        t0 = time.perf_counter()
        calibrate(cfg, force=False)
        calib_s = time.perf_counter() - t0
        row: dict[str, Any] = {"calibrate_s": round(calib_s, 1)}
        int8_texts = {}
        for backend in BACKENDS:
            enc = make_encoder(cfg, backend=backend, precision="int8")
            try:
                texts, pooled = encoder_captions(enc, captioner, mirror, images)
            finally:
                enc.close()
            int8_texts[backend] = texts
            rt, rp = ref[backend]
            row[label(backend, "fp32") + " vs int8"] = round(
                float(np.mean([a == b for a, b in zip(rt, texts, strict=True)])), 4
            )
            row[label(backend, "int8") + " cosine"] = round(
                statistics.fmean(cosine(a, b) for a, b in zip(rp, pooled, strict=True)), 5
            )
        row["onnxruntime vs openvino int8"] = round(
            float(np.mean([a == b for a, b in zip(*int8_texts.values(), strict=True)])), 4
        )
        row["score"] = min(row[label(b, "fp32") + " vs int8"] for b in BACKENDS)
        row["mean_cosine"] = round(statistics.fmean(row[label(b, "int8") + " cosine"] for b in BACKENDS), 5)
        result["candidates"][name] = row
        log.info("%s: %s", name, row)
    chosen = max(
        result["candidates"],
        key=lambda n: (result["candidates"][n]["score"], result["candidates"][n]["mean_cosine"]),
    )
    result["chosen"] = chosen
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    json.dump({k: v for k, v in result.items() if k != "check_frames"}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
