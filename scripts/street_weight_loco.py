"""The street film's training part weighted in training, measured on training clips only (issue 11 item 2).

    drivecap --set encoder.threads=2 train --extract-only              # the conv5 feature cache (every 4th frame)
    python scripts/street_weight_loco.py --weights 1 2 4 8 --json out.json

The street film (frames 0-1439 are training footage) is the only footage with people and cyclists ahead, and it
is one clip of five: its facts are a small share of what the decoder is trained on. Here its views are repeated
``w`` times in each fold's training set (oversampling; ``w`` 1 is the control, the same loop without it) and
two things are scored after each checked epoch, with the runtime numpy decoder and the mirror view:

- the four dashcam folds of leave-one-clip-out (one dashcam clip left out; the street film's training part in
  the training set, weighted): does weighting the street film cost the highways anything?
- a street fold inside the street film's training part: trained on the four dashcam clips and street frames
  ``[0, --street-split)`` (weighted), tested on street frames ``[--street-split + --gap, 1440)``; the gap keeps
  near-identical neighbouring frames out of the test. Its fact F1 and its "ahead" F1 (every ``kind:ahead`` key:
  something in the ego lane) say whether the street film's facts are learnt from its own earlier frames.

One seed, the 12-epoch cosine schedule of `drivecap train`; copy-paste frames left out (as in the other fold
scripts). The epoch count of each weight is the one with the best mean over the five folds. Nothing here reads a
held-out frame.
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

import numpy as np

from drivecap.config import load_config
from drivecap.training.caption_metrics import PRF, caption_fact_scores
from drivecap.training.data import Split, load_split

log = logging.getLogger("street_weight_loco")
STREET = "street"


def ahead_f1(preds: list[str], split: Split) -> tuple[float | None, int]:
    """F1 of every ``kind:ahead`` fact summed (something in the ego lane), and its support."""
    per_fact = caption_fact_scores(preds, [x.caption for x in split.samples])["per_fact"]
    total = sum((v for k, v in per_fact.items() if k.endswith(":ahead")), PRF(0, 0, 0))
    return total.f1, total.tp + total.fn


def folds_of(data: Split, split_at: int, gap: int) -> dict[str, tuple[list[bool], list[bool]]]:
    """(train mask, test mask) per fold: each dashcam clip left out, and the late street frames."""
    out: dict[str, tuple[list[bool], list[bool]]] = {}
    for clip in sorted({x.clip for x in data.samples} - {STREET}):
        out[clip] = ([x.clip != clip for x in data.samples], [x.clip == clip for x in data.samples])
    out["street-late"] = (
        [x.clip != STREET or x.frame < split_at for x in data.samples],
        [x.clip == STREET and x.frame >= split_at + gap for x in data.samples],
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--weights", type=int, nargs="+", default=[1, 2, 4, 8], help="street repeat counts")
    p.add_argument("--street-split", type=int, default=960, help="first street frame of the street fold")
    p.add_argument("--gap", type=int, default=48, help="street frames left out between train and test")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--stride", type=int, default=4, help="every Nth training frame (cached by `drivecap train`)"
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if min(args.weights) < 1:
        p.error(f"--weights must be whole numbers >= 1, got {args.weights}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from drivecap.training.crossval import decode_members, fold_scores, keep_snapshot
    from drivecap.training.features import configured_features
    from drivecap.training.pipeline import CV_EPOCHS, caption_vocab, train_ranges, training_clips
    from drivecap.training.train import TrainSettings, train_fixed

    cfg = load_config(None, args.set)
    home, folder = configured_features(cfg)
    data = load_split(home, folder, training_clips(), 2, 3, train_ranges(), stride=args.stride)
    data = data.select([not x.augmented for x in data.samples])
    vocab = caption_vocab()
    s = TrainSettings(kind="merge", rows=2, cols=3, max_epochs=max(CV_EPOCHS), threads=args.threads)
    folds = folds_of(data, args.street_split, args.gap)
    report: dict[str, Any] = {
        "settings": asdict(s),
        "stride": args.stride,
        "street_split": args.street_split,
        "gap": args.gap,
        "samples": len(data),
        "test_views": {name: int(sum(te)) for name, (_, te) in folds.items()},
        "runs": {},
    }
    for w in args.weights:
        t0 = time.perf_counter()
        scores: dict[str, dict[int, dict[str, Any]]] = {}
        for name, (tr, te) in folds.items():
            train, test = data.select(tr), data.select(te)
            snaps: dict[int, list[dict[str, np.ndarray]]] = {e: [] for e in CV_EPOCHS}
            sw = replace(
                s, seed=0, street_repeat=w
            )  # train_fixed repeats the street views (Split.repeat_clip)
            train_fixed(train, vocab, sw, max(CV_EPOCHS), partial(keep_snapshot, snaps))
            scores[name] = {}
            for e in CV_EPOCHS:
                preds = decode_members(snaps[e][:1], s, vocab, test)
                f1a, support = ahead_f1(preds, test)
                scores[name][e] = {
                    "fact_f1": round(fold_scores(preds, test)["val_fact_f1"], 4),
                    "ahead_f1": None if f1a is None else round(f1a, 4),
                    "ahead_support": support,
                }
            log.info("w=%d fold %s: %s", w, name, {e: r["fact_f1"] for e, r in scores[name].items()})
        mean = {e: float(np.mean([scores[n][e]["fact_f1"] for n in scores])) for e in CV_EPOCHS}
        best = max(CV_EPOCHS, key=lambda e: (mean[e], -e))
        dash = [n for n in scores if n != "street-late"]
        report["runs"][str(w)] = {
            "folds": scores,
            "best_epochs": best,
            "best_folds": {n: scores[n][best]["fact_f1"] for n in scores},
            "best_mean5": round(mean[best], 4),
            "best_mean_dashcam": round(float(np.mean([scores[n][best]["fact_f1"] for n in dash])), 4),
            "best_street_late_ahead_f1": scores["street-late"][best]["ahead_f1"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        log.info("w=%d: %s", w, {k: v for k, v in report["runs"][str(w)].items() if k.startswith("best")})
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
