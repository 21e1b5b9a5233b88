"""TensorRT encoder backend: builds (or reuses) a serialized engine from the encoder ONNX, runs it via pycuda.

Written against the TensorRT 10 Python API (name-based IO: ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). ``tensorrt`` and ``pycuda`` are imported inside functions only, so drivecap installs
and runs without them; asking for this backend on a machine without them is a one-line
:class:`BackendUnavailable`.

CUDA contexts: the inference context is created lazily by the first :meth:`TensorRTEncoder.infer`, in the
thread that calls it, and pushed/popped around every call, so any thread may run the encoder (one at a time)
and no context is left current on a thread between calls. :meth:`TensorRTEncoder.close` destroys it. Building
an engine uses a short-lived context of its own.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.assets import sha256_file
from drivecap.config import Config
from drivecap.encoders import encoder_onnx_path, int8_onnx_path
from drivecap.encoders.base import Encoder, FloatArray, Preprocess
from drivecap.encoders.engine_cache import EngineCache, EngineKey, Shape, atomic_write_bytes
from drivecap.encoders.export import preprocess_from_metadata
from drivecap.encoders.ort_backend import open_onnx_metadata
from drivecap.errors import BackendUnavailable, ConfigError, ModelError

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


def profile_shapes(cfg: Config, height: int, width: int) -> tuple[Shape, Shape, Shape]:
    """Input shape profile (min, opt, max): batch 1 at the encoder's input size, up to tensorrt.max_*.

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
    return opt, opt, (1, 3, mh, mw)


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
                f"{key.min_shape}..{key.max_shape}; export it with dynamic height/width"
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
        from drivecap.calibrate import check_int8_fresh

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


# ------------------------------------------------------------------------------------------- running


def _volume(shape: Shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


class _Session:
    """One CUDA context and everything living in it: engine, execution context, stream, buffers.

    Created in the calling thread (its context is made there), then left popped; :meth:`run` expects the
    context pushed, :meth:`close` pushes it itself.
    """

    def __init__(self, trt: Any, cuda: Any, device: int, engine_bytes: bytes, key: EngineKey) -> None:
        self.cuda = cuda
        self.key = key
        self.runtime: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.buffers: list[Any] = []
        self.ctx = cuda.Device(device).make_context()  # created and current in this thread
        try:
            self._setup(trt, engine_bytes)
        except BaseException:
            self._teardown()
            raise
        self.ctx.pop()

    def _setup(self, trt: Any, engine_bytes: bytes) -> None:
        self.runtime = trt.Runtime(trt_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelError(
                "TensorRT could not deserialize the engine; delete it and run `drivecap engine build`"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ModelError("TensorRT could not create an execution context (out of GPU memory?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                f"the engine has inputs {inputs} and outputs {outputs}; the encoder needs one of each"
            )
        self.in_name, self.out_name = inputs[0], outputs[0]
        in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.in_name)))
        out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out_name)))

        # Buffers sized for the largest input the profile allows: a shape change never reallocates.
        self._set_shape(self.key.max_shape)
        self.h_in = self.cuda.pagelocked_empty(_volume(self.key.max_shape), in_dtype)
        self.h_out = self.cuda.pagelocked_empty(_volume(self.out_shape), out_dtype)
        self.d_in = self.cuda.mem_alloc(self.h_in.nbytes)
        self.d_out = self.cuda.mem_alloc(self.h_out.nbytes)
        # Freed explicitly in _teardown: page-locked memory belongs to the context and must go before it.
        self.buffers = [
            self.d_in,
            self.d_out,
            *(a.base for a in (self.h_in, self.h_out) if hasattr(a.base, "free")),
        ]
        self.stream = self.cuda.Stream()
        for name, buf in ((self.in_name, self.d_in), (self.out_name, self.d_out)):
            if not self.context.set_tensor_address(name, int(buf)):
                raise ModelError(f"TensorRT refused the device address for tensor {name!r}")
        self._set_shape(self.key.opt_shape)

    def _set_shape(self, shape: Shape) -> None:
        lo, hi = self.key.min_shape, self.key.max_shape
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            raise ModelError(
                f"input shape {tuple(shape)} is outside the engine's profile {lo}..{hi}; raise "
                "tensorrt.max_height / max_width and rebuild"
            )
        if not self.context.set_input_shape(self.in_name, tuple(shape)):
            raise ModelError(f"TensorRT rejected input shape {tuple(shape)} for {self.in_name!r}")
        self.out_shape: Shape = tuple(int(d) for d in self.context.get_tensor_shape(self.out_name))
        if any(d < 0 for d in self.out_shape):
            raise ModelError(
                f"TensorRT left output shape {self.out_shape} unresolved for input {tuple(shape)}"
            )
        self.in_shape: Shape = tuple(shape)

    def run(self, x: FloatArray) -> FloatArray:
        """One inference; the context must be current."""
        if x.shape != self.in_shape:
            self._set_shape(x.shape)
        h_in = self.h_in[: x.size]
        np.copyto(h_in.reshape(x.shape), x, casting="same_kind")
        self.cuda.memcpy_htod_async(self.d_in, h_in, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise ModelError("TensorRT execute_async_v3 failed; its messages above say why")
        h_out = self.h_out[: _volume(self.out_shape)]
        self.cuda.memcpy_dtoh_async(h_out, self.d_out, self.stream)
        self.stream.synchronize()
        return h_out.reshape(self.out_shape).astype(np.float32)  # a copy: the pinned buffer is reused

    def close(self) -> None:
        self.ctx.push()
        self._teardown()

    def _teardown(self) -> None:
        """Releases everything while the context is current, then pops and destroys the context."""
        try:
            if self.stream is not None:
                self.stream.synchronize()
            # TensorRT objects first (they hold device memory of this context), then our own buffers.
            self.context = self.engine = self.runtime = self.stream = None
            for buf in self.buffers:
                buf.free()
            self.buffers = []
            self.h_in = self.h_out = None
        finally:
            self.ctx.pop()
            self.ctx.detach()


class TensorRTEncoder(Encoder):
    """VGG16 encoder on a TensorRT engine; build it with :meth:`from_config`."""

    backend = "tensorrt"

    def __init__(self, engine: EngineInfo, device: int = 0) -> None:
        super().__init__(engine.preprocess, onnx_sha256=engine.encoder_sha256)
        self.engine = engine
        self.precision = engine.key.precision
        self.device = device
        self._trt, self._cuda = import_backend()
        self._lock = threading.Lock()
        self._session: _Session | None = None
        self._closed = False
        #: Name of the thread that created the CUDA context (None until the first inference).
        self.context_thread: str | None = None

    @classmethod
    def from_config(cls, cfg: Config, precision: str) -> TensorRTEncoder:
        """Reuses or builds the engine for ``cfg`` and ``precision``; the CUDA context comes at first use."""
        return cls(ensure_engine(cfg, precision), device=cfg.tensorrt.device)

    def _engine_bytes(self) -> bytes:
        data = self.engine.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.engine.sha256:
            raise ModelError(
                f"{self.engine.path} changed on disk after it was checked; run again to rebuild it"
            )
        return data

    def infer(self, tensor: FloatArray) -> FloatArray:
        with self._lock:
            if self._closed:
                raise ModelError("the TensorRT encoder is closed")
            if self._session is None:
                self._session = _Session(
                    self._trt, self._cuda, self.device, self._engine_bytes(), self.engine.key
                )
                self.context_thread = threading.current_thread().name
            session = self._session
            session.ctx.push()
            try:
                return session.run(tensor)
            finally:
                session.ctx.pop()

    def describe(self) -> str:
        k = self.engine.key
        return (
            f"{super().describe()} on {k.gpu_name} (sm{k.sm}, TensorRT {k.trt_version}), "
            f"engine {self.engine.path.name}{' (built now)' if self.engine.built else ''}"
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
        if session is not None:
            session.close()
