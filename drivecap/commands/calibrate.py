"""``drivecap calibrate``: INT8 static QDQ encoder from frames of the training drives."""

from __future__ import annotations

import argparse

from drivecap.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("calibrate", help="make the INT8 (static QDQ) encoder from training-drive frames")
    p.add_argument("--force", action="store_true", help="rebuild even when model and set are unchanged")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.encoders.calibrate import calibrate

    path, rebuilt = calibrate(cfg, force=args.force)
    print(f"{'wrote' if rebuilt else 'up to date:'} {path}")
    return 0
