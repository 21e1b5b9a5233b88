"""Preprocessing, pooling, the ONNX Runtime backend on real frames, and the errors around it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config, load_config
from drivecap.encoders.base import CAFFE_MEAN_BGR, Preprocess, cosine, global_pool, pool_grid
from drivecap.encoders.factory import make_encoder, resolve_backend
from drivecap.errors import ModelError
from tests.conftest import REPO, assert_one_line_error, run_cli


def test_caffe_preprocess_of_a_constant_frame() -> None:
    frame = np.full((540, 960, 3), (10, 20, 30), np.uint8)
    x = Preprocess("caffe", 224, 224)(frame)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 100, 100], np.array([10, 20, 30]) - CAFFE_MEAN_BGR, rtol=1e-6)


def test_torch_preprocess_swaps_to_rgb_and_normalises() -> None:
    frame = np.zeros((50, 70, 3), np.uint8)
    frame[..., 2] = 255  # red in BGR
    x = Preprocess("torch", 64, 96)(frame)
    assert x.shape == (1, 3, 64, 96)
    np.testing.assert_allclose(
        x[0, :, 5, 5], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-5
    )


def test_preprocess_resizes_any_frame_and_keeps_layout() -> None:
    # A frame whose left half is dark and right half bright stays so after resize: NCHW, width last.
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[:, 640:] = 200
    x = Preprocess("caffe", 224, 224)(frame)
    assert x[0, 0, 50, 10] < 0 < x[0, 0, 50, 200]
    with pytest.raises(ValueError):
        Preprocess()(np.zeros((10, 10), np.uint8))


def test_pool_grid_cells() -> None:
    fmap = np.zeros((2, 7, 7), np.float32)
    fmap[0, :, :2] = 1.0  # left two columns
    fmap[1, :, 5:] = 3.0  # right two columns
    v = pool_grid(fmap, 1, 3)
    assert v.shape == (6,)
    np.testing.assert_allclose(
        v, [1, 0, 0, 0, 0, 3]
    )  # cell-major: (left c0, c1), (mid c0, c1), (right c0, c1)
    np.testing.assert_allclose(global_pool(fmap), [2 / 7, 6 / 7], rtol=1e-6)
    assert cosine(v, v) == pytest.approx(1.0)


def test_auto_backend_without_gpu_is_openvino_when_installed_else_onnxruntime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import drivecap.encoders.factory as factory

    assert resolve_backend(load_config(None)) == "openvino"  # the set-up installs the openvino extra
    monkeypatch.setattr(factory, "openvino_available", lambda: False)
    assert resolve_backend(load_config(None)) == "onnxruntime"
    assert resolve_backend(load_config(None, ["encoder.backend=onnxruntime"])) == "onnxruntime"


@pytest.mark.slow
def test_real_encoder_on_real_frames_fp32_vs_int8(real_cfg: Config, store: AssetStore) -> None:
    """The real VGG16 on real dashcam frames: conv5 maps, and INT8 features close to fp32."""
    images = [cv2.imread(str(p)) for p in store.test_images()[:4]]
    with (
        make_encoder(real_cfg, "onnxruntime", "fp32") as fp32,
        make_encoder(real_cfg, "onnxruntime", "int8") as i8,
    ):
        assert fp32.onnx_sha256 == i8.onnx_sha256  # the INT8 model names the fp32 model it came from
        cos, between = [], []
        prev = None
        for img in images:
            a, b = fp32.encode(img).features, i8.encode(img).features
            assert a.shape == (512, 7, 7) and b.shape == (512, 7, 7)
            assert (a >= 0).all()  # conv5 after ReLU + max-pool
            cos.append(cosine(global_pool(a), global_pool(b)))
            if prev is not None:
                between.append(cosine(global_pool(a), global_pool(prev)))
            prev = a
    assert min(cos) > 0.98
    # Different scenes are further apart than the two precisions of one scene.
    assert max(between) < min(cos)


@pytest.mark.slow
def test_int8_kernels_compute_what_the_qdq_file_says_on_this_cpu(real_cfg: Config, store: AssetStore) -> None:
    """The fused int8 convolutions give the features of the QDQ file's own arithmetic (QuantizeLinear,
    DequantizeLinear and a float Conv, which ONNX Runtime runs when graph optimizations are off). On a CPU
    without VNNI 8-bit weights made them differ (int16 saturation): cosine 0.955 instead of 0.999 to fp32."""
    import onnxruntime as ort

    from drivecap.encoders.paths import int8_onnx_path

    path = str(int8_onnx_path(real_cfg))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    images = [cv2.imread(str(p)) for p in store.test_images()[:3]]
    with make_encoder(real_cfg, "onnxruntime", "int8") as fused:
        for img in images:
            x = fused.preprocess(img)
            a = fused.infer(x)[0]
            b = plain.run(None, {plain.get_inputs()[0].name: x})[0][0]
            assert cosine(global_pool(a), global_pool(b)) > 0.995


def test_missing_and_corrupt_onnx(tmp_path: Path) -> None:
    cfg = load_config(None, [f"paths.engines_dir={tmp_path}", "encoder.precision=fp32"])
    with pytest.raises(ModelError, match="drivecap encoder export"):
        make_encoder(cfg, "onnxruntime")
    bad = tmp_path / "vgg16_conv5.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    proc = run_cli(
        "--set",
        f"paths.engines_dir={tmp_path}",
        "--set",
        "encoder.precision=fp32",
        "encoder",
        "encode",
        str(next(AssetStore().test_images().__iter__())),
    )
    assert_one_line_error(proc, str(bad), "corrupt")


def test_truncated_real_onnx(tmp_path: Path, real_cfg: Config) -> None:
    data = (real_cfg.engines_dir / "vgg16_conv5.onnx").read_bytes()
    (tmp_path / "vgg16_conv5.onnx").write_bytes(data[: len(data) // 3])
    cfg = load_config(None, [f"paths.engines_dir={tmp_path}", "encoder.precision=fp32"])
    with pytest.raises(ModelError, match=r"vgg16_conv5\.onnx"):
        make_encoder(cfg, "onnxruntime")


def test_not_an_image_is_one_line_error(tmp_path: Path) -> None:
    fake = tmp_path / "photo.jpg"
    fake.write_text("this is text, not a JPEG")
    assert_one_line_error(run_cli("encoder", "encode", str(fake)), str(fake), "not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli("encoder", "encode", str(empty)), str(empty), "no images")


def test_tensorrt_without_gpu_is_one_line_error(store: AssetStore) -> None:
    img = str(store.test_images()[0])
    err = assert_one_line_error(
        run_cli("--set", "encoder.backend=tensorrt", "encoder", "encode", img), "tensorrt"
    )
    assert "onnxruntime" in err  # says what works on this machine


@pytest.mark.slow
def test_encoder_bench_json(real_cfg: Config) -> None:
    proc = run_cli(
        "-q", "encoder", "bench", "--json", "--frames", "6", "--runs", "20", "--caption-frames", "4", cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["fp32"]["runs"] == 20 and r["int8"]["runs"] == 20
    assert r["speedup"] == pytest.approx(r["fp32"]["median_ms"] / r["int8"]["median_ms"], rel=0.01)
    assert 0.98 <= r["cosine_min"] <= r["cosine_mean"] <= 1.0
    assert r["frames"] == 6 and r["clip"] == "project_video01"
    # The CPU backend table and the caption agreement ride along (OpenVINO is installed by the set-up).
    table = r["backends"]["table"]
    assert {"onnxruntime/fp32", "onnxruntime/int8", "openvino/fp32", "openvino/int8"} <= set(table)
    for row in table.values():
        assert row["runs"] == 20 and row["two_calls_ms"] > row["batch1_ms"] > 0
        assert row["faster_mirror"] == ("batch2" if row["batch2_ms"] < row["two_calls_ms"] else "two_calls")
    auto = r["backends"]["auto"]
    assert auto["backend"] == "openvino" and auto["fastest_int8"] in table
    ca = r["caption_agreement"]
    assert ca["frames"] >= 3 and set(ca["clips"]) == {"project_video01", "challenge01", "street"}
    for share in ca["pairs"].values():
        assert 0.0 <= share <= 1.0 and (share * ca["frames"]) == pytest.approx(round(share * ca["frames"]))
