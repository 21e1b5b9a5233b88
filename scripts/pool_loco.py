"""How the conv5 map is pooled into the decoder's cells, measured under leave-one-clip-out, training clips only.

    drivecap --set encoder.threads=2 train --extract-only          # the conv5 feature cache (every 4th frame)
    python scripts/pool_loco.py --pools avg max gem3 avgmax --seeds 3 --json out.json

The 2x3 cells of the shipped decoder are averages of the (512, 7, 7) conv5 map: a far car covers one or two of
the 8-12 positions a cell averages, so its activations are diluted by the road and the sky around it. Max
pooling (the MAC / R-MAC descriptors of image retrieval) keeps the strongest response of every channel in a
cell whatever its size; generalised mean pooling (GeM, p = 3) sits between the two; ``avgmax`` gives the
decoder both (1024 channels). For each pooling and each fold (one training clip left out) the merge decoder on
2x3 cells is trained on the other clips (``--seeds`` members, the 12-epoch cosine schedule) and the left-out
clip captioned by the runtime numpy decoder with the mirror view after each checked epoch; the epoch count is
chosen by the mean of the five folds. Nothing here reads a held-out frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from drivecap.config import load_config
from drivecap.decoder.bundle import POOL_MODES
from drivecap.training.data import load_split

log = logging.getLogger("pool_loco")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--pools", nargs="+", choices=POOL_MODES, default=list(POOL_MODES))
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--cols", type=int, default=3)
    p.add_argument("--seeds", type=int, default=1, help="decoders per fold (seeds 0..n-1, averaged)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--stride", type=int, default=4, help="every Nth training frame (cached by `drivecap train`)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from drivecap.training.crossval import best_epoch_summary, fold_by_epoch
    from drivecap.training.features import configured_features
    from drivecap.training.pipeline import CV_EPOCHS, caption_vocab, train_ranges, training_clips
    from drivecap.training.train import TrainSettings

    cfg = load_config(None, args.set)
    home, folder = configured_features(cfg)
    clips = training_clips()
    vocab = caption_vocab()
    s = TrainSettings(
        kind="merge", rows=args.rows, cols=args.cols, max_epochs=max(CV_EPOCHS), threads=args.threads
    )
    report: dict[str, Any] = {"settings": asdict(s), "stride": args.stride, "seeds": args.seeds, "runs": {}}
    for pool in args.pools:
        # Every pooling reads the same cached maps and label records.
        data = load_split(
            home, folder, clips, args.rows, args.cols, train_ranges(), stride=args.stride, pool=pool
        )
        data = data.select([not x.augmented for x in data.samples])
        t0 = time.perf_counter()
        folds: dict[str, dict[int, dict[str, float]]] = {}
        for clip in sorted({x.clip for x in data.samples}):
            keep = [x.clip != clip for x in data.samples]
            train, val = data.select(keep), data.select([not k for k in keep])
            folds[clip] = fold_by_epoch(train, val, vocab, s, args.seeds, CV_EPOCHS)
            log.info(
                "%s fold %s: %s", pool, clip, {e: round(r["val_fact_f1"], 3) for e, r in folds[clip].items()}
            )
        report["runs"][pool] = {
            "channels": int(data.cells.shape[-1]),
            "samples": len(data),
            "folds": folds,
            **best_epoch_summary(folds, CV_EPOCHS),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("%s: %s", pool, {k: v for k, v in report["runs"][pool].items() if k.startswith("best")})
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
