"""Where the built encoder files live: the exported fp32 ONNX and its INT8 QDQ copy."""

from __future__ import annotations

from pathlib import Path

from drivecap.config import Config

#: File name of the exported fp32 encoder in ``paths.engines_dir``.
DEFAULT_ONNX_NAME = "vgg16_conv5.onnx"


def encoder_onnx_path(cfg: Config) -> Path:
    """The fp32 encoder ONNX: ``encoder.onnx`` if set, else the exported default in the engines folder."""
    return cfg.resolve(cfg.encoder.onnx) if cfg.encoder.onnx else cfg.engines_dir / DEFAULT_ONNX_NAME


def int8_onnx_path(cfg: Config) -> Path:
    """The static-QDQ INT8 model made from :func:`encoder_onnx_path` by ``drivecap calibrate``."""
    fp32 = encoder_onnx_path(cfg)
    return fp32.with_name(fp32.stem + ".int8.onnx")
