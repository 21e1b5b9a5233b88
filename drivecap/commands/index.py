"""``drivecap index OUT``: (re)build OUT/index.sqlite from the event logs of a folder of replays."""

from __future__ import annotations

import argparse
from pathlib import Path

from drivecap.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="(re)build OUT/index.sqlite (captions, facts, full text) from a folder of replays",
        description="Reads every <name>.jsonl event log under OUT (fleet or single replay outputs) and writes "
        "OUT/index.sqlite for `drivecap search` and the drive browser. The old index stays readable until "
        "the new one replaces it.",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="folder of replays")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.fleet.index import build_index_stats

    db, stats = build_index_stats(args.out)
    print(
        f"index {db}: {stats.drives} drives, {stats.captions} captions, {stats.failed} failed"
        + (f", {stats.skipped_logs} other .jsonl files skipped" if stats.skipped_logs else "")
    )
    return 0
