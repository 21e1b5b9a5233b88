"""Building TensorRT engines from the encoder ONNX (TensorRT 10 API, imported lazily): the GPU probe, the engine key, optimisation profiles, precision flags, the timing cache and the keyed engine cache."""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.assets import sha256_file
from drivecap.config import Config
from drivecap.encoders.base import Preprocess
from drivecap.encoders.engine_cache import EngineCache, EngineKey, Shape
from drivecap.encoders.export import preprocess_from_metadata
from drivecap.encoders.ort_backend import open_onnx_metadata
from drivecap.encoders.paths import encoder_onnx_path, int8_onnx_path
from drivecap.errors import BackendUnavailable, ConfigError, ModelError
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

_WHERE = (
    "it runs on an NVIDIA GPU or Jetson with CUDA and TensorRT 10: install it there with "
    "pip install 'drivecap[gpu]' (on a Jetson tensorrt comes with JetPack); "
    "on this machine use --set encoder.backend=onnxruntime"
)


# ------------------------------------------------------------------------------------------ environment


def _try_import(module: str, label: str, missing: list[str]) -> Any:
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as exc:  # OSError: the package is there, its CUDA libraries are not
        missing.append(label if isinstance(exc, ModuleNotFoundError) else f"{label} ({exc})")
        return None


def import_backend() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)`` with the CUDA driver initialised, or a one-line BackendUnavailable."""
    missing: list[str] = []
    trt = _try_import("tensorrt", "tensorrt", missing)
    cuda = _try_import("pycuda.driver", "pycuda", missing)
    if missing:
        raise BackendUnavailable(
            f"the tensorrt encoder backend cannot run here: {' and '.join(missing)} cannot be imported; "
            + _WHERE
        )
    version = str(getattr(trt, "__version__", "?"))
    if version.split(".")[0] != "10":
        raise BackendUnavailable(
            f"TensorRT {version} is installed, drivecap's tensorrt backend is written for TensorRT 10: "
            "pip install 'tensorrt>=10,<11' (or the JetPack that ships it), "
            "or use --set encoder.backend=onnxruntime"
        )
    try:
        cuda.init()
        count = int(cuda.Device.count())
    except Exception as exc:  # pycuda raises its own error types for "no driver" / "no device"
        raise BackendUnavailable(
            f"tensorrt and pycuda import, but the CUDA driver does not answer ({exc}); "
            f"the tensorrt backend needs an NVIDIA GPU or Jetson; {_WHERE}"
        ) from None
    if count == 0:
        raise BackendUnavailable(f"tensorrt and pycuda import, but no CUDA device is present; {_WHERE}")
    return trt, cuda


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]


def probe_gpu(cuda: Any, index: int) -> GpuInfo:
    count = int(cuda.Device.count())
    if index >= count:
        raise ConfigError(
            f"tensorrt.device={index} is not allowed: this machine has {count} CUDA device(s), "
            f"use 0..{count - 1}"
        )
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return GpuInfo(index, str(dev.name()), (int(major), int(minor)))


@functools.cache
def trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process (TensorRT keeps the first one given), feeding :mod:`logging`."""
    sev = trt.ILogger.Severity
    levels = {
        sev.INTERNAL_ERROR: logging.CRITICAL,
        sev.ERROR: logging.ERROR,
        sev.WARNING: logging.WARNING,
        sev.INFO: logging.DEBUG,
        sev.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            log.log(levels.get(severity, logging.DEBUG), "TensorRT: %s", msg)

    return _Logger()


# ----------------------------------------------------------------------------------------- engine key


def engine_onnx(cfg: Config, precision: str) -> Path:
    """The ONNX an engine of this precision is built from: the QDQ file for int8, else the fp32 export."""
    path = int8_onnx_path(cfg) if precision == "int8" else encoder_onnx_path(cfg)
    if not path.is_file():
        fix = "drivecap calibrate" if precision == "int8" else "drivecap encoder export"
        raise ModelError(
            f"{path} does not exist: the {precision} TensorRT engine is built from it; run `{fix}`"
        )
    return path


#: Largest batch an engine accepts: the mirror view sends the frame and its mirror as one batch of 2.
MAX_BATCH = 2


def profile_shapes(cfg: Config, height: int, width: int) -> tuple[Shape, Shape, Shape]:
    """Input shape profile (min, opt, max): batch 1 at the encoder's input size, up to batch 2 (the frame and
    its mirror in one call) and tensorrt.max_*.

    ``height``/``width`` are what the preprocessing produces (the configured size; 224 for an fc2 model).
    """
    mh, mw = cfg.tensorrt.max_height or height, cfg.tensorrt.max_width or width
    for key, val, base in (("tensorrt.max_height", mh, height), ("tensorrt.max_width", mw, width)):
        if val < base:
            raise ConfigError(
                f"{key}={val} is below the encoder input size {base}: the engine could not take "
                f"its own input; set it to 0 or >= {base}"
            )
    opt = (1, 3, height, width)
    return opt, opt, (MAX_BATCH, 3, mh, mw)


def engine_key(
    cfg: Config, precision: str, onnx: Path, preprocess: Preprocess, trt_version: str, gpu: GpuInfo
) -> EngineKey:
    lo, opt, hi = profile_shapes(cfg, preprocess.height, preprocess.width)
    return EngineKey(
        model=onnx.name.removesuffix(".onnx"),
        onnx_sha256=sha256_file(onnx),
        trt_version=trt_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        min_shape=lo,
        opt_shape=opt,
        max_shape=hi,
    )


# ------------------------------------------------------------------------------------------- building


def _set_precision(trt: Any, config: Any, precision: str) -> None:
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        # Explicit quantization: the Q/DQ nodes of the calibrated ONNX say what runs in INT8 (no calibrator).
        # FP16 lets the few layers outside Q/DQ pairs run in half precision rather than fp32.
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        # fp32 is the reference precision: keep TensorRT off TF32 tensor cores (on by default on Ampere+).
        config.clear_flag(trt.BuilderFlag.TF32)


def _use_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
        ok = cache is not None and config.set_timing_cache(cache, False)  # False: refuse a mismatched cache
    except Exception as exc:  # TensorRT raises on a corrupt blob
        log.debug("timing cache %s: %s", path, exc)
        ok = False
    if not ok:
        log.warning(
            "timing cache %s is corrupt or from another GPU/TensorRT; starting an empty one", path.name
        )
        config.set_timing_cache(config.create_timing_cache(b""), False)


def build_engine(trt: Any, onnx: Path, key: EngineKey, workspace_mb: int, timing_cache: Path | None) -> bytes:
    """Parses the ONNX and builds a serialized engine for ``key``; needs a current CUDA context."""
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode, no flag needed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):  # from the path, so external weight files are found too
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail given"
        raise ModelError(f"TensorRT cannot parse {onnx}: {errors}")
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise ModelError(
            f"{onnx} has {network.num_inputs} inputs and {network.num_outputs} outputs; the encoder "
            "needs exactly one of each (re-export it with `drivecap encoder export`)"
        )
    inp = network.get_input(0)
    dims = tuple(int(d) for d in inp.shape)
    if len(dims) != len(key.opt_shape):
        raise ModelError(f"{onnx} input {inp.name!r} has shape {dims}, expected NCHW")
    for i, d in enumerate(dims):
        if d >= 0 and not key.min_shape[i] == key.max_shape[i] == d:
            raise ModelError(
                f"{onnx} input {inp.name!r} has fixed shape {dims}, which cannot take "
                f"{key.min_shape}..{key.max_shape}; export it with a dynamic batch, height and width "
                "(`drivecap encoder export --force` does)"
            )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    _set_precision(trt, config, key.precision)
    if any(d < 0 for d in dims):
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, key.min_shape, key.opt_shape, key.max_shape)
        config.add_optimization_profile(profile)
    if timing_cache is not None:
        _use_timing_cache(config, timing_cache)

    log.info("building a TensorRT %s engine from %s (minutes on a Jetson)", key.precision, onnx.name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(
            f"TensorRT could not build an engine from {onnx}; its messages above say why "
            "(run with -vv for all of them)"
        )
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


@dataclass(frozen=True)
class EngineInfo:
    """A verified engine file, what it was built for, and how frames must be prepared for it."""

    path: Path
    key: EngineKey
    sha256: str
    built: bool  # False: an existing cached engine was reused
    preprocess: Preprocess
    encoder_sha256: str  # the encoder's identity: the fp32 model's sha256, also for an INT8 engine


def ensure_engine(cfg: Config, precision: str, force: bool = False) -> EngineInfo:
    """The engine for this config and precision: the cached one if valid, else a freshly built one."""
    trt, cuda = import_backend()
    gpu = probe_gpu(cuda, cfg.tensorrt.device)
    onnx = engine_onnx(cfg, precision)
    if precision == "int8":
        from drivecap.encoders.calibrate import check_int8_fresh

        check_int8_fresh(cfg, onnx)
    meta = open_onnx_metadata(onnx)
    preprocess = preprocess_from_metadata(meta, onnx, cfg.encoder.input_height, cfg.encoder.input_width)
    key = engine_key(cfg, precision, onnx, preprocess, str(trt.__version__), gpu)
    # Same identity rule as the ONNX Runtime backend: an INT8 model names the fp32 model it was made from.
    identity = meta.get("drivecap.fp32_sha256") or key.onnx_sha256
    cache = EngineCache(cfg.engines_dir)
    path = None if force else cache.lookup(key)
    if path is not None:
        return EngineInfo(path, key, cache.engine_sha256(path), False, preprocess, identity)

    timing = cache.timing_cache_path(key.trt_version, gpu.name, gpu.compute_capability)
    t0 = time.perf_counter()
    ctx = cuda.Device(gpu.index).make_context()
    try:
        data = build_engine(
            trt, onnx, key, cfg.tensorrt.workspace_mb, timing if cfg.tensorrt.timing_cache else None
        )
    finally:
        ctx.pop()
        ctx.detach()
    path = cache.store(key, data)
    log.info("built %s (%.1f MB) in %.0f s", path.name, len(data) / 1e6, time.perf_counter() - t0)
    return EngineInfo(path, key, hashlib.sha256(data).hexdigest(), True, preprocess, identity)
