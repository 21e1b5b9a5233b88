"""The ``drivecap`` command line: one sub-command per module in :mod:`drivecap.commands`.

Each module there has ``register(subparsers)`` that adds its parser and sets ``func(args, cfg) -> int``.
Modules import heavy libraries (cv2, onnxruntime, torch) inside their functions, so ``drivecap --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from drivecap import __version__
from drivecap.errors import DrivecapError

log = logging.getLogger("drivecap")


def build_parser() -> argparse.ArgumentParser:
    import drivecap.commands as commands_pkg

    parser = argparse.ArgumentParser(
        prog="drivecap",
        description="Real-time driver-assist captioning: VGG16 encoder, scene gate, LSTM decoder, overlay, speech.",
    )
    parser.add_argument("--version", action="version", version=f"drivecap {__version__}")
    parser.add_argument("--config", metavar="FILE", help="config YAML (default: ./config.yaml if present)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one config key, e.g. --set gate.open_threshold=0.1 (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"drivecap.commands.{info.name}")
        module.register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname).1s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("PIL", "matplotlib", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    from drivecap.config import default_config_path, load_config

    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        cfg = load_config(args.config or default_config_path(), args.overrides)
        return int(args.func(args, cfg) or 0)
    except DrivecapError as exc:
        print(f"drivecap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("drivecap: interrupted", file=sys.stderr)
        return 130
