"""``drivecap fleet SOURCES... --out OUT``: replay many drives on Ray into OUT/<drive>/, then index them."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from drivecap.config import Config

if TYPE_CHECKING:
    from drivecap.fleet.drives import DriveTask
    from drivecap.fleet.runner import FleetReport

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fleet",
        help="replay many drives on Ray (local or a cluster) into OUT/<drive>/ and index their captions",
        description="Replays every drive (files, folders of drives, glob patterns) offline into OUT/<drive>/ "
        "with the same files `drivecap replay` writes, one encoder+decoder per Ray worker. Drives already "
        "done with the same input, config and model are skipped; failed ones are listed with their reason "
        "(exit 1). Then builds OUT/index.sqlite for `drivecap search`.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="video file, folder of drives, or glob")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--workers", type=int, metavar="N", help="workers (Ray actors); default: one per CPU (or per GPU)"
    )
    p.add_argument("--address", metavar="HOST:PORT", help="an existing Ray cluster (default: a local Ray)")
    p.add_argument("--no-index", action="store_true", help="do not (re)build OUT/index.sqlite at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.config import ConfigError
    from drivecap.fleet.drives import (
        check_address,
        check_out_dir,
        find_drives,
        make_tasks,
        out_lock,
        remove_temp_folders,
    )
    from drivecap.security import write_output_text

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers {args.workers} is not allowed: use 1 or more")
    paths = find_drives(args.sources)
    if args.address and args.address != "auto":
        check_address(args.address)  # before anything is written: Ray itself would wait a minute
    out = check_out_dir(args.out)
    tasks = make_tasks(paths)
    with out_lock(out):
        remove_temp_folders(out)
        report = _run_on_ray(args, cfg, out, tasks)
        remove_temp_folders(out)  # what killed attempts left (their retries wrote new folders)
    write_output_text(out / "fleet.summary.json", json.dumps(report.as_dict(), indent=1) + "\n")
    for r in report.results:
        if r.status == "failed":
            print(f"FAILED {r.name}: {r.reason}")
    d = report.as_dict()
    print(
        f"{len(report.results)} drives: {d['ok']} replayed, {d['skipped']} skipped (already done), "
        f"{d['failed']} failed; {d['frames']} frames in {d['wall_s']:.1f} s ({d['fps']:.2f} frames/s) "
        f"on {report.workers} workers"
    )
    if not args.no_index:
        from drivecap.fleet.index import build_index_stats

        db, stats = build_index_stats(out)
        print(f"index {db}: {stats.drives} drives, {stats.captions} captions, {stats.failed} failed")
    return 1 if d["failed"] else 0


def _run_on_ray(args: argparse.Namespace, cfg: Config, out: Path, tasks: list[DriveTask]) -> FleetReport:
    try:
        import ray
    except ImportError:
        from drivecap.errors import DrivecapError

        raise DrivecapError("drivecap fleet needs Ray: pip install -e '.[fleet]'") from None
    from drivecap.fleet.runner import FleetRunner, init_ray

    started = not ray.is_initialized()
    init_ray(args.address, args.workers)
    try:
        return FleetRunner(cfg, out, workers=args.workers, progress=not args.no_progress).run(tasks)
    finally:
        if started:
            ray.shutdown()
