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

import hashlib
import threading
from typing import Any

import numpy as np

from drivecap.config import Config
from drivecap.encoders.base import Encoder, FloatArray
from drivecap.encoders.engine_cache import EngineKey, Shape
from drivecap.encoders.tensorrt_build import EngineInfo, ensure_engine, import_backend, trt_logger
from drivecap.errors import ModelError

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
    # A GPU runs a batch of 2 for little more than one: frame + mirror in one call. Not measured here (no GPU).
    batch_mirror = True

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
