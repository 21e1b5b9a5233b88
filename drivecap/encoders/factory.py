"""Choosing and opening an encoder backend from the config (auto: TensorRT on a GPU, else OpenVINO, else ORT)."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from drivecap.config import Config
from drivecap.encoders.base import Encoder
from drivecap.encoders.paths import check_delta_merged, encoder_onnx_path, int8_onnx_path
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


def openvino_available() -> bool:
    """True when the openvino package is installed (it is imported only by the backend itself)."""
    return importlib.util.find_spec("openvino") is not None


def resolve_backend(cfg: Config) -> str:
    """'auto' -> 'tensorrt' on a GPU machine with TensorRT, else 'openvino' when installed, else 'onnxruntime'.

    OpenVINO before ONNX Runtime: on the same INT8 QDQ file it measured at least as fast here
    (docs/cpu-backends.md).
    """
    if cfg.encoder.backend != "auto":
        return cfg.encoder.backend
    if gpu_available():
        return "tensorrt"
    return "openvino" if openvino_available() else "onnxruntime"


def make_encoder(cfg: Config, backend: str | None = None, precision: str | None = None) -> Encoder:
    """The configured encoder, ready to run (warm-up done)."""
    backend = backend or resolve_backend(cfg)
    precision = precision or cfg.encoder.precision
    check_delta_merged(cfg)  # before the INT8 / engine checks, whose own fix would be one step too late
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
    elif backend == "openvino":
        from drivecap.encoders.openvino_backend import OpenVINOEncoder

        if precision == "int8":
            from drivecap.encoders.calibrate import check_int8_fresh

            check_int8_fresh(cfg, int8_onnx_path(cfg))
        enc = OpenVINOEncoder(
            int8_onnx_path(cfg) if precision == "int8" else encoder_onnx_path(cfg),
            precision=precision,
            threads=cfg.encoder.threads,
            input_hw=(cfg.encoder.input_height, cfg.encoder.input_width),
            device=cfg.openvino.device,
            cache_dir=cfg.engines_dir,
        )
    elif backend == "tensorrt":
        from drivecap.encoders.tensorrt_backend import TensorRTEncoder

        enc = TensorRTEncoder.from_config(cfg, precision=precision)
    else:
        raise ModelError(
            f"encoder.backend={backend!r} is not known; use auto, onnxruntime, openvino or tensorrt"
        )
    if cfg.encoder.mirror_batch != "auto":
        enc.batch_mirror = cfg.encoder.mirror_batch == "on"
    enc.warmup(cfg.encoder.warmup_runs)
    if enc.batch_mirror and cfg.decoder.mirror_view and not cfg.gate.enabled:
        # The batch-2 shape is compiled / allocated now, not on the first caption.
        h, w = enc.preprocess.height, enc.preprocess.width
        enc.infer(np.zeros((2, 3, h, w), np.float32))
    log.info("encoder: %s", enc.describe())
    return enc
