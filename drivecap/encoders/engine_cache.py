"""Where TensorRT engines live on disk, how they are named, and when a cached one may be used.

An engine is only valid for the exact ONNX file, TensorRT version, GPU (name + compute capability), precision
and input-shape profile it was built for. All of that is an :class:`EngineKey`; the file name is built from
it, and a JSON sidecar next to the engine records the full key and the engine's sha256.
:meth:`EngineCache.lookup` hands out an engine only when the sidecar's key equals the wanted key and the
file's bytes match the recorded hash, so a stale, foreign or truncated engine is rebuilt, never loaded. Every
file is written atomically.

Pure Python: nothing here imports tensorrt, so all of it is tested on machines without a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivecap.assets import is_sha256_hex, sha256_file
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

#: Bumped when the sidecar layout or the meaning of a key field changes: older sidecars then no longer match.
CACHE_FORMAT = 1

PRECISIONS = ("fp32", "fp16", "int8")

Shape = tuple[int, ...]


def slug(text: str, max_len: int = 48) -> str:
    """Lower-case, file-name-safe form of a name: runs of anything but [a-z0-9._] become one '-'."""
    s = re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-.")
    return s[:max_len].rstrip("-.") or "unknown"


def shape_str(shape: Shape) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized TensorRT engine depends on: engines are interchangeable iff keys are equal."""

    model: str  # ONNX file stem, for a readable file name
    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str  # fp32 | fp16 | int8
    min_shape: Shape
    opt_shape: Shape
    max_shape: Shape

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if not is_sha256_hex(self.onnx_sha256):
            raise ValueError(f"onnx_sha256 {self.onnx_sha256!r} is not a sha256 hex digest")
        if not len(self.min_shape) == len(self.opt_shape) == len(self.max_shape):
            raise ValueError("min/opt/max shapes differ in rank")
        if not all(
            lo <= o <= hi for lo, o, hi in zip(self.min_shape, self.opt_shape, self.max_shape, strict=True)
        ):
            raise ValueError(
                f"shapes must satisfy min <= opt <= max, got {self.min_shape} {self.opt_shape} "
                f"{self.max_shape}"
            )

    @property
    def sm(self) -> str:
        """Compute capability as in CUDA arch names: (8, 7) -> '87'."""
        return f"{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def gpu_slug(self) -> str:
        return slug(self.gpu_name)

    def file_name(self) -> str:
        """``<model>-<onnx sha12>-trt<ver>-<gpu>-sm<cc>-<precision>-<opt shape>[-min..][-max..].engine``."""
        parts = [
            slug(self.model),
            self.onnx_sha256[:12],
            f"trt{slug(self.trt_version)}",
            self.gpu_slug,
            f"sm{self.sm}",
            self.precision,
            shape_str(self.opt_shape),
        ]
        if self.min_shape != self.opt_shape:
            parts.append(f"min{shape_str(self.min_shape)}")
        if self.max_shape != self.opt_shape:
            parts.append(f"max{shape_str(self.max_shape)}")
        return "-".join(parts) + ".engine"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> EngineKey:
        """The key stored in a sidecar; ValueError when it is not a complete, well-typed key."""
        if not isinstance(data, dict):
            raise ValueError("key is not an object")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ValueError(f"key fields {sorted(data)} are not {sorted(names)}")
        try:
            return cls(
                model=str(data["model"]),
                onnx_sha256=str(data["onnx_sha256"]),
                trt_version=str(data["trt_version"]),
                gpu_name=str(data["gpu_name"]),
                compute_capability=(int(data["compute_capability"][0]), int(data["compute_capability"][1])),
                precision=str(data["precision"]),
                min_shape=tuple(int(d) for d in data["min_shape"]),
                opt_shape=tuple(int(d) for d in data["opt_shape"]),
                max_shape=tuple(int(d) for d in data["max_shape"]),
            )
        except (TypeError, IndexError, KeyError) as exc:
            raise ValueError(f"malformed key ({exc})") from None

    def differences(self, other: EngineKey) -> list[str]:
        """Names of the fields in which two keys differ."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(other, f.name)]


class EngineCache:
    """The engines folder: engine files, their sidecars and the per-GPU timing caches."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def engine_path(self, key: EngineKey) -> Path:
        return self.folder / key.file_name()

    @staticmethod
    def sidecar_path(engine: Path) -> Path:
        return engine.with_name(engine.name + ".json")

    def timing_cache_path(self, trt_version: str, gpu_name: str, compute_capability: tuple[int, int]) -> Path:
        """``timing-<trtver>-<gpu>-sm<cc>.cache``: tactic timings hold only for one GPU and TensorRT."""
        major, minor = compute_capability
        return self.folder / f"timing-{slug(trt_version)}-{slug(gpu_name)}-sm{major}{minor}.cache"

    # -------------------------------------------------------------------------------------------- engines

    def lookup(self, key: EngineKey) -> Path | None:
        """The cached engine for ``key`` if it exists and is intact and its sidecar records this exact key.

        Anything else returns None (and logs why), which means: build it again.
        """
        path = self.engine_path(key)
        reason = self._invalid_reason(key, path)
        if reason is None:
            log.debug("engine cache hit: %s", path)
            return path
        log_fn = log.info if reason.startswith("no engine") else log.warning
        log_fn("TensorRT engine %s: %s; it will be rebuilt", path.name, reason)
        return None

    def _invalid_reason(self, key: EngineKey, path: Path) -> str | None:
        side = self.sidecar_path(path)
        if not path.is_file():
            return f"no engine file in {self.folder}"
        if not side.is_file():
            return f"no sidecar {side.name} (the engine was not completely written)"
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"sidecar {side.name} is unreadable ({exc})"
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else None
            return f"sidecar format {got!r} is not {CACHE_FORMAT}"
        try:
            stored = EngineKey.from_dict(meta.get("key"))
        except ValueError as exc:
            return f"sidecar key is invalid ({exc})"
        if stored != key:
            return f"sidecar is for another build (differs in {', '.join(stored.differences(key))})"
        want_sha, want_size = meta.get("engine_sha256"), meta.get("engine_bytes")
        size = path.stat().st_size
        if size != want_size:
            return f"engine file has {size} bytes, sidecar recorded {want_size} (truncated or replaced)"
        got_sha = sha256_file(path)
        if got_sha != want_sha:
            return f"engine sha256 {got_sha[:12]}.. does not match the sidecar's {str(want_sha)[:12]}.."
        return None

    def store(self, key: EngineKey, engine: bytes) -> Path:
        """Writes the engine, then its sidecar (both atomically); returns the engine path.

        The sidecar goes last: until it is in place, :meth:`lookup` does not accept the engine (a sidecar
        left by an earlier build records another sha256, so it does not vouch for the new bytes either).
        """
        path = self.engine_path(key)
        side = self.sidecar_path(path)
        atomic_write_bytes(path, engine)
        meta = {
            "format": CACHE_FORMAT,
            "key": key.to_dict(),
            "engine_file": path.name,
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
            "engine_bytes": len(engine),
        }
        atomic_write_bytes(side, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        return path

    def engine_sha256(self, engine: Path) -> str:
        """The hash recorded in an engine's sidecar (call after :meth:`lookup` accepted it)."""
        meta = json.loads(self.sidecar_path(engine).read_text(encoding="utf-8"))
        return str(meta["engine_sha256"])
