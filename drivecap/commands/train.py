"""``drivecap train``: feature cache, then the LSTM caption decoder (torch, CPU), exported as a model bundle."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from drivecap.config import Config
from drivecap.errors import DrivecapError

log = logging.getLogger(__name__)

ARCH_CHOICES = ("merge1x3", "merge2x3", "attention7x7")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train", help="extract encoder features (cached) and train the caption decoder (extra 'train')"
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="bundle folder to write (default: $DRIVECAP_HOME/bundles/<encoder sha12>)",
    )
    p.add_argument(
        "--protocol",
        choices=("loco", "single-clip"),
        default="loco",
        help="model choice: leave-one-clip-out cross-validation over the training clips (default), or the "
        "older early stopping on one held-back training clip (--val-clip, --arch, --augment)",
    )
    p.add_argument(
        "--candidates",
        nargs="+",
        metavar="NAME",
        help="loco: settings to cross-validate (default: all of drivecap.training.pipeline.CANDIDATES)",
    )
    p.add_argument(
        "--arch",
        nargs="+",
        choices=ARCH_CHOICES,
        default=list(ARCH_CHOICES),
        help="architectures to train and compare on the validation clip; the best is exported "
        "(default: all three)",
    )
    p.add_argument(
        "--val-clip",
        default="challenge02",
        help="training clip held out whole for validation and early stopping (default challenge02)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=4,
        help="encode every Nth frame of the training clips (held-out frames: all) (default 4)",
    )
    p.add_argument(
        "--augment",
        choices=("on", "off", "compare"),
        default="compare",
        help="copy-paste 'vehicle in my lane' frames: use them, not, or train both and keep the better "
        "on the validation clip (default compare)",
    )
    p.add_argument(
        "--augment-per-clip",
        type=int,
        default=60,
        metavar="N",
        help="copy-paste frames made from each training clip (default 60)",
    )
    p.add_argument(
        "--epochs", type=int, default=30, help="most epochs per run (early stopping usually ends sooner)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and shuffling (default 0)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)"
    )
    p.add_argument(
        "--cv-seeds", type=int, default=3, help="loco: seeds per fold, ensembles of 1..N scored (default 3)"
    )
    p.add_argument("--extract-only", action="store_true", help="only fill the feature cache, then stop")
    p.add_argument("--json", action="store_true", help="print the training report as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise DrivecapError("drivecap train needs torch: pip install 'drivecap[train]'") from None
    from drivecap.training.pipeline import TrainRequest, train_pipeline

    if not 1 <= args.cv_seeds <= 3:
        raise DrivecapError(f"--cv-seeds {args.cv_seeds} is not allowed: use 1, 2 or 3")
    if args.stride < 1:
        raise DrivecapError(f"--stride {args.stride} is not allowed: use 1 or more")
    cmd = "drivecap " + " ".join(sys.argv[1:])
    from drivecap.training.pipeline import CANDIDATES

    unknown = [c for c in args.candidates or [] if c not in CANDIDATES]
    if unknown:
        raise DrivecapError(f"--candidates {unknown[0]!r} is unknown; choose from {', '.join(CANDIDATES)}")
    req = TrainRequest(
        out=args.out,
        protocol=args.protocol,
        candidates=list(args.candidates or CANDIDATES),
        archs=list(args.arch),
        val_clip=args.val_clip,
        stride=args.stride,
        augment=args.augment,
        augment_per_clip=args.augment_per_clip,
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        extract_only=args.extract_only,
        cv_seeds=args.cv_seeds,
        command=cmd,
    )
    t0 = time.perf_counter()
    report = train_pipeline(cfg, req)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(report, indent=None))
    else:
        print(
            f"features: {report['extraction']['encoded_frames']} frames encoded in "
            f"{report['extraction']['seconds']:.0f} s (cache {report['extraction']['folder']})"
        )
        if "cv" in report:
            for name, r in report["cv"].items():
                b = r["best"]
                print(
                    f"{name}: mean fold score {b['score']:.3f} with {b['members']} member(s) after "
                    f"{b['epochs']} epoch(s)"
                )
        for name, r in report.get("runs", {}).items():
            ens = " (flip ensemble)" if r["flip_ensemble"] else ""
            print(
                f"{name}: val score {r['score']:.3f}{ens}, best epoch {r['best_epoch']}, {r['seconds']:.0f} s"
            )
        if "bundle" in report:
            print(
                f"bundle: {report['bundle']} ({report['chosen']}), {report['train_seconds']:.0f} s of training"
            )
    return 0
