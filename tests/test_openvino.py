"""The OpenVINO backend: same outputs as ONNX Runtime, batch 2, the compiled-model cache (stale, corrupt)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config, load_config
from drivecap.encoders.base import cosine, global_pool
from drivecap.encoders.export import build_model, save_atomic
from drivecap.encoders.factory import make_encoder
from drivecap.encoders.openvino_backend import (
    OpenVINOEncoder,
    OvKey,
    OvModelCache,
    import_openvino,
    pick_device,
)
from drivecap.encoders.ort_backend import OrtEncoder
from drivecap.encoders.weights import CONV_NAMES, VGGWeights
from drivecap.errors import BackendUnavailable, ConfigError
from tests.conftest import REPO, assert_one_line_error, run_cli

HW = (64, 64)


def small_weights() -> VGGWeights:
    """He-initialised, zero-bias convs with few channels: outputs that depend on the picture (not the biases)."""
    rng = np.random.default_rng(0)
    convs, cin = [], 3
    for name, cout in zip(CONV_NAMES, (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8), strict=True):
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        convs.append((name, w, np.zeros(cout, np.float32)))
        cin = cout
    return VGGWeights(convs, "caffe", "small")


@pytest.fixture
def small_onnx(tmp_path: Path) -> Path:
    """A 13-conv VGG16-shaped encoder with few channels: the real graph, made-up weights, compiles fast."""
    path = tmp_path / "engines" / "vgg16_conv5.onnx"
    save_atomic(build_model(small_weights()), path)
    return path


@pytest.fixture(scope="module")
def frames(store: AssetStore) -> list[npt.NDArray[np.uint8]]:
    imgs = [cv2.imread(str(p)) for p in store.test_images()[:3]]
    assert all(i is not None for i in imgs)
    return [np.asarray(i, dtype=np.uint8) for i in imgs]


def _encoder(path: Path, cache: Path | None, **kw: object) -> OpenVINOEncoder:
    return OpenVINOEncoder(path, "fp32", threads=1, input_hw=HW, cache_dir=cache, **kw)  # type: ignore[arg-type]


def test_pick_device_prefers_an_intel_gpu_and_rejects_unknown_names() -> None:
    assert pick_device(["CPU"], "auto") == "CPU"
    assert pick_device(["CPU", "GPU.0", "GPU.1"], "auto") == "GPU.0"
    assert pick_device(["CPU", "GPU"], "auto") == "GPU"
    assert pick_device(["CPU", "GPU"], "cpu") == "CPU"
    assert pick_device(["CPU", "GPU.0"], "GPU") == "GPU"
    with pytest.raises(ConfigError, match=r"openvino.device='GPU'.*CPU"):
        pick_device(["CPU"], "GPU")


def test_missing_openvino_is_a_one_line_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(BackendUnavailable, match=r"pip install 'drivecap\[openvino\]'") as info:
        import_openvino()
    assert "\n" not in str(info.value)


def test_openvino_matches_onnxruntime_on_real_frames(
    small_onnx: Path, frames: list[npt.NDArray[np.uint8]]
) -> None:
    ov_enc = _encoder(small_onnx, None)
    ort_enc = OrtEncoder(small_onnx, threads=1, input_hw=HW)
    with ov_enc, ort_enc:
        assert ov_enc.onnx_sha256 == ort_enc.onnx_sha256
        assert ov_enc.device == "CPU"
        maps = []
        for img in frames:
            a, b = ov_enc.encode(img).features, ort_enc.encode(img).features
            assert a.shape == b.shape == (8, 2, 2)
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))
            maps.append(a)
        # Different frames give different maps (the output is not a constant).
        assert cosine(global_pool(maps[0]), global_pool(maps[1])) < 0.999999


def test_batch_of_two_equals_two_single_calls(small_onnx: Path, frames: list[npt.NDArray[np.uint8]]) -> None:
    with _encoder(small_onnx, None) as enc:
        x1 = enc.preprocess(frames[0])
        x2 = enc.preprocess(cv2.flip(frames[0], 1))
        singles = np.concatenate([enc.infer(x1), enc.infer(x2)])
        both = enc.infer(np.concatenate([x1, x2]))
        assert both.shape == (2, 8, 2, 2)
        np.testing.assert_allclose(both, singles, rtol=1e-4, atol=1e-5 * float(np.abs(singles).max()))
        assert not np.allclose(both[0], both[1])  # the mirrored frame really is another input
        assert set(enc.from_cache) == {1, 2}


def test_cache_is_reused_and_gives_the_same_output(small_onnx: Path, tmp_path: Path) -> None:
    cache = tmp_path / "engines"
    x = np.random.default_rng(1).normal(0, 40, (1, 3, *HW)).astype(np.float32)
    with _encoder(small_onnx, cache) as first:
        assert first.from_cache == {1: False}
        y = first.infer(x)
        blob = OvModelCache(cache).blob_path(first.key(1))
    assert blob.is_file() and OvModelCache.sidecar_path(blob).is_file()
    assert blob.name.startswith(f"vgg16_conv5-{first.file_sha256[:12]}-ov")
    with _encoder(small_onnx, cache) as second:
        assert second.from_cache == {1: True}
        np.testing.assert_array_equal(second.infer(x), y)


def test_another_onnx_or_version_is_rebuilt_never_loaded(
    small_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "engines"
    with _encoder(small_onnx, cache) as enc:
        old_key = enc.key(1)
    old_blob = OvModelCache(cache).blob_path(old_key)
    old_bytes = old_blob.read_bytes()

    # Another ONNX (other weights, same file name): another sha256, so another key; the old blob is not used.
    w = small_weights()
    w.convs[0] = (w.convs[0][0], w.convs[0][1] * 2, w.convs[0][2])
    save_atomic(build_model(w), small_onnx)
    x = np.random.default_rng(2).normal(0, 40, (1, 3, *HW)).astype(np.float32)
    with _encoder(small_onnx, cache) as enc2, OrtEncoder(small_onnx, threads=1, input_hw=HW) as ref:
        assert enc2.from_cache == {1: False} and enc2.key(1).onnx_sha256 != old_key.onnx_sha256
        np.testing.assert_allclose(enc2.infer(x), ref.infer(x), rtol=1e-3, atol=1e-3)
    assert old_blob.read_bytes() == old_bytes

    # A sidecar that records another OpenVINO version at the wanted file name is refused, with the reason.
    import drivecap.encoders.openvino_backend as ovb

    monkeypatch.setattr(ovb, "openvino_version", lambda ov: "2099.1.0")
    with _encoder(small_onnx, cache) as enc3:
        new_blob = OvModelCache(cache).blob_path(enc3.key(1))
        assert "ov2099.1.0" in new_blob.name and enc3.from_cache == {1: False}
    side = OvModelCache.sidecar_path(new_blob)
    meta = json.loads(side.read_text())
    meta["key"]["ov_version"] = "2026.0.0"
    side.write_text(json.dumps(meta))
    caplog.clear()
    with caplog.at_level(logging.WARNING), _encoder(small_onnx, cache) as enc4:
        assert enc4.from_cache == {1: False}
    assert any("differs in ov_version" in r.getMessage() for r in caplog.records)


def test_corrupt_cache_is_a_warning_and_a_rebuild(
    small_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "engines"
    x = np.random.default_rng(3).normal(0, 40, (1, 3, *HW)).astype(np.float32)
    with _encoder(small_onnx, cache) as enc:
        y = enc.infer(x)
        key = enc.key(1)
    store = OvModelCache(cache)
    blob = store.blob_path(key)

    # 1. Truncated: the sidecar's size and sha256 no longer match.
    blob.write_bytes(blob.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING), _encoder(small_onnx, cache) as enc:
        assert enc.from_cache == {1: False}
        np.testing.assert_array_equal(enc.infer(x), y)
    assert any("truncated" in r.getMessage() for r in caplog.records)
    assert blob.stat().st_size > 1000  # rewritten whole

    # 2. Garbage that the sidecar vouches for (sha256 matches): OpenVINO's import fails -> warning, rebuild.
    store.store(key, b"not an openvino blob" * 50)
    caplog.clear()
    with caplog.at_level(logging.WARNING), _encoder(small_onnx, cache) as enc:
        assert enc.from_cache == {1: False}
        np.testing.assert_array_equal(enc.infer(x), y)
    assert any("could not import" in r.getMessage() for r in caplog.records)
    with _encoder(small_onnx, cache) as enc:
        assert enc.from_cache == {1: True}

    # 3. A sidecar that is not JSON.
    OvModelCache.sidecar_path(blob).write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING), _encoder(small_onnx, cache) as enc:
        assert enc.from_cache == {1: False}
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_key_round_trips_and_rejects_malformed_sidecars() -> None:
    key = OvKey("m", "a" * 64, "2026.4.1", "CPU", "AMD EPYC", "int8", (1, 3, 224, 224), 2, "LATENCY")
    assert OvKey.from_dict(json.loads(json.dumps(key.__dict__))) == key
    assert key.file_name() == "m-aaaaaaaaaaaa-ov2026.4.1-cpu-amd-epyc-int8-1x3x224x224-t2.ovblob"
    with pytest.raises(ValueError, match="key fields"):
        OvKey.from_dict({"model": "m"})
    with pytest.raises(ValueError, match="sha256"):
        OvKey("m", "xyz", "1", "CPU", "c", "fp32", (1,), 0, "LATENCY")
    with pytest.raises(ValueError, match="precision"):
        OvKey("m", "a" * 64, "1", "CPU", "c", "fp16", (1,), 0, "LATENCY")


def test_unknown_device_is_a_config_error(small_onnx: Path) -> None:
    with pytest.raises(ConfigError, match=r"openvino\.device='NPU9'"):
        _encoder(small_onnx, None, device="NPU9")


def test_fp16_is_refused_with_what_to_use(small_onnx: Path) -> None:
    with pytest.raises(BackendUnavailable, match="fp32 or int8"):
        OpenVINOEncoder(small_onnx, "fp16", input_hw=HW)


# ------------------------------------------------------------------ through the factory, the CLI, the pipeline


def test_without_openvino_the_cli_says_what_to_install(tmp_path: Path, store: AssetStore) -> None:
    # A package named openvino that fails to import stands in for a machine without it (a real subprocess).
    fake = tmp_path / "site" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('openvino is not installed here')\n")
    env = {"PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{REPO}"}
    image = str(store.test_images()[0])
    proc = run_cli("--set", "encoder.backend=openvino", "encoder", "encode", image, env=env)
    assert_one_line_error(proc, "openvino", "pip install 'drivecap[openvino]'")


def test_factory_builds_openvino_with_the_cache_in_the_engines_folder(small_onnx: Path) -> None:
    cfg = load_config(
        None,
        [
            f"paths.engines_dir={small_onnx.parent}",
            "encoder.backend=openvino",
            "encoder.precision=fp32",
            "encoder.input_height=64",
            "encoder.input_width=64",
            "encoder.threads=1",
        ],
    )
    with make_encoder(cfg) as enc:
        # OpenVINO measured a batch of 2 faster than two calls for the mirror view (docs/cpu-backends.md).
        assert isinstance(enc, OpenVINOEncoder) and enc.threads == 1 and enc.batch_mirror
        assert list(small_onnx.parent.glob("vgg16_conv5-*-ov*-cpu-*-fp32-1x3x64x64-t1.ovblob"))
    cfg.encoder.mirror_batch = "off"
    with make_encoder(cfg) as enc:
        assert not enc.batch_mirror


@pytest.mark.parametrize("batch", [True, False])
def test_encode_pair_batches_only_when_asked_and_gives_the_same_maps(
    small_onnx: Path, frames: list[npt.NDArray[np.uint8]], batch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _encoder(small_onnx, None) as enc:
        single = enc.encode(frames[1]).features, enc.encode(cv2.flip(frames[1], 1)).features
        inner, shapes = enc.infer, []

        def counting(x: np.ndarray) -> np.ndarray:
            shapes.append(int(x.shape[0]))
            return inner(x)

        monkeypatch.setattr(enc, "infer", counting)
        enc.batch_mirror = batch
        a, b = enc.encode_pair(frames[1])
        assert shapes == ([2] if batch else [1, 1])
        for got, want in zip((a.features, b.features), single, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.slow
def test_real_int8_openvino_close_to_onnxruntime_and_captions_compared(real_cfg: Config) -> None:
    """The real INT8 QDQ file on held-out frames through both backends, as `encoder bench` compares them."""
    from drivecap.bench.backends import caption_agreement, held_out_frames

    encs = {
        f"{b}/{p}": make_encoder(real_cfg, backend=b, precision=p)
        for b, p in (("onnxruntime", "int8"), ("openvino", "int8"))
    }
    try:
        held = held_out_frames(AssetStore(), 6)
        assert {c for c, _, _ in held} == {"project_video01", "challenge01", "street"}
        assert all(f >= 1440 for c, f, _ in held if c == "street")
        r = caption_agreement(real_cfg, encs, held)
        cos = r["feature_cosine_to_onnxruntime/int8"]["openvino/int8"]
        assert 0.9 < cos <= 1.0
        share = r["pairs"]["onnxruntime vs openvino int8"]
        assert share * r["frames"] == pytest.approx(round(share * r["frames"]))  # a share of whole frames
        assert r["frames"] == len(held) and r["mirror_view"] is real_cfg.decoder.mirror_view
    finally:
        for e in encs.values():
            e.close()
