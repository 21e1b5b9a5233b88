"""``drivecap search OUT "person ahead" [--fact person:ahead:close] [--urgent] [--drive D] [--json]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from drivecap.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="search the caption index of a folder of replays (full text, facts, urgent, drive)",
        description="One line per caption found: drive, time, caption, thumbnail; newest drives first. "
        "Every condition given must hold. Build the index with `drivecap index OUT` (fleet does it).",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="folder of replays (or its index.sqlite)")
    p.add_argument("text", nargs="?", help="words that must all be in the caption, e.g. 'person ahead'")
    p.add_argument(
        "--fact",
        metavar="FACT",
        help="a fact the caption says: person:ahead[:close], vehicle:left, light:red, car:ahead ...",
    )
    p.add_argument("--urgent", action="store_true", help="only urgent captions (close ahead, red light)")
    p.add_argument("--drive", metavar="NAME", help="only this drive")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="most hits shown (default 50)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.fleet.search import search_captions

    hits = search_captions(
        args.out,
        text=args.text,
        fact=args.fact,
        urgent=True if args.urgent else None,
        drive=args.drive,
        limit=args.limit,
    )
    for h in hits:
        if args.json:
            print(json.dumps(h, sort_keys=True))
        else:
            flag = "!" if h["urgent"] else " "
            print(f"{h['drive']}\t{h['t']:8.2f}s {flag} {h['text']}\t{h['thumbnail'] or '-'}")
    return 0
