"""TensorRT backend: engine naming, cache invalidation and atomic writes; the one-line error without a GPU;
the builder and runner driven against small fakes of tensorrt / pycuda (call names, order, CUDA context
discipline); and one real-GPU test that compares an engine's features with ONNX Runtime.

Everything but the last test runs on machines without a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from drivecap.config import Config, load_config
from drivecap.encoders import tensorrt_backend as tb
from drivecap.encoders import tensorrt_build as tbuild
from drivecap.encoders.engine_cache import EngineCache, EngineKey, slug
from drivecap.encoders.factory import gpu_available, make_encoder
from drivecap.encoders.paths import encoder_onnx_path
from drivecap.errors import BackendUnavailable, ConfigError, ModelError
from drivecap.fsutil import atomic_write_bytes
from tests.conftest import assert_one_line_error, run_cli

SHA = hashlib.sha256(b"an onnx file").hexdigest()


def make_key(**changes: Any) -> EngineKey:
    base = EngineKey(
        model="vgg16_conv5",
        onnx_sha256=SHA,
        trt_version="10.3.0",
        gpu_name="Orin",
        compute_capability=(8, 7),
        precision="fp16",
        min_shape=(1, 3, 224, 224),
        opt_shape=(1, 3, 224, 224),
        max_shape=(1, 3, 224, 224),
    )
    return dataclasses.replace(base, **changes)


# One change per key field that must lead to another engine.
KEY_CHANGES: dict[str, dict[str, Any]] = {
    "onnx_sha256": {"onnx_sha256": hashlib.sha256(b"re-exported").hexdigest()},
    "trt_version": {"trt_version": "10.4.0"},
    "gpu_name": {"gpu_name": "NVIDIA GeForce RTX 3090"},
    "compute_capability": {"compute_capability": (8, 6)},
    "precision": {"precision": "int8"},
    "shape": {"min_shape": (1, 3, 256, 256), "opt_shape": (1, 3, 256, 256), "max_shape": (1, 3, 256, 256)},
    "max_shape": {"max_shape": (1, 3, 448, 448)},
}


# ------------------------------------------------------------------------------------------------ naming


def test_file_name_is_readable_and_complete() -> None:
    assert make_key().file_name() == f"vgg16_conv5-{SHA[:12]}-trt10.3.0-orin-sm87-fp16-1x3x224x224.engine"
    dyn = make_key(max_shape=(1, 3, 448, 640), precision="int8", model="vgg16_conv5.int8")
    assert dyn.file_name() == (
        f"vgg16_conv5.int8-{SHA[:12]}-trt10.3.0-orin-sm87-int8-1x3x224x224-max1x3x448x640.engine"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA GeForce RTX 3090", "nvidia-geforce-rtx-3090"),
        ("Orin", "orin"),
        ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"),
        ("../../etc/passwd", "etc-passwd"),
        ("", "unknown"),
    ],
)
def test_gpu_slug_is_file_name_safe(name: str, expected: str) -> None:
    assert slug(name) == expected


@pytest.mark.parametrize("field", list(KEY_CHANGES))
def test_every_key_field_changes_the_file_name(field: str) -> None:
    assert make_key(**KEY_CHANGES[field]).file_name() != make_key().file_name()


def test_timing_cache_is_per_trt_version_and_gpu(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    assert cache.timing_cache_path("10.3.0", "Orin", (8, 7)) == tmp_path / "timing-10.3.0-orin-sm87.cache"
    assert cache.timing_cache_path("10.4.0", "Orin", (8, 7)).name == "timing-10.4.0-orin-sm87.cache"


def test_key_round_trips_through_json_and_rejects_malformed_keys() -> None:
    key = make_key(max_shape=(1, 3, 448, 448))
    assert EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key
    broken = key.to_dict()
    del broken["gpu_name"]
    with pytest.raises(ValueError, match="key fields"):
        EngineKey.from_dict(broken)
    with pytest.raises(ValueError, match="malformed"):
        EngineKey.from_dict({**key.to_dict(), "compute_capability": 87})
    with pytest.raises(ValueError, match="precision"):
        make_key(precision="fp8")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        make_key(max_shape=(1, 3, 112, 112))


# ------------------------------------------------------------------------------------------ cache lookup


def stored(tmp_path: Path, key: EngineKey | None = None, data: bytes = b"serialized engine" * 100) -> Path:
    return EngineCache(tmp_path).store(key or make_key(), data)


def test_store_then_lookup_returns_the_engine(tmp_path: Path) -> None:
    data = b"serialized engine" * 100
    path = stored(tmp_path, data=data)
    cache = EngineCache(tmp_path)
    assert cache.lookup(make_key()) == path
    meta = json.loads(cache.sidecar_path(path).read_text())
    assert EngineKey.from_dict(meta["key"]) == make_key()
    assert meta["engine_sha256"] == hashlib.sha256(data).hexdigest() == cache.engine_sha256(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".json"]


@pytest.mark.parametrize("field", list(KEY_CHANGES))
def test_changed_key_is_not_served_the_old_engine(tmp_path: Path, field: str) -> None:
    stored(tmp_path)
    assert EngineCache(tmp_path).lookup(make_key(**KEY_CHANGES[field])) is None


@pytest.mark.parametrize("field", list(KEY_CHANGES))
def test_foreign_engine_under_the_wanted_name_is_refused(
    tmp_path: Path, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine + sidecar of another build, copied or renamed to the wanted file name, is never used."""
    old = stored(tmp_path)
    cache = EngineCache(tmp_path)
    want = make_key(**KEY_CHANGES[field])
    target = cache.engine_path(want)
    os.replace(old, target)
    os.replace(cache.sidecar_path(old), cache.sidecar_path(target))
    with caplog.at_level(logging.INFO):
        assert cache.lookup(want) is None
    expected = "min_shape" if field == "shape" else field
    assert f"another build (differs in {expected}" in caplog.text


def test_truncated_engine_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = stored(tmp_path)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.INFO):
        assert EngineCache(tmp_path).lookup(make_key()) is None
    assert "truncated" in caplog.text


def test_same_size_but_altered_engine_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = stored(tmp_path)
    data = bytearray(path.read_bytes())
    data[500] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.INFO):
        assert EngineCache(tmp_path).lookup(make_key()) is None
    assert "does not match the sidecar" in caplog.text


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("delete", "no sidecar"),
        ("garbage", "unreadable"),
        ("old-format", "format"),
        ("no-key", "key is invalid"),
    ],
)
def test_missing_or_bad_sidecar_is_refused(
    tmp_path: Path, damage: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = stored(tmp_path)
    side = EngineCache.sidecar_path(path)
    meta = json.loads(side.read_text())
    if damage == "delete":
        side.unlink()
    elif damage == "garbage":
        side.write_text("{not json")
    elif damage == "old-format":
        side.write_text(json.dumps({**meta, "format": 0}))
    else:
        side.write_text(json.dumps({k: v for k, v in meta.items() if k != "key"}))
    with caplog.at_level(logging.INFO):
        assert EngineCache(tmp_path).lookup(make_key()) is None
    assert reason in caplog.text


def test_sidecar_without_engine_is_a_miss(tmp_path: Path) -> None:
    stored(tmp_path).unlink()
    assert EngineCache(tmp_path).lookup(make_key()) is None


def test_rebuild_replaces_engine_and_sidecar(tmp_path: Path) -> None:
    stored(tmp_path, data=b"first build" * 10)
    path = stored(tmp_path, data=b"second, longer build" * 10)
    cache = EngineCache(tmp_path)
    assert cache.lookup(make_key()) == path
    assert cache.engine_sha256(path) == hashlib.sha256(b"second, longer build" * 10).hexdigest()


# ------------------------------------------------------------------------------------------ atomicity


def fail_on(monkeypatch: pytest.MonkeyPatch, name: str, nth: int = 1) -> None:
    """Makes the ``nth`` call of os.<name> raise OSError (like a full disk or a crash at that point)."""
    real = getattr(os, name)
    count = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        count["n"] += 1
        if count["n"] == nth:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, flaky)


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    target = tmp_path / "x.engine"
    fail_on(monkeypatch, step)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(target, b"new bytes")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    target = tmp_path / "timing-10.3.0-orin-sm87.cache"
    target.write_bytes(b"old timing cache")
    fail_on(monkeypatch, step)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new timing cache")
    assert target.read_bytes() == b"old timing cache"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_crash_between_engine_and_sidecar_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine lands, its sidecar does not (2nd os.replace fails): the next lookup rebuilds."""
    stored(tmp_path, data=b"an older build" * 10)  # its sidecar must not vouch for the new bytes either
    fail_on(monkeypatch, "replace", nth=2)
    with pytest.raises(OSError):
        EngineCache(tmp_path).store(make_key(), b"the new build" * 10)
    monkeypatch.undo()
    assert EngineCache(tmp_path).lookup(make_key()) is None
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------- key from the config


def tiny_onnx(path: Path, fp32_sha: str | None = None) -> Path:
    """A real (one Identity node) ONNX with the encoder's IO names and preprocessing metadata."""
    dims: list[int | str] = ["batch", 3, "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["features"])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph)
    props = {"drivecap.preprocess": "caffe", **({"drivecap.fp32_sha256": fp32_sha} if fp32_sha else {})}
    helper.set_model_props(model, props)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(None, [f"paths.engines_dir={tmp_path / 'engines'}", *overrides])


GPU = tbuild.GpuInfo(0, "Orin", (8, 7))


def test_engine_key_from_config(tmp_path: Path) -> None:
    cfg = config(tmp_path, "encoder.input_height=256", "tensorrt.max_width=640")
    onnx_path = tiny_onnx(encoder_onnx_path(cfg))
    pre = tbuild.Preprocess("caffe", 256, 224)
    key = tbuild.engine_key(cfg, "fp16", onnx_path, pre, "10.3.0", GPU)
    assert key.onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert (key.min_shape, key.opt_shape, key.max_shape) == (
        (1, 3, 256, 224),
        (1, 3, 256, 224),
        (2, 3, 256, 640),  # batch 2: the frame and its mirror in one call
    )
    assert key.file_name().startswith(f"vgg16_conv5-{key.onnx_sha256[:12]}-trt10.3.0-orin-sm87-fp16-")
    onnx_path.write_bytes(onnx_path.read_bytes() + b" ")  # a re-export: another sha, another engine
    assert tbuild.engine_key(cfg, "fp16", onnx_path, pre, "10.3.0", GPU).file_name() != key.file_name()


def test_max_size_below_the_input_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tensorrt\.max_height=192 is below"):
        tbuild.profile_shapes(config(tmp_path, "tensorrt.max_height=192"), 224, 224)


@pytest.mark.parametrize(
    ("precision", "fix"), [("fp16", "drivecap encoder export"), ("int8", "drivecap calibrate")]
)
def test_missing_onnx_names_the_command_that_makes_it(tmp_path: Path, precision: str, fix: str) -> None:
    with pytest.raises(ModelError, match=fix):
        tbuild.engine_onnx(config(tmp_path), precision)


# ----------------------------------------------------------------------------------- without tensorrt


def test_engine_build_without_tensorrt_is_one_line(tmp_path: Path) -> None:
    env = {}
    if gpu_available():  # hide the real packages so the test means the same on a GPU machine
        for name in ("tensorrt", "pycuda"):
            (tmp_path / "hide" / name).mkdir(parents=True)
            (tmp_path / "hide" / name / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(tmp_path / "hide"), os.environ.get("PYTHONPATH")])
        )
    proc = run_cli("--set", "encoder.backend=tensorrt", "engine", "build", cwd=tmp_path, env=env)
    assert_one_line_error(
        proc, "tensorrt", "pip install 'drivecap[gpu]'", "JetPack", "encoder.backend=onnxruntime"
    )
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stdout == ""


def test_make_encoder_tensorrt_without_tensorrt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt now fails, GPU machine or not
    with pytest.raises(BackendUnavailable) as err:
        make_encoder(config(tmp_path), backend="tensorrt", precision="fp16")
    assert "\n" not in str(err.value)
    assert "pip install 'drivecap[gpu]'" in str(err.value)
    assert "--set encoder.backend=onnxruntime" in str(err.value)


# -------------------------------------------------------------------------------- fake tensorrt/pycuda


class FakeTrt:
    """The part of the TensorRT 10 Python API drivecap uses, recording each call (and checking that a CUDA
    context is current for it). An 'engine' is bytes naming the builder flags; running one returns its input
    sampled every 32 pixels, times 2."""

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8", TF32="TF32")
    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    def __init__(self, cuda: FakeCuda, input_dims: tuple[int, ...] = (-1, 3, -1, -1)) -> None:
        self.__version__ = "10.3.0"
        self.cuda = cuda
        self.input_dims = input_dims
        self.parse_errors: list[str] = []
        self.build_fails = False
        self.calls: list[tuple[Any, ...]] = []

    def rec(self, *call: Any) -> None:
        assert self.cuda.current() is not None, f"{call[0]} called without a current CUDA context"
        self.calls.append(call)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    @staticmethod
    def nptype(dtype: Any) -> type:
        return np.float32

    # --- build side
    def Builder(self, logger: Any) -> Any:
        trt = self
        trt.rec("Builder")
        network = SimpleNamespace(
            num_inputs=1,
            num_outputs=1,
            get_input=lambda i: SimpleNamespace(name="image", shape=trt.input_dims),
        )

        class Config:
            def __init__(self) -> None:
                self.cache = b""

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                trt.rec("set_memory_pool_limit", pool, size)

            def set_flag(self, flag: str) -> None:
                trt.rec("set_flag", flag)

            def clear_flag(self, flag: str) -> None:
                trt.rec("clear_flag", flag)

            def add_optimization_profile(self, profile: Any) -> None:
                trt.rec("add_optimization_profile")

            def create_timing_cache(self, blob: bytes) -> Any:
                trt.rec("create_timing_cache", bytes(blob))
                if blob.startswith(b"garbage"):
                    raise RuntimeError("invalid timing cache")
                return SimpleNamespace(blob=bytes(blob))

            def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
                trt.rec("set_timing_cache", ignore_mismatch)
                self.cache = cache.blob
                return True

            def get_timing_cache(self) -> Any:
                return SimpleNamespace(serialize=lambda: self.cache + b"+tactics")

        class Builder:
            def create_network(self, flags: int) -> Any:
                trt.rec("create_network", flags)
                return network

            def create_builder_config(self) -> Any:
                trt.rec("create_builder_config")
                return Config()

            def create_optimization_profile(self) -> Any:
                return SimpleNamespace(set_shape=lambda *a: trt.rec("set_shape", *a))

            def build_serialized_network(self, net: Any, config: Any) -> Any:
                trt.rec("build_serialized_network")
                flags = sorted(c[1] for c in trt.calls if c[0] == "set_flag")
                return None if trt.build_fails else bytearray(b"fake-engine " + " ".join(flags).encode())

        return Builder()

    def OnnxParser(self, network: Any, logger: Any) -> Any:
        trt = self

        class Parser:
            num_errors = len(trt.parse_errors)

            def parse_from_file(self, path: str) -> bool:
                trt.rec("parse_from_file", path)
                return not trt.parse_errors

            def get_error(self, i: int) -> str:
                return trt.parse_errors[i]

        return Parser()

    # --- run side
    def Runtime(self, logger: Any) -> Any:
        trt = self
        cuda = self.cuda

        class Context:
            def __init__(self) -> None:
                self.addr: dict[str, int] = {}
                self.shape: tuple[int, ...] = ()

            def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
                trt.rec("set_input_shape", name, tuple(shape))
                self.shape = tuple(shape)
                return True

            def get_tensor_shape(self, name: str) -> tuple[int, ...]:
                n, c, h, w = self.shape
                return (n, c, h // 32, w // 32)

            def set_tensor_address(self, name: str, ptr: int) -> bool:
                trt.rec("set_tensor_address", name)
                self.addr[name] = ptr
                return True

            def execute_async_v3(self, stream: int) -> bool:
                trt.rec("execute_async_v3", stream)
                x = cuda.mem[self.addr["image"]][: 4 * int(np.prod(self.shape))].view(np.float32)
                y = 2 * x.reshape(self.shape)[:, :, ::32, ::32]
                cuda.mem[self.addr["features"]][: y.nbytes] = y.ravel().view(np.uint8)
                return True

        engine = SimpleNamespace(
            num_io_tensors=2,
            get_tensor_name=["image", "features"].__getitem__,
            get_tensor_mode=lambda n: "INPUT" if n == "image" else "OUTPUT",
            get_tensor_dtype=lambda n: "FLOAT",
            create_execution_context=Context,
        )

        def deserialize_cuda_engine(blob: bytes) -> Any:
            trt.rec("deserialize_cuda_engine")
            return engine if blob.startswith(b"fake-engine") else None

        return SimpleNamespace(deserialize_cuda_engine=deserialize_cuda_engine)


class FakeCuda:
    """pycuda.driver stand-in: a per-thread context stack and 'device memory' in numpy."""

    def __init__(self) -> None:
        self.tls = threading.local()
        self.contexts: list[Any] = []
        self.mem: dict[int, np.ndarray] = {}
        self.freed: list[int] = []
        cuda = self

        class Context:
            def __init__(self) -> None:
                self.created_in = threading.current_thread().name
                self.detached = False

            def push(self) -> None:
                cuda.stack().append(self)

            def pop(self) -> None:
                assert cuda.stack() and cuda.stack()[-1] is self, "popped a context that is not current"
                cuda.stack().pop()

            def detach(self) -> None:
                self.detached = True

        class Device:
            count = staticmethod(lambda: 1)

            def __init__(self, index: int) -> None:
                assert index == 0

            def name(self) -> str:
                return "Orin"

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

            def make_context(self) -> Any:
                ctx = Context()
                cuda.contexts.append(ctx)
                ctx.push()
                return ctx

        self.Device = Device

    def init(self) -> None:
        pass

    def stack(self) -> list[Any]:
        if not hasattr(self.tls, "stack"):
            self.tls.stack = []
        stack: list[Any] = self.tls.stack
        return stack

    def current(self) -> Any:
        return self.stack()[-1] if self.stack() else None

    def mem_alloc(self, nbytes: int) -> FakeAlloc:
        assert self.current() is not None
        alloc = FakeAlloc(self, 4096 * (len(self.mem) + 1))
        self.mem[int(alloc)] = np.zeros(nbytes, np.uint8)
        return alloc

    def pagelocked_empty(self, n: int, dtype: Any) -> np.ndarray:
        return np.zeros(n, dtype)

    def Stream(self) -> Any:
        return SimpleNamespace(handle=1234, synchronize=lambda: None)

    def memcpy_htod_async(self, dst: Any, src: np.ndarray, stream: Any) -> None:
        assert self.current() is not None
        self.mem[int(dst)][: src.nbytes] = src.view(np.uint8)

    def memcpy_dtoh_async(self, dst: np.ndarray, src: Any, stream: Any) -> None:
        assert self.current() is not None
        dst.view(np.uint8)[:] = self.mem[int(src)][: dst.nbytes]


class FakeAlloc:
    def __init__(self, cuda: FakeCuda, ptr: int) -> None:
        self.cuda, self.ptr = cuda, ptr

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:
        self.cuda.freed.append(self.ptr)


def in_thread(fn: Any, name: str) -> None:
    """Runs ``fn`` in a new thread called ``name``; re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name=name)
    t.start()
    t.join()
    if errors:
        raise errors[0]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeTrt, FakeCuda]:
    cuda = FakeCuda()
    trt = FakeTrt(cuda)
    monkeypatch.setattr(tb, "import_backend", lambda: (trt, cuda))
    monkeypatch.setattr(tbuild, "import_backend", lambda: (trt, cuda))
    return trt, cuda


@pytest.mark.parametrize(
    ("precision", "flag_calls"),
    [
        ("fp16", [("set_flag", "FP16")]),
        ("int8", [("set_flag", "INT8"), ("set_flag", "FP16")]),
        ("fp32", [("clear_flag", "TF32")]),
    ],
)
def test_builder_calls(
    tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda], precision: str, flag_calls: list
) -> None:
    trt, cuda = fakes
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    key = make_key(precision=precision, max_shape=(1, 3, 448, 448))
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"earlier tactics")
    cuda.Device(0).make_context()
    data = tbuild.build_engine(trt, onnx_path, key, 512, timing)
    assert trt.calls == [
        ("Builder",),
        ("create_network", 0),
        ("parse_from_file", str(onnx_path)),
        ("create_builder_config",),
        ("set_memory_pool_limit", "WORKSPACE", 512 << 20),
        *flag_calls,
        ("set_shape", "image", (1, 3, 224, 224), (1, 3, 224, 224), (1, 3, 448, 448)),
        ("add_optimization_profile",),
        ("create_timing_cache", b"earlier tactics"),
        ("set_timing_cache", False),
        ("build_serialized_network",),
    ]
    assert data.startswith(b"fake-engine")
    assert timing.read_bytes() == b"earlier tactics+tactics"  # serialized after the build


def test_builder_reports_parser_errors_and_failed_builds(
    tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda]
) -> None:
    trt, cuda = fakes
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    cuda.Device(0).make_context()
    trt.parse_errors = ["In node 3 (Conv): unsupported auto_pad"]
    with pytest.raises(ModelError, match=r"cannot parse .*unsupported auto_pad"):
        tbuild.build_engine(trt, onnx_path, make_key(), 512, None)
    trt.parse_errors = []
    trt.build_fails = True
    with pytest.raises(ModelError, match="could not build"):
        tbuild.build_engine(trt, onnx_path, make_key(), 512, None)
    trt.input_dims = (1, 3, 224, 224)  # a static ONNX cannot serve a profile up to 448
    with pytest.raises(ModelError, match="fixed shape"):
        tbuild.build_engine(trt, onnx_path, make_key(max_shape=(1, 3, 448, 448)), 512, None)
    trt.input_dims = (1, 3, -1, -1)  # a batch fixed at 1 cannot take the frame and its mirror together
    with pytest.raises(ModelError, match=r"fixed shape.*dynamic batch"):
        tbuild.build_engine(trt, onnx_path, make_key(max_shape=(2, 3, 224, 224)), 512, None)


def test_corrupt_timing_cache_is_replaced(
    tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda], caplog: pytest.LogCaptureFixture
) -> None:
    trt, cuda = fakes
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"garbage")
    cuda.Device(0).make_context()
    tbuild.build_engine(trt, tiny_onnx(tmp_path / "m.onnx"), make_key(), 512, timing)
    assert [c for c in trt.calls if c[0] == "create_timing_cache"] == [
        ("create_timing_cache", b"garbage"),
        ("create_timing_cache", b""),
    ]
    assert "corrupt" in caplog.text
    assert timing.read_bytes() == b"+tactics"


def test_ensure_engine_builds_once_then_reuses_then_rebuilds(
    tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda]
) -> None:
    trt, cuda = fakes
    cfg = config(tmp_path)
    tiny_onnx(encoder_onnx_path(cfg))

    first = tbuild.ensure_engine(cfg, "fp16")
    assert first.built and first.path.parent == cfg.engines_dir
    assert first.path.name.endswith("-trt10.3.0-orin-sm87-fp16-1x3x224x224-max2x3x224x224.engine")
    assert (cfg.engines_dir / "timing-10.3.0-orin-sm87.cache").is_file()
    assert cuda.stack() == [] and all(c.detached for c in cuda.contexts)  # the build context is gone

    builds = trt.names().count("build_serialized_network")
    again = tbuild.ensure_engine(cfg, "fp16")
    assert not again.built and again.path == first.path and again.sha256 == first.sha256
    assert trt.names().count("build_serialized_network") == builds  # nothing was built

    first.path.write_bytes(first.path.read_bytes()[:5])  # truncated: rebuilt, not loaded
    assert tbuild.ensure_engine(cfg, "fp16").built
    assert tbuild.ensure_engine(cfg, "fp16", force=True).built

    trt.__version__ = "10.4.0"  # an upgraded TensorRT: new engine, new timing cache, old files untouched
    upgraded = tbuild.ensure_engine(cfg, "fp16")
    assert upgraded.built and upgraded.path != first.path and first.path.is_file()
    assert (cfg.engines_dir / "timing-10.4.0-orin-sm87.cache").is_file()


def test_encoder_runs_in_its_own_context_per_call(tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda]) -> None:
    trt, cuda = fakes
    cfg = config(tmp_path)
    tiny_onnx(encoder_onnx_path(cfg), fp32_sha="f" * 64)
    enc = tb.TensorRTEncoder.from_config(cfg, "fp16")
    assert enc.onnx_sha256 == "f" * 64  # same identity rule as the ONNX Runtime backend
    built_contexts = len(cuda.contexts)
    assert enc.context_thread is None  # nothing on the GPU until the first inference

    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    out: dict[str, Any] = {}

    def worker() -> None:
        out["y"] = enc.infer(x)
        out["stack_after"] = list(cuda.stack())

    in_thread(worker, "inference-worker")
    session_ctx = cuda.contexts[built_contexts]
    assert session_ctx.created_in == "inference-worker" == enc.context_thread
    assert out["stack_after"] == []  # popped after the call
    np.testing.assert_array_equal(out["y"], 2 * x[:, :, ::32, ::32])
    assert trt.calls.index(("execute_async_v3", 1234)) > trt.calls.index(("set_tensor_address", "features"))

    y2 = enc.infer(x)  # from another thread (this one): pushed and popped around the call
    np.testing.assert_array_equal(y2, out["y"])
    assert cuda.stack() == []
    with pytest.raises(ModelError, match="outside the engine's profile"):
        enc.infer(np.zeros((1, 3, 256, 256), np.float32))

    enc.close()
    assert session_ctx.detached and len(cuda.freed) == 2 and cuda.stack() == []
    with pytest.raises(ModelError, match="closed"):
        enc.infer(x)


def test_encoder_runs_frame_and_mirror_as_one_batch_of_two(
    tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda]
) -> None:
    trt, _ = fakes
    cfg = config(tmp_path)
    tiny_onnx(encoder_onnx_path(cfg))
    enc = tb.TensorRTEncoder.from_config(cfg, "fp16")
    assert enc.engine.key.max_shape == (2, 3, 224, 224) and enc.batch_mirror
    assert ("set_shape", "image", (1, 3, 224, 224), (1, 3, 224, 224), (2, 3, 224, 224)) in trt.calls
    frame = np.random.default_rng(4).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    a, b = enc.encode_pair(frame)
    assert ("set_input_shape", "image", (2, 3, 224, 224)) in trt.calls
    np.testing.assert_array_equal(a.features, enc.encode(frame).features)  # back to batch 1
    np.testing.assert_array_equal(b.features, enc.encode(np.ascontiguousarray(frame[:, ::-1])).features)
    assert not np.array_equal(a.features, b.features)
    with pytest.raises(ModelError, match="outside the engine's profile"):
        enc.infer(np.zeros((3, 3, 224, 224), np.float32))
    enc.close()


def test_encoder_refuses_an_engine_changed_after_the_check(
    tmp_path: Path, fakes: tuple[FakeTrt, FakeCuda]
) -> None:
    cfg = config(tmp_path)
    tiny_onnx(encoder_onnx_path(cfg))
    enc = tb.TensorRTEncoder.from_config(cfg, "fp16")
    enc.engine.path.write_bytes(b"fake-engine swapped in by something else")
    with pytest.raises(ModelError, match="changed on disk"):
        enc.infer(np.zeros((1, 3, 224, 224), np.float32))


# ------------------------------------------------------------------------------------------ real GPU


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs an NVIDIA GPU with tensorrt and pycuda")
def test_real_engine_matches_onnxruntime(real_cfg: Config, store: Any) -> None:
    import cv2

    from drivecap.encoders.base import cosine

    frames: list[Any] = [cv2.imread(str(p)) for p in store.test_images()[:4]]
    ort = make_encoder(real_cfg, backend="onnxruntime", precision="fp32")
    want = [ort.encode(f).features for f in frames]
    ort.close()

    enc = tb.TensorRTEncoder.from_config(real_cfg, "fp16")
    got: list[np.ndarray] = []

    def worker() -> None:  # like the pipeline: the inference thread is not the one that built the encoder
        enc.warmup(2)
        got.extend(enc.encode(f).features for f in frames)

    in_thread(worker, "trt-worker")
    assert enc.context_thread == "trt-worker"
    enc.close()
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert cosine(a, b) > 0.99, cosine(a, b)
    assert not tbuild.ensure_engine(real_cfg, "fp16").built  # the second time, the cached engine is used
