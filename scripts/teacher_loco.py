"""Which teacher's labels make the better decoder, judged by the hand captions (issue 11, items 2-3).

    drivecap label --teacher first                           # labels A, in $DRIVECAP_HOME/labels
    DRIVECAP_HOME=OTHER drivecap label                       # labels B (the default teacher), another home
    python scripts/teacher_loco.py --labels first=HOME_A --labels default=HOME_B --json out.json

A decoder trained on one teacher's labels cannot be compared with one trained on another's by fact F1 against
those labels: each would be graded by its own teacher. The hand captions (`drivecap/training/hand_captions*.jsonl`,
56 frames from the training parts of the five training clips) are a reference neither teacher made. So, for each
label set, leave-one-clip-out exactly as `drivecap train` does it (merge decoder on 2x3 cells, the 12-epoch
cosine schedule, snapshots after the checked epochs, the runtime numpy decoder with the mirror view), and each
fold's decoder captions the hand frames of its left-out clip: never seen in that fold's training. Reported per
label set and epoch count: the fold fact F1 against its own teacher (as the model card reports it), and the
agreement of the captions with the hand captions (micro key F1 over all hand frames of all folds, and per
check / tuning file). The epoch count of each label set is chosen as `drivecap train` chooses it (best mean
fold fact F1 against its own teacher), then the label sets are compared by hand agreement at that count.

Every label set reads the same feature cache (the first home's, `--features-home`); copy-paste frames are left
out (their facts come from one teacher's labels). Nothing here reads a held-out frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.assets import sha256_file
from drivecap.captions.grammar import parse
from drivecap.config import load_config
from drivecap.encoders.paths import encoder_onnx_path
from drivecap.training.data import Split, load_split
from drivecap.training.handcheck import HAND_CAPTIONS, HAND_CAPTIONS_TUNING, agreement, load_hand

log = logging.getLogger("teacher_loco")


def hand_rows(test: Split, hand: dict[tuple[str, int], tuple[str, frozenset[str]]]) -> list[int]:
    """Rows of ``test`` (unmirrored views) that are hand-captioned frames."""
    return [
        i
        for i, x in enumerate(test.samples)
        if not x.mirrored and not x.augmented and (x.clip, x.frame) in hand
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--labels",
        action="append",
        required=True,
        metavar="NAME=HOME",
        help="a label set: the DRIVECAP_HOME whose labels/ it reads (repeat for each)",
    )
    p.add_argument(
        "--features-home", type=Path, help="home of the feature cache (default: the first --labels)"
    )
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument("--seeds", type=int, default=1, help="decoders per fold (seeds 0..N-1, averaged)")
    p.add_argument("--stride", type=int, default=1, help="every Nth training frame (hand frames always kept)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pool", default="avg", help="how each cell pools its part of the conv5 map")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    sets: list[tuple[str, Path]] = []
    for item in args.labels:
        name, sep, home_s = item.partition("=")
        if not sep or not name or not home_s:
            p.error(f"--labels wants NAME=HOME, got {item!r}")
        if not (Path(home_s) / "labels").is_dir():
            p.error(f"--labels {item}: {home_s}/labels is not a folder (run `drivecap label` there first)")
        sets.append((name, Path(home_s)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    from drivecap.training.crossval import decode_members, fold_scores, snapshots
    from drivecap.training.features import features_dir
    from drivecap.training.pipeline import CV_EPOCHS, caption_vocab, train_ranges, training_clips
    from drivecap.training.train import TrainSettings

    torch.set_num_threads(args.threads)
    cfg = load_config(None, args.set)
    fhome = args.features_home or sets[0][1]
    sha = sha256_file(encoder_onnx_path(cfg))
    folder = features_dir(fhome, sha, cfg.encoder.input_height, cfg.encoder.input_width)
    hand: dict[tuple[str, int], tuple[str, frozenset[str]]] = {}
    for path in (HAND_CAPTIONS, HAND_CAPTIONS_TUNING):
        for hf in load_hand(path):
            hand[(hf.clip, hf.frame)] = (path.stem, hf.facts.keys)
    vocab = caption_vocab()
    from drivecap.decoder.bundle import POOL_MODES

    if args.pool not in POOL_MODES:
        p.error(f"--pool {args.pool!r}: use one of {', '.join(POOL_MODES)}")
    s = TrainSettings(
        kind="merge", rows=2, cols=3, max_epochs=max(CV_EPOCHS), threads=args.threads, pool=args.pool
    )
    report: dict[str, Any] = {
        "settings": asdict(s),
        "seeds": args.seeds,
        "stride": args.stride,
        "hand_frames": len(hand),
        "sets": {},
    }
    for name, home in sets:
        t0 = time.perf_counter()
        data = load_split(home, folder, training_clips(), 2, 3, train_ranges(), stride=1, pool=args.pool)
        keep = [
            not x.augmented and (x.frame % args.stride == 0 or (x.clip, x.frame) in hand)
            for x in data.samples
        ]
        data = data.select(keep)
        clips = sorted({x.clip for x in data.samples})
        folds: dict[str, dict[int, dict[str, Any]]] = {}
        hand_pairs: dict[int, list[dict[str, Any]]] = {e: [] for e in CV_EPOCHS}
        for clip in clips:
            train = data.select([x.clip != clip for x in data.samples])
            test = data.select([x.clip == clip for x in data.samples])
            rows = hand_rows(test, hand)
            snaps = snapshots(train, vocab, s, args.seeds, CV_EPOCHS)
            folds[clip] = {}
            for e in CV_EPOCHS:
                preds = decode_members(snaps[e], s, vocab, test)
                folds[clip][e] = {"fact_f1": round(fold_scores(preds, test)["val_fact_f1"], 4)}
                for i in rows:
                    x = test.samples[i]
                    src, keys = hand[(x.clip, x.frame)]
                    hand_pairs[e].append(
                        {
                            "clip": x.clip,
                            "frame": x.frame,
                            "file": src,
                            "model": sorted(parse(preds[i]).keys),
                            "teacher": sorted(parse(x.caption).keys),
                            "hand": sorted(keys),
                        }
                    )
            log.info("%s fold %s: %s", name, clip, {e: r["fact_f1"] for e, r in folds[clip].items()})
        mean = {e: float(np.mean([folds[c][e]["fact_f1"] for c in clips])) for e in CV_EPOCHS}
        best = max(CV_EPOCHS, key=lambda e: (mean[e], -e))
        dash = [c for c in clips if c != "street"]

        def agree(rows: list[dict[str, Any]], who: str) -> dict[str, Any]:
            return agreement([(frozenset(r[who]), frozenset(r["hand"])) for r in rows])

        per_epoch = {
            e: {
                "mean5": round(mean[e], 4),
                "hand_f1": agree(hand_pairs[e], "model")["keys"]["f1"],
            }
            for e in CV_EPOCHS
        }
        chosen = hand_pairs[best]
        report["sets"][name] = {
            "home": str(home),
            "samples": len(data),
            "folds": folds,
            "per_epoch": per_epoch,
            "best_epochs": best,
            "best_mean5": round(mean[best], 4),
            "best_mean_dashcam": round(float(np.mean([folds[c][best]["fact_f1"] for c in dash])), 4),
            "hand_model": agree(chosen, "model"),
            "hand_model_check": agree([r for r in chosen if r["file"] == HAND_CAPTIONS.stem], "model"),
            "hand_model_tuning": agree(
                [r for r in chosen if r["file"] == HAND_CAPTIONS_TUNING.stem], "model"
            ),
            "hand_teacher_labels": agree(chosen, "teacher"),
            "hand_model_per_clip": {
                c: agree([r for r in chosen if r["clip"] == c], "model")["keys"]["f1"] for c in clips
            },
            "hand_teacher_per_clip": {
                c: agree([r for r in chosen if r["clip"] == c], "teacher")["keys"]["f1"] for c in clips
            },
            "per_frame": chosen,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        r = report["sets"][name]
        log.info(
            "%s: %d epochs, mean5 %.3f, dashcam %.3f, hand key F1 model %s, its labels %s (%.0f s)",
            name,
            best,
            r["best_mean5"],
            r["best_mean_dashcam"],
            r["hand_model"]["keys"]["f1"],
            r["hand_teacher_labels"]["keys"]["f1"],
            r["seconds"],
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
