"""Partial fine-tuning of block5_conv3 (a low-rank delta) measured under leave-one-clip-out, training clips only.

    python scripts/block5_loco.py --set encoder.input_width=384 extract          # (x, z) maps of every 4th training frame
    python scripts/block5_loco.py --set encoder.input_width=384 loco --ranks 0 16 --json out.json

``extract`` caches block5_conv2's output and block5_conv3's pre-activation of every 4th training frame and of
its mirror (OpenVINO fp32, `drivecap.training.block5`). ``loco`` trains, for each rank (0 = the decoder alone on
the same maps: the control), the delta and the merge2x3 decoder jointly on four training clips and scores the
fifth with the runtime (numpy) decoder, mirror view on, after each checked epoch (`drivecap.training.block5_train`).
Nothing here reads a held-out frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from drivecap.assets import CLIPS, AssetStore, drivecap_home
from drivecap.config import load_config
from drivecap.encoders.export import preprocess_from_metadata
from drivecap.encoders.ort_backend import open_onnx_metadata
from drivecap.encoders.paths import encoder_onnx_path

log = logging.getLogger("block5_loco")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("--augment", type=int, default=0, help="also K image-space augmented views per frame")
    lo = sub.add_parser("loco")
    lo.add_argument("--ranks", type=int, nargs="+", default=[0, 16])
    lo.add_argument("--aux", type=float, default=0.0, help="auxiliary per-fact loss weight")
    lo.add_argument("--delta-lr", type=float, default=1e-3)
    lo.add_argument("--epochs", type=int, default=12)
    lo.add_argument("--street-weight", type=float, default=1.0, help="loss weight of the street film's views")
    lo.add_argument("--json", type=Path)
    lo.add_argument("--augment", type=int, default=0, help="train also on K augmented views per frame")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(None, args.set)
    home = drivecap_home(cfg.paths.home)
    from drivecap.assets import sha256_file
    from drivecap.training.block5 import block5_dir

    fp32 = encoder_onnx_path(cfg)
    sha = sha256_file(fp32)
    h, w = cfg.encoder.input_height, cfg.encoder.input_width
    folder = block5_dir(home, sha, h, w)
    if args.cmd == "extract":
        from tqdm import tqdm

        from drivecap.training.block5 import SplitEncoder, extract_block5
        from drivecap.training.features import training_frame_plan

        prep = preprocess_from_metadata(open_onnx_metadata(fp32), fp32, h, w)
        enc = SplitEncoder(fp32, prep, args.threads, folder)
        plan = training_frame_plan(4)
        meta = {"encoder_sha256": sha, "input": [h, w], "backend": "openvino/fp32", "stride": 4}
        t0 = time.perf_counter()
        out = {}
        with tqdm(total=sum(len(v) for v in plan.values()), unit="frame", desc="block5 maps") as bar:
            for clip in CLIPS:
                if not plan[clip]:
                    continue
                n, t = extract_block5(enc, AssetStore(home), folder, clip, plan[clip], meta, bar.update)
                out[clip] = {"encoded": n, "seconds": round(t, 1)}
        if args.augment:
            from drivecap.training.block5 import extract_block5_augmented, label_records

            with tqdm(
                total=args.augment * sum(len(v) for v in plan.values()), unit="view", desc="augmented"
            ) as bar:
                for clip in CLIPS:
                    if not plan[clip]:
                        continue
                    recs = label_records(home, clip)
                    for k in range(args.augment):
                        n, t = extract_block5_augmented(
                            enc, AssetStore(home), folder, clip, recs, plan[clip], k, meta, bar.update
                        )
                        out[f"{clip}.aug{k}"] = {"encoded": n, "seconds": round(t, 1)}
        print(
            json.dumps({"folder": str(folder), "clips": out, "seconds": round(time.perf_counter() - t0, 1)})
        )
        return 0
    from drivecap.training.block5 import Block5Maps, load_augmented_views
    from drivecap.training.block5_train import DeltaSettings, loco_delta
    from drivecap.training.pipeline import training_clips

    aug = None
    if args.augment:
        import numpy as np

        parts = [load_augmented_views(folder, home, training_clips(), k) for k in range(args.augment)]
        aug = (
            [s for p, _ in parts for s in p],
            Block5Maps(np.concatenate([m.x for _, m in parts]), np.concatenate([m.z for _, m in parts])),
        )

    res = loco_delta(
        home,
        cfg,
        folder,
        sha,
        args.ranks,
        DeltaSettings(delta_lr=args.delta_lr, aux_weight=args.aux, street_weight=args.street_weight),
        epochs=args.epochs,
        threads=args.threads,
        augmented=aug,
    )
    text = json.dumps(res, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(json.dumps({r: v["mean_by_epoch"] for r, v in res["ranks"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
