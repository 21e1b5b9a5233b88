"""Where the built encoder files live: the exported fp32 ONNX (or its delta-merged copy) and its INT8 QDQ copy."""

from __future__ import annotations

from pathlib import Path

from drivecap.config import Config
from drivecap.errors import ModelError

#: File name of the exported fp32 encoder in ``paths.engines_dir``.
DEFAULT_ONNX_NAME = "vgg16_conv5.onnx"


def delta_file(cfg: Config) -> Path | None:
    """The ``encoder.delta`` file (resolved like ``encoder.onnx``), or None when no delta is configured."""
    return cfg.resolve(cfg.encoder.delta) if cfg.encoder.delta else None


def delta_file_sha256(path: Path) -> str:
    from drivecap.assets import sha256_file

    if not path.is_file():
        raise ModelError(
            f"encoder.delta {path} does not exist; fix the path, or set it empty (--set encoder.delta=) "
            "to use the encoder without the fine-tuned layer"
        )
    return sha256_file(path)


def encoder_onnx_path(cfg: Config) -> Path:
    """The fp32 encoder ONNX: ``encoder.onnx`` if set, else the exported default in the engines folder.

    With ``encoder.delta`` set the default is the merged copy ``vgg16_conv5.delta-<sha12>.onnx``, named by the delta
    file's sha256: the base export is never overwritten, and a merged file of another delta is never picked up.
    """
    if cfg.encoder.onnx:
        return cfg.resolve(cfg.encoder.onnx)
    delta = delta_file(cfg)
    if delta is None:
        return cfg.engines_dir / DEFAULT_ONNX_NAME
    stem = Path(DEFAULT_ONNX_NAME).stem
    return cfg.engines_dir / f"{stem}.delta-{delta_file_sha256(delta)[:12]}.onnx"


def int8_onnx_path(cfg: Config) -> Path:
    """The static-QDQ INT8 model made from :func:`encoder_onnx_path` by ``drivecap calibrate``."""
    fp32 = encoder_onnx_path(cfg)
    return fp32.with_name(fp32.stem + ".int8.onnx")


def check_delta_merged(cfg: Config) -> None:
    """With ``encoder.delta`` set, the merged encoder must exist before anything (INT8, engines) is made from it."""
    delta = delta_file(cfg)
    if delta is None or cfg.encoder.onnx:
        return
    merged = encoder_onnx_path(cfg)
    if not merged.is_file():
        raise ModelError(
            f"encoder.delta {delta} is set but the encoder merged with it, {merged}, does not exist; run "
            "`drivecap encoder export` with the same config to write it (then `drivecap calibrate` for INT8)"
        )
