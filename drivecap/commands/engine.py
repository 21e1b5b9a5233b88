"""``drivecap engine build``: builds a TensorRT engine ahead of time, on the GPU machine that will run it."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from drivecap.config import Config

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "engine",
        help="TensorRT engines in paths.engines_dir",
        description="TensorRT engines: build them ahead of time on the GPU machine that runs them.",
    )
    actions = p.add_subparsers(dest="engine_command", metavar="ACTION")
    actions.required = True
    b = actions.add_parser(
        "build",
        help="build (or reuse) the engine for this GPU and print its path",
        description="Builds the TensorRT engine for the configured encoder ONNX, input size and precision on "
        "this GPU, or reuses the cached one when it is still valid; prints the engine path.",
    )
    b.add_argument(
        "--precision",
        choices=("fp16", "int8", "fp32"),
        default=None,
        help="default: encoder.precision (int8 builds from the QDQ ONNX of `drivecap calibrate`)",
    )
    b.add_argument("--force", action="store_true", help="rebuild even when a valid cached engine exists")
    b.set_defaults(func=build)


def build(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.encoders.tensorrt_backend import ensure_engine

    info = ensure_engine(cfg, args.precision or cfg.encoder.precision, force=args.force)
    if not info.built:
        log.info("reusing the cached engine (key and sha256 match); --force rebuilds it")
    print(info.path)
    return 0
