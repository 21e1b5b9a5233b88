"""OpenVINO encoder backend (x86 CPUs, Intel GPUs): the same fp32 and INT8 QDQ ONNX files as ONNX Runtime.

Each input shape is compiled once (batch 1 at start, batch 2 only when the mirror view asks for it) and the
compiled model is kept in ``paths.engines_dir``, named and checked like the TensorRT engines: the file name and
a JSON sidecar record everything the compiled blob depends on (ONNX sha256, OpenVINO version, device, its full
name, precision, shape, threads, hint), and a blob is imported only when the sidecar's key equals the wanted key
and the file's bytes match the recorded sha256. A stale blob is therefore rebuilt, never loaded; a corrupt one
is a warning and a rebuild.

OpenVINO's own ``CACHE_DIR`` is not used: its cache is keyed internally and cannot say why it rebuilt, and it
would leave unnamed files in the engines folder.

``openvino`` is imported inside functions only: drivecap installs and runs without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivecap.assets import is_sha256_hex, sha256_file
from drivecap.encoders.base import Encoder, FloatArray
from drivecap.encoders.engine_cache import Shape, shape_str, slug
from drivecap.encoders.export import INPUT_NAME, preprocess_from_metadata
from drivecap.encoders.ort_backend import open_onnx_metadata
from drivecap.errors import BackendUnavailable, ConfigError, ModelError
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

#: Bumped when the sidecar layout or the meaning of a key field changes: older sidecars then no longer match.
CACHE_FORMAT = 1

#: Suffix of compiled-model files in the engines folder (beside TensorRT's ``.engine`` files).
BLOB_SUFFIX = ".ovblob"


def import_openvino() -> Any:
    """The ``openvino`` module, or a one-line BackendUnavailable saying what to install."""
    try:
        import openvino
    except ImportError:
        raise BackendUnavailable(
            "the openvino encoder backend needs the openvino package: pip install 'drivecap[openvino]' "
            "(or pip install openvino), or use --set encoder.backend=onnxruntime"
        ) from None
    return openvino


def openvino_version(ov: Any) -> str:
    """'2026.4.1' from OpenVINO's long build string ('2026.4.1-22982-e213a147257-releases/2026/4')."""
    full = str(ov.get_version() if hasattr(ov, "get_version") else ov.__version__)
    return full.split("-")[0] or full


def pick_device(available: list[str], wanted: str) -> str:
    """The OpenVINO device to compile for: ``auto`` is the first Intel GPU when one is present, else CPU.

    Any other value must name an available device (``CPU``, ``GPU``, ``GPU.1``); else a one-line ConfigError.
    """
    if wanted.lower() == "auto":
        gpus = [d for d in available if d == "GPU" or d.startswith("GPU.")]
        return gpus[0] if gpus else "CPU"
    want = wanted.upper()
    if want in available or (want == "GPU" and any(d.startswith("GPU.") for d in available)):
        return want
    raise ConfigError(
        f"openvino.device={wanted!r} is not available here; OpenVINO sees {', '.join(available) or 'nothing'} "
        "(use auto, or one of those)"
    )


# ------------------------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class OvKey:
    """Everything an exported OpenVINO compiled model depends on: blobs are interchangeable iff keys are equal."""

    model: str  # ONNX file stem, for a readable file name
    onnx_sha256: str
    ov_version: str
    device: str  # CPU | GPU | GPU.1 ...
    device_name: str  # FULL_DEVICE_NAME: a blob compiled for one CPU or GPU is not trusted on another
    precision: str  # fp32 | int8
    shape: Shape
    threads: int  # 0 = OpenVINO's choice
    hint: str  # performance hint

    def __post_init__(self) -> None:
        if not is_sha256_hex(self.onnx_sha256):
            raise ValueError(f"onnx_sha256 {self.onnx_sha256!r} is not a sha256 hex digest")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"precision {self.precision!r} is not fp32 or int8")

    def file_name(self) -> str:
        """``<model>-<onnx sha12>-ov<ver>-<device>-<device name>-<precision>-<shape>-t<threads>.ovblob``."""
        parts = [
            slug(self.model),
            self.onnx_sha256[:12],
            f"ov{slug(self.ov_version)}",
            slug(self.device),
            slug(self.device_name, 32),
            self.precision,
            shape_str(self.shape),
            f"t{self.threads}",
        ]
        if self.hint.lower() != "latency":
            parts.append(slug(self.hint))
        return "-".join(parts) + BLOB_SUFFIX

    @classmethod
    def from_dict(cls, data: Any) -> OvKey:
        """The key stored in a sidecar; ValueError when it is not a complete, well-typed key."""
        if not isinstance(data, dict):
            raise ValueError("key is not an object")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"key fields {sorted(data)} are not {sorted(names)}")
        try:
            return cls(
                **{n: str(data[n]) for n in names - {"shape", "threads"}},
                shape=tuple(int(d) for d in data["shape"]),
                threads=int(data["threads"]),
            )
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed key ({exc})") from None

    def differences(self, other: OvKey) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


class OvModelCache:
    """Compiled OpenVINO models in the engines folder, each with a JSON sidecar (written last, atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def blob_path(self, key: OvKey) -> Path:
        return self.folder / key.file_name()

    @staticmethod
    def sidecar_path(blob: Path) -> Path:
        return blob.with_name(blob.name + ".json")

    def lookup(self, key: OvKey) -> bytes | None:
        """The cached blob's bytes when file and sidecar are intact and record exactly ``key``; else None."""
        path = self.blob_path(key)
        data, reason = self._read(key, path)
        if reason is None:
            log.debug("OpenVINO cache hit: %s", path)
            return data
        log_fn = log.info if reason.startswith("no compiled") else log.warning
        log_fn("OpenVINO compiled model %s: %s; it will be rebuilt", path.name, reason)
        return None

    def _read(self, key: OvKey, path: Path) -> tuple[bytes, str | None]:
        side = self.sidecar_path(path)
        if not path.is_file():
            return b"", f"no compiled model in {self.folder}"
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return b"", f"no sidecar {side.name} (the blob was not completely written)"
        except (OSError, ValueError) as exc:
            return b"", f"sidecar {side.name} is unreadable ({exc})"
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else None
            return b"", f"sidecar format {got!r} is not {CACHE_FORMAT}"
        try:
            stored = OvKey.from_dict(meta.get("key"))
        except ValueError as exc:
            return b"", f"sidecar key is invalid ({exc})"
        if stored != key:
            return b"", f"sidecar is for another build (differs in {', '.join(stored.differences(key))})"
        data = path.read_bytes()
        if len(data) != meta.get("blob_bytes"):
            return b"", f"blob has {len(data)} bytes, sidecar recorded {meta.get('blob_bytes')} (truncated?)"
        got = hashlib.sha256(data).hexdigest()
        if got != meta.get("blob_sha256"):
            return b"", f"blob sha256 {got[:12]}.. does not match the sidecar's"
        return data, None

    def store(self, key: OvKey, blob: bytes) -> Path:
        """Writes the blob, then its sidecar; until the sidecar is in place :meth:`lookup` refuses the blob."""
        path = self.blob_path(key)
        atomic_write_bytes(path, blob)
        meta = {
            "format": CACHE_FORMAT,
            "key": dataclasses.asdict(key),
            "blob_file": path.name,
            "blob_sha256": hashlib.sha256(blob).hexdigest(),
            "blob_bytes": len(blob),
        }
        atomic_write_bytes(self.sidecar_path(path), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        return path


# ------------------------------------------------------------------------------------------- the encoder


class OpenVINOEncoder(Encoder):
    """VGG16 encoder compiled by OpenVINO; one compiled model and infer request per batch size used."""

    backend = "openvino"

    def __init__(
        self,
        path: Path,
        precision: str = "fp32",
        threads: int = 0,
        input_hw: tuple[int, int] = (224, 224),
        device: str = "auto",
        cache_dir: Path | None = None,
    ) -> None:
        if precision not in ("fp32", "int8"):
            raise BackendUnavailable(
                f"encoder.precision={precision} runs on TensorRT only; use fp32 or int8 with openvino"
            )
        self._ov = import_openvino()
        meta = open_onnx_metadata(path)
        self.file_sha256 = sha256_file(path)
        # An INT8 model carries the sha256 of the fp32 model it was made from: that is the encoder's identity.
        super().__init__(
            preprocess_from_metadata(meta, path, *input_hw),
            meta.get("drivecap.fp32_sha256") or self.file_sha256,
        )
        self.path = path
        # Batch 2 / two calls, median of three idle runs of `drivecap encoder bench`: fp32 0.988, INT8 0.990
        # (docs/cpu-backends.md): the mirror view goes as one batch of 2.
        self.batch_mirror = True
        self.precision = precision
        self.metadata = meta
        self.threads = threads
        self.core = self._ov.Core()
        self.device = pick_device(list(self.core.available_devices), device)
        self.device_name = str(self.core.get_property(self.device, "FULL_DEVICE_NAME"))
        self.version = openvino_version(self._ov)
        self.cache = OvModelCache(cache_dir) if cache_dir is not None else None
        self._lock = threading.Lock()
        self._requests: dict[int, Any] = {}
        self._closed = False
        #: For each batch size compiled: True when the blob came from the cache, False when compiled now.
        self.from_cache: dict[int, bool] = {}
        self._request(1)  # the frame shape is compiled (or imported) once, here, not on the first frame

    def _properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision == "fp32":
            # fp32 is the reference precision: keep OpenVINO off bf16 / f16 (its default on AMX CPUs and GPUs).
            props["INFERENCE_PRECISION_HINT"] = "f32"
        if self.device == "CPU":
            if self.threads:
                props["INFERENCE_NUM_THREADS"] = self.threads
            # OpenVINO pins its inference threads to cores, the same first cores in every process: two fleet
            # workers (or the encoder beside another job) then share one core. Measured here: two processes
            # with one thread each, 433 ms per inference pinned, 212-218 ms unpinned (docs/fleet.md).
            props["ENABLE_CPU_PINNING"] = False
        return props

    def key(self, batch: int) -> OvKey:
        return OvKey(
            model=self.path.name.removesuffix(".onnx"),
            onnx_sha256=self.file_sha256,
            ov_version=self.version,
            device=self.device,
            device_name=self.device_name,
            precision=self.precision,
            shape=(batch, 3, self.preprocess.height, self.preprocess.width),
            threads=self.threads if self.device == "CPU" else 0,
            hint="LATENCY",
        )

    def _compile(self, batch: int) -> Any:
        key = self.key(batch)
        props = self._properties()
        blob = self.cache.lookup(key) if self.cache is not None else None
        if blob is not None:
            try:
                compiled = self.core.import_model(blob, self.device, props)
                self.from_cache[batch] = True
                return compiled
            except Exception as exc:  # OpenVINO raises a plain RuntimeError on a blob it cannot read
                log.warning(
                    "OpenVINO could not import %s (%s); compiling it again",
                    key.file_name(),
                    str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__,
                )
        t0 = time.perf_counter()
        try:
            model = self.core.read_model(str(self.path))
            model.reshape({INPUT_NAME: list(key.shape)})
            compiled = self.core.compile_model(model, self.device, props)
        except Exception as exc:
            raise ModelError(
                f"OpenVINO cannot compile {self.path} for {self.device} "
                f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); delete it and re-export"
            ) from None
        log.info(
            "OpenVINO compiled %s for %s %s in %.1f s",
            self.path.name,
            self.device,
            shape_str(key.shape),
            time.perf_counter() - t0,
        )
        self.from_cache[batch] = False
        if self.cache is not None:
            try:
                stream = io.BytesIO()  # export_model() returns a BytesIO in 2026.x, bytes in older releases
                compiled.export_model(stream)
                self.cache.store(key, stream.getvalue())
            except OSError as exc:  # a read-only engines folder costs a compile per start, nothing else
                log.warning("could not keep the OpenVINO compiled model in %s (%s)", self.cache.folder, exc)
        return compiled

    def _request(self, batch: int) -> Any:
        req = self._requests.get(batch)
        if req is None:
            req = self._requests[batch] = self._compile(batch).create_infer_request()
        return req

    def infer(self, tensor: FloatArray) -> FloatArray:
        n, c, h, w = tensor.shape
        if (c, h, w) != (3, self.preprocess.height, self.preprocess.width):
            raise ModelError(
                f"input {tuple(tensor.shape)} does not match the compiled shape "
                f"(N, 3, {self.preprocess.height}, {self.preprocess.width})"
            )
        with self._lock:
            if self._closed:
                raise ModelError("the OpenVINO encoder is closed")
            req = self._request(n)
            req.infer({0: np.ascontiguousarray(tensor, dtype=np.float32)})
            # A copy: the request's output tensor is overwritten by the next inference.
            return np.array(req.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def describe(self) -> str:
        # The same for every open of the same model: it goes into each run's start event, and an offline replay's
        # JSONL must be byte-identical whether the compiled model came from the cache or not (logged instead).
        name = self.device_name if self.device == "CPU" else f"{self.device} ({self.device_name})"
        return f"{super().describe()} {self.path.name} on {name}, OpenVINO {self.version}, threads={self.threads or 'auto'}"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._requests = {}
