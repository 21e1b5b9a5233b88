"""INT8 calibration: frame sampling, the QDQ form TensorRT accepts, staleness."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from drivecap.config import Config, load_config
from drivecap.encoders.calibrate import MANIFEST_NAME, calibrate, check_int8_fresh, sample_frames
from drivecap.encoders.export import build_model, save_atomic
from drivecap.encoders.factory import make_encoder
from drivecap.encoders.paths import int8_onnx_path
from drivecap.encoders.weights import CONV_NAMES, VGGWeights
from drivecap.errors import ModelError


def test_sampling_is_proportional_deterministic_and_never_held_out() -> None:
    lengths = {"project_video02": 681, "challenge03": 1199, "street": 1799}
    a = sample_frames(lengths, 100, seed=3)
    assert a == sample_frames(lengths, 100, seed=3)
    assert a != sample_frames(lengths, 100, seed=4)
    assert len(a) == 100
    per = {c: sum(f.clip == c for f in a) for c in lengths}
    usable = {"project_video02": 681, "challenge03": 1199, "street": 1440}
    for clip, n in per.items():
        assert abs(n - 100 * usable[clip] / sum(usable.values())) <= 1.5
    assert max(f.frame for f in a if f.clip == "street") < 1440
    with pytest.raises(ModelError, match="held out"):
        sample_frames({"project_video01": 221}, 10, 0)


def small_weights() -> VGGWeights:
    rng = np.random.default_rng(0)
    convs, cin = [], 3
    for name, cout in zip(CONV_NAMES, (4, 4, 6, 6, 8, 8, 8, 8, 8, 8, 8, 8, 8), strict=True):
        w = rng.normal(0, np.sqrt(2 / (9 * cin)) / 30, (cout, cin, 3, 3)).astype(np.float32)
        convs.append((name, w, rng.normal(0, 0.1, cout).astype(np.float32)))
        cin = cout
    return VGGWeights(convs, "caffe", "small")


def small_config(root: Path, *more: str) -> Config:
    """The small model's settings (engines and calibration under ``root``) and ``more`` overrides."""
    return load_config(
        None,
        [
            f"paths.engines_dir={root / 'engines'}",
            f"paths.calibration_dir={root / 'calibration'}",
            "calibration.frames=8",
            "calibration.clips=[project_video02]",
            "encoder.input_height=64",
            "encoder.input_width=64",
            "encoder.threads=1",
            *more,
        ],
    )


@pytest.fixture
def small_cfg(tmp_path: Path) -> Config:
    save_atomic(build_model(small_weights()), tmp_path / "engines" / "vgg16_conv5.onnx")
    return small_config(tmp_path)


def test_calibrate_writes_symmetric_per_channel_qdq(small_cfg: Config, store: object) -> None:
    path, rebuilt = calibrate(small_cfg, progress=False)
    assert rebuilt and path == int8_onnx_path(small_cfg)
    assert (small_cfg.calibration_dir / MANIFEST_NAME).is_file()
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 13 and ops.count("DequantizeLinear") >= 26
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    # Symmetric: every zero point is 0 and int8. Per-channel: conv weight scales have one entry per out channel.
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    w_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits[n.input[1]].size > 1]
    assert len(w_dq) == 13 and all(n.input[0].endswith("/W_quantized") for n in w_dq)
    # 7-bit weights: int8 kernels without VNNI add u8*s8 products pairwise into int16, which 8-bit weights overflow.
    weights = [inits[n.input[0]] for n in w_dq]
    assert all(w.dtype == np.int8 and np.abs(w.astype(np.int16)).max() <= 64 for w in weights)
    assert max(np.abs(w.astype(np.int16)).max() for w in weights) >= 63  # the 7 bits are used
    # Biases stay float (TensorRT's parser rejects int32 bias DequantizeLinear).
    assert not any(v.dtype == np.int32 for v in inits.values())
    # Same file runs in ONNX Runtime, and a second call sees nothing changed.
    with make_encoder(small_cfg, "onnxruntime", "int8") as enc:
        out = enc.encode(np.full((64, 64, 3), 128, np.uint8)).features
        assert out.shape == (8, 2, 2)
    assert calibrate(small_cfg, progress=False) == (path, False)


def test_changed_model_or_set_invalidates_int8(small_cfg: Config, tmp_path: Path) -> None:
    path, _ = calibrate(small_cfg, progress=False)
    check_int8_fresh(small_cfg, path)
    # Another calibration set: the INT8 file is stale until recalibrated.
    manifest = small_cfg.calibration_dir / MANIFEST_NAME
    saved = manifest.read_text()
    manifest.write_text(saved.replace('"seed": 0', '"seed": 1'))
    with pytest.raises(ModelError, match="another set"):
        check_int8_fresh(small_cfg, path)
    manifest.write_text(saved)
    # Another fp32 model: stale too, and make_encoder refuses it.
    fp32 = small_cfg.engines_dir / "vgg16_conv5.onnx"
    backup = tmp_path / "backup.onnx"
    shutil.copy(fp32, backup)
    w = small_weights()
    w.convs[0][2][0] += 1.0
    save_atomic(build_model(w), fp32)
    with pytest.raises(ModelError, match="another fp32 model"):
        make_encoder(small_cfg, "onnxruntime", "int8")
    _, rebuilt = calibrate(small_cfg, progress=False)
    assert rebuilt
    check_int8_fresh(small_cfg, path)


def test_missing_int8_names_the_command(tmp_path: Path) -> None:
    cfg = load_config(None, [f"paths.engines_dir={tmp_path}"])
    with pytest.raises(ModelError, match="drivecap calibrate"):
        check_int8_fresh(cfg, int8_onnx_path(cfg))


def _activation_scales(path: Path) -> dict[str, float]:
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1
    }


def test_percentile_calibration_clips_ranges_and_is_its_own_set(small_cfg: Config, store: object) -> None:
    path, _ = calibrate(small_cfg, progress=False)
    minmax = _activation_scales(path)
    pct = small_config(
        small_cfg.engines_dir.parent, "calibration.method=percentile", "calibration.percentile=99.0"
    )
    # The estimator and its percentile are part of the set: switching either rebuilds the INT8 file.
    assert calibrate(pct, progress=False)[1]
    assert '"percentile": 99.0' in (pct.calibration_dir / MANIFEST_NAME).read_text()
    clipped = _activation_scales(path)
    assert clipped.keys() == minmax.keys() and len(minmax) >= 13
    # A percentile range never reaches past the largest value seen, and on these maps it is narrower somewhere.
    assert all(clipped[k] <= minmax[k] * 1.0001 for k in minmax)
    assert any(clipped[k] < 0.9 * minmax[k] for k in minmax)
    assert calibrate(small_cfg, progress=False)[1]
    assert _activation_scales(path) == pytest.approx(minmax)


def test_float_layers_stay_fp32_and_unknown_names_are_one_line(small_cfg: Config, store: object) -> None:
    mixed = small_config(small_cfg.engines_dir.parent, "calibration.float_layers=[block5_conv3]")
    path, _ = calibrate(mixed, progress=False)
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    conv = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    # block5_conv3 reads its float weight directly; the other twelve read dequantized int8 weights.
    assert conv["block5_conv3"].input[1] in inits and inits[conv["block5_conv3"].input[1]].dtype == np.float32
    w_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits[n.input[1]].size > 1]
    assert len(w_dq) == 12
    assert '"float_layers": [\n  "block5_conv3"\n ]' in (mixed.calibration_dir / MANIFEST_NAME).read_text()
    with make_encoder(mixed, "onnxruntime", "int8") as enc:
        assert enc.encode(np.full((64, 64, 3), 128, np.uint8)).features.shape == (8, 2, 2)
    bad = load_config(
        None, [f"paths.engines_dir={small_cfg.engines_dir}", "calibration.float_layers=[conv9]"]
    )
    with pytest.raises(
        ModelError, match=r"calibration.float_layers: 'conv9' is not a Conv layer .*block1_conv1"
    ):
        calibrate(bad, progress=False)
