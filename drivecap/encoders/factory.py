"""Choosing and opening an encoder backend from the config (auto: TensorRT on a GPU, else the CPU)."""

from __future__ import annotations

import importlib.util
import logging

from drivecap.config import Config
from drivecap.encoders.base import Encoder
from drivecap.encoders.paths import encoder_onnx_path, int8_onnx_path
from drivecap.errors import BackendUnavailable, ModelError

log = logging.getLogger(__name__)


def gpu_available() -> bool:
    """True when tensorrt and pycuda import and a CUDA device answers. Never raises."""
    if importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None:
        return False
    try:
        import pycuda.driver as cuda

        cuda.init()
        return bool(cuda.Device.count() > 0)
    except Exception as exc:  # any failure of the probe means: no usable GPU
        log.debug("CUDA probe failed: %s", exc)
        return False


def resolve_backend(cfg: Config) -> str:
    """'auto' -> 'tensorrt' on a GPU machine with TensorRT, else 'onnxruntime'."""
    if cfg.encoder.backend != "auto":
        return cfg.encoder.backend
    return "tensorrt" if gpu_available() else "onnxruntime"


def make_encoder(cfg: Config, backend: str | None = None, precision: str | None = None) -> Encoder:
    """The configured encoder, ready to run (warm-up done)."""
    backend = backend or resolve_backend(cfg)
    precision = precision or cfg.encoder.precision
    if backend == "onnxruntime":
        from drivecap.encoders.ort_backend import OrtEncoder

        if precision == "fp16":
            raise BackendUnavailable(
                "encoder.precision=fp16 runs on TensorRT only; use fp32 or int8 with onnxruntime"
            )
        path = int8_onnx_path(cfg) if precision == "int8" else encoder_onnx_path(cfg)
        if precision == "int8":
            from drivecap.encoders.calibrate import check_int8_fresh

            check_int8_fresh(cfg, path)
        enc: Encoder = OrtEncoder(
            path,
            threads=cfg.encoder.threads,
            precision=precision,
            input_hw=(cfg.encoder.input_height, cfg.encoder.input_width),
        )
    elif backend == "tensorrt":
        from drivecap.encoders.tensorrt_backend import TensorRTEncoder

        enc = TensorRTEncoder.from_config(cfg, precision=precision)
    else:
        raise ModelError(f"encoder.backend={backend!r} is not known; use auto, onnxruntime or tensorrt")
    enc.warmup(cfg.encoder.warmup_runs)
    log.info("encoder: %s", enc.describe())
    return enc
