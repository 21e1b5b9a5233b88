"""The fine-tuned layer delta: its file format and checks, the merge into the encoder ONNX, paths and the CLI.

Small made-up VGG16-shaped models (the real layer layout, 4-12 channels) keep every test well under a second,
except the few that run `drivecap` in a subprocess.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from drivecap.assets import sha256_file
from drivecap.config import load_config
from drivecap.encoders.delta import EncoderDelta, arrays_sha256, load_delta, merge_delta, save_delta
from drivecap.encoders.export import build_model, save_atomic
from drivecap.encoders.paths import encoder_onnx_path, int8_onnx_path
from drivecap.encoders.weights import CONV_NAMES, VGGWeights, load_weights
from drivecap.errors import ModelError
from tests.conftest import assert_one_line_error, run_cli
from tests.reference_vgg import vgg_conv5

WIDTHS = (4, 4, 6, 6, 8, 8, 8, 10, 10, 10, 12, 12, 12)
BASE_SHA = "ab" * 32
LAYER = "block5_conv3"


def small_weights(seed: int = 0) -> VGGWeights:
    rng = np.random.default_rng(seed)
    convs, cin = [], 3
    for name, cout in zip(CONV_NAMES, WIDTHS, strict=True):
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3)).astype(np.float32)
        convs.append((name, w, rng.normal(0.05, 0.1, cout).astype(np.float32)))
        cin = cout
    return VGGWeights(convs=convs, preprocess="caffe", source="made-up")


def make_delta(
    seed: int = 1, rank: int = 2, base: str = BASE_SHA, layer: str = LAYER, scale: float = 0.3
) -> EncoderDelta:
    rng = np.random.default_rng(seed)
    c = WIDTHS[-1]
    return EncoderDelta(
        layer=layer,
        down=rng.normal(0, scale, (rank, c, 3, 3)).astype(np.float32),
        up=rng.normal(0, scale, (c, rank)).astype(np.float32),
        bias=rng.normal(0, 0.1, c).astype(np.float32),
        base_weights_sha256=base,
        meta={"command": "made up for tests", "folds": [0, 1], "input": [32, 64]},
    )


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"image": x})[0])


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def meta_of(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def replaced(weights: VGGWeights, layer: str, w: np.ndarray, b: np.ndarray) -> VGGWeights:
    convs = [(n, w, b) if n == layer else (n, cw, cb) for n, cw, cb in weights.convs]
    return VGGWeights(convs=convs, preprocess=weights.preprocess, source=weights.source)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(9).normal(0, 60, (1, 3, 32, 64)).astype(np.float32)


# --------------------------------------------------------------------------------------------- the delta


def test_weight_delta_is_the_low_rank_product() -> None:
    d = make_delta(rank=3)
    dw = d.weight_delta()
    assert d.rank == 3 and dw.shape == (12, 12, 3, 3) and dw.dtype == np.float32
    want = np.zeros((12, 12, 3, 3))
    for o in range(12):
        for k in range(3):
            want[o] += float(d.up[o, k]) * d.down[k].astype(np.float64)
    np.testing.assert_allclose(dw, want, rtol=1e-6, atol=1e-7)
    assert float(np.abs(dw).max()) > 0.05  # not trivially zero


def test_merged_model_equals_the_model_built_with_updated_weights(x: np.ndarray) -> None:
    weights = small_weights()
    base = build_model(weights, source_sha256=BASE_SHA)
    d = make_delta()
    merged = merge_delta(base, d)
    _, w, b = weights.convs[-1]
    ref_w, ref_b = w + np.einsum("ok,kihw->oihw", d.up, d.down), b + d.bias
    want = run(build_model(replaced(weights, LAYER, ref_w, ref_b), source_sha256=BASE_SHA), x)
    got = run(merged, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    # The independent numpy forward pass with the updated layer agrees too.
    convs = [(cw, cb) for _, cw, cb in replaced(weights, LAYER, ref_w, ref_b).convs]
    np.testing.assert_allclose(got[0], vgg_conv5(x[0].astype(np.float64), convs), rtol=1e-4, atol=1e-4)
    before = run(base, x)
    assert float(np.abs(before).max()) > 0 and not np.allclose(got, before, rtol=1e-2, atol=1e-3)
    # Only that layer changed, and the input model was left as it was.
    a, m = inits(base), inits(merged)
    assert [k for k in a if not np.array_equal(a[k], m[k])] == [f"{LAYER}/W", f"{LAYER}/b"]
    np.testing.assert_array_equal(a[f"{LAYER}/W"], w)


def test_bias_only_delta_adds_to_the_layer_bias(x: np.ndarray) -> None:
    weights = small_weights()
    base = build_model(weights, source_sha256=BASE_SHA)
    d = make_delta()
    d = EncoderDelta(LAYER, d.down, np.zeros_like(d.up), d.bias, BASE_SHA, {})
    m = inits(merge_delta(base, d))
    np.testing.assert_array_equal(m[f"{LAYER}/W"], weights.convs[-1][1])
    np.testing.assert_allclose(m[f"{LAYER}/b"], weights.convs[-1][2] + d.bias, rtol=1e-6)


def test_zero_delta_leaves_the_output_unchanged(x: np.ndarray) -> None:
    base = build_model(small_weights(), source_sha256=BASE_SHA)
    d = make_delta()
    zero = EncoderDelta(LAYER, d.down, np.zeros_like(d.up), np.zeros_like(d.bias), BASE_SHA, {})
    np.testing.assert_array_equal(run(merge_delta(base, zero), x), run(base, x))


def test_merge_metadata_names_the_delta_file(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    file_sha = save_delta(path, make_delta())
    merged = merge_delta(build_model(small_weights(), source_sha256=BASE_SHA), load_delta(path), path)
    meta = meta_of(merged)
    assert meta["drivecap.delta_sha256"] == file_sha == sha256_file(path)
    assert meta["drivecap.delta_layer"] == LAYER
    assert meta["drivecap.weights_sha256"] == BASE_SHA  # still the base weights it was built from
    assert meta["drivecap.preprocess"] == "caffe"


def test_save_load_round_trip(tmp_path: Path) -> None:
    d = make_delta(rank=4)
    path = tmp_path / "block5.npz"
    sha = save_delta(path, d)
    got = load_delta(path)
    assert sha == sha256_file(path)
    assert (got.layer, got.rank, got.base_weights_sha256, got.meta) == (LAYER, 4, BASE_SHA, d.meta)
    for name in ("down", "up", "bias"):
        np.testing.assert_array_equal(getattr(got, name), getattr(d, name))
        assert getattr(got, name).dtype == np.float32
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_save_refuses_an_inconsistent_delta(tmp_path: Path) -> None:
    d = make_delta()
    path = tmp_path / "bad.npz"
    with pytest.raises(ModelError, match="bias has 13 values"):
        save_delta(path, EncoderDelta(LAYER, d.down, d.up, np.zeros(13, np.float32), BASE_SHA, {}))
    with pytest.raises(ModelError, match="not a sha256"):
        save_delta(path, EncoderDelta(LAYER, d.down, d.up, d.bias, "abc", {}))
    with pytest.raises(ModelError, match="not JSON-serialisable"):
        save_delta(path, EncoderDelta(LAYER, d.down, d.up, d.bias, BASE_SHA, {"when": object()}))
    assert not path.exists()


# ----------------------------------------------------------------------------------------- load errors


def _raw(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {n: z[n] for n in ("down", "up", "bias")}
        header = json.loads(str(z["meta"][()]))
    return arrays, header


def _rewrite(path: Path, arrays: dict[str, np.ndarray], header: dict, resum: bool = False) -> None:
    if resum:
        header = {**header, "arrays_sha256": arrays_sha256(arrays["down"], arrays["up"], arrays["bias"])}
    np.savez(path, **arrays, meta=np.array(json.dumps(header)))


def _flip_middle(p: Path) -> None:
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    p.write_bytes(bytes(data))


def _flip_in_down(p: Path) -> None:
    data = bytearray(p.read_bytes())
    at = data.find(_raw(p)[0]["down"].tobytes()[:64]) + 100  # inside down.npy's stored bytes
    assert at > 100
    data[at : at + 4] = bytes(b ^ 0xFF for b in data[at : at + 4])
    p.write_bytes(bytes(data))


def _tamper_arrays(p: Path) -> None:
    arrays, header = _raw(p)
    arrays["down"][0, 0, 0, 0] += 1.0
    _rewrite(p, arrays, header)  # the old meta (and its arrays_sha256)


def _drop_bias(p: Path) -> None:
    arrays, header = _raw(p)
    del arrays["bias"]
    np.savez(p, **arrays, meta=np.array(json.dumps(header)))


def _header(**change: object) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        arrays, header = _raw(p)
        header.update(change)
        for k in [k for k, v in change.items() if v is None]:
            del header[k]
        _rewrite(p, arrays, header)

    return edit


def _arrays(name: str, value: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        arrays, header = _raw(p)
        arrays[name] = value(arrays[name])
        _rewrite(p, arrays, header, resum=True)  # a consistent sum: the shape / value checks must catch it

    return edit


def _as_npy(p: Path) -> None:
    with open(p, "wb") as f:
        np.save(f, np.zeros(3, np.float32))


def _with_nan(a: np.ndarray) -> np.ndarray:
    a = a.copy()
    a[0, 0] = np.nan
    return a


LOAD_ERRORS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda p: p.unlink(), "does not exist"),
    "not a zip": (lambda p: p.write_text("definitely not a delta"), "not a zip archive"),
    "a single npy": (_as_npy, "not a zip archive"),
    "flipped bytes": (_flip_middle, "corrupted"),
    "flipped array bytes": (_flip_in_down, "corrupted"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3]), "corrupted"),
    "arrays tampered": (_tamper_arrays, "arrays_sha256"),
    "missing array": (_drop_bias, "no array 'bias'"),
    "missing key": (_header(rank=None), "no key 'rank'"),
    "wrong format": (_header(format="someone.else"), "not a drivecap encoder delta"),
    "wrong version": (_header(version=2), "version 2"),
    "rank mismatch": (_header(rank=3), "rank does not agree"),
    "bias length": (_arrays("bias", lambda a: np.concatenate([a, a[:1]])), "bias has 13 values"),
    "up rank": (_arrays("up", lambda a: a[:, :1].copy()), "rank does not agree"),
    "non-finite": (_arrays("up", _with_nan), "non-finite"),
    "float64": (_arrays("down", lambda a: a.astype(np.float64)), "expected float32"),
}


@pytest.mark.parametrize("case", list(LOAD_ERRORS))
def test_load_errors_are_one_line_and_name_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / "encoder_delta.npz"
    save_delta(path, make_delta())
    load_delta(path)  # sound before the damage
    damage, needle = LOAD_ERRORS[case]
    damage(path)
    with pytest.raises(ModelError) as err:
        load_delta(path)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg, msg


# ---------------------------------------------------------------------------------------- merge errors


def test_merge_errors_name_the_delta_file(tmp_path: Path) -> None:
    weights = small_weights()
    model = build_model(weights, source_sha256="cd" * 32)
    src = tmp_path / "ft_block5.npz"
    save_delta(src, make_delta())
    with pytest.raises(ModelError) as err:
        merge_delta(model, make_delta(), src)
    msg = str(err.value)
    assert "ft_block5.npz" in msg and "abababababab" in msg and "cdcdcdcdcdcd" in msg
    assert "train the delta again" in msg and "from the weights it was trained on" in msg
    with pytest.raises(ModelError, match=r"ft_block5\.npz.*not exported by `drivecap encoder export`"):
        merge_delta(build_model(weights), make_delta(), src)

    model = build_model(weights, source_sha256=BASE_SHA)
    with pytest.raises(ModelError, match=r"ft_block5\.npz.*'block6_conv1'.*block1_conv1, .*block5_conv3"):
        merge_delta(model, make_delta(layer="block6_conv1"), src)
    with pytest.raises(ModelError, match=r"ft_block5\.npz.*\(12, 12, 3, 3\).*\(4, 3, 3, 3\)"):
        merge_delta(model, make_delta(layer="block1_conv1"), src)
    with pytest.raises(ModelError, match="already has delta"):
        merge_delta(merge_delta(model, make_delta(), src), make_delta(), src)


# ----------------------------------------------------------------------------------- paths and runtime


def test_encoder_onnx_path_follows_the_delta_knob(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    (folder / "deltas").mkdir(parents=True)
    delta = folder / "deltas" / "d.npz"
    sha = save_delta(delta, make_delta())
    (folder / "config.yaml").write_text("encoder:\n  delta: deltas/d.npz\n")
    cfg = load_config(folder / "config.yaml")  # a relative encoder.delta is against the config's folder
    merged = folder / "engines" / f"vgg16_conv5.delta-{sha[:12]}.onnx"
    assert encoder_onnx_path(cfg) == merged
    assert int8_onnx_path(cfg) == folder / "engines" / f"vgg16_conv5.delta-{sha[:12]}.int8.onnx"
    assert encoder_onnx_path(load_config(folder / "config.yaml", ["encoder.delta="])) == (
        folder / "engines" / "vgg16_conv5.onnx"
    )
    explicit = load_config(folder / "config.yaml", ["encoder.onnx=mine.onnx"])
    assert encoder_onnx_path(explicit) == folder / "mine.onnx"  # encoder.onnx still wins
    # Another delta is another file: a merged file of the old delta is never taken for the new one.
    other = save_delta(delta, make_delta(seed=5))
    assert other != sha and encoder_onnx_path(cfg).name == f"vgg16_conv5.delta-{other[:12]}.onnx"
    delta.unlink()
    with pytest.raises(ModelError, match=f"encoder.delta {delta} does not exist"):
        encoder_onnx_path(cfg)


def test_opening_the_encoder_before_the_merge_says_export(tmp_path: Path) -> None:
    from drivecap.encoders.factory import make_encoder

    delta = tmp_path / "d.npz"
    save_delta(delta, make_delta())
    cfg = load_config(
        None, [f"paths.engines_dir={tmp_path / 'engines'}", f"encoder.delta={delta}", "encoder.warmup_runs=0"]
    )
    for precision in ("int8", "fp32"):
        with pytest.raises(ModelError) as err:
            make_encoder(cfg, backend="onnxruntime", precision=precision)
        msg = str(err.value)
        assert str(delta) in msg and str(encoder_onnx_path(cfg)) in msg and "`drivecap encoder export`" in msg
    base = build_model(small_weights(), source_sha256=BASE_SHA)
    save_atomic(merge_delta(base, load_delta(delta), delta), encoder_onnx_path(cfg))
    with make_encoder(cfg, backend="onnxruntime", precision="fp32") as enc:
        # Engine, feature and bundle caches key by this: the merged file's sha256, not the base's.
        assert enc.onnx_sha256 == sha256_file(encoder_onnx_path(cfg))


def test_doctor_shows_the_delta(tmp_path: Path) -> None:
    from drivecap.commands.doctor import _encoder

    delta = tmp_path / "d.npz"
    save_delta(delta, make_delta())
    cfg = load_config(None, [f"paths.engines_dir={tmp_path / 'engines'}", f"encoder.delta={delta}"])
    checks = {c.area: c for c in _encoder(cfg)}
    assert str(delta) in checks["delta"].found and encoder_onnx_path(cfg).name in checks["delta"].found
    assert checks["encoder"].status == "fail" and checks["encoder"].fix == "drivecap encoder export"
    delta.unlink()
    (check,) = _encoder(cfg)
    assert check.status == "fail" and str(delta) in check.found


# ------------------------------------------------------------------------------------------------ CLI


def _write_keras_h5(path: Path, weights: VGGWeights) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n, _, _ in weights.convs]
        for name, w, b in weights.convs:
            g = f.create_group(name).create_group(name)
            g["kernel:0"], g["bias:0"] = w.transpose(2, 3, 1, 0), b  # OIHW -> Keras HWIO


@pytest.fixture()
def cli_setup(tmp_path: Path) -> tuple[Path, Path, str]:
    """A config in tmp_path (engines in tmp_path/engines), small Keras weights, and their sha256."""
    (tmp_path / "config.yaml").write_text("paths:\n  engines_dir: engines\n")
    h5 = tmp_path / "vgg.h5"
    _write_keras_h5(h5, small_weights())
    return tmp_path / "config.yaml", h5, sha256_file(h5)


def test_export_cli_with_delta_writes_a_separate_merged_file(cli_setup: tuple[Path, Path, str]) -> None:
    config, h5, h5_sha = cli_setup
    engines = config.parent / "engines"
    delta = config.parent / "ft.npz"
    d_sha = save_delta(delta, make_delta(base=h5_sha))
    save_atomic(build_model(load_weights(h5), source_sha256=h5_sha), engines / "vgg16_conv5.onnx")
    base_bytes = (engines / "vgg16_conv5.onnx").read_bytes()

    proc = run_cli("--config", str(config), "encoder", "export", "--weights", str(h5), "--delta", str(delta))
    assert proc.returncode == 0, proc.stderr
    merged = engines / f"vgg16_conv5.delta-{d_sha[:12]}.onnx"
    assert f"wrote {merged}" in proc.stdout and "--set encoder.delta=" in proc.stdout
    assert (engines / "vgg16_conv5.onnx").read_bytes() == base_bytes  # the base export is untouched
    model = onnx.load(str(merged))
    assert meta_of(model)["drivecap.delta_sha256"] == d_sha
    want = merge_delta(build_model(load_weights(h5), source_sha256=h5_sha), load_delta(delta), delta)
    for name in (f"{LAYER}/W", f"{LAYER}/b", "block1_conv1/W"):
        np.testing.assert_array_equal(inits(model)[name], inits(want)[name])

    # The knob names the same file, so an export with it finds the merged model up to date.
    again = run_cli(
        "--config", str(config), "--set", f"encoder.delta={delta}", "encoder", "export", "--weights", str(h5)
    )
    assert again.returncode == 0 and f"up to date: {merged}" in again.stdout, again.stderr


@pytest.mark.parametrize("case", ["other base encoder", "corrupted"])
def test_export_cli_bad_delta_is_one_line_error(cli_setup: tuple[Path, Path, str], case: str) -> None:
    config, h5, h5_sha = cli_setup
    delta = config.parent / "ft.npz"
    save_delta(delta, make_delta(base=BASE_SHA if case == "other base encoder" else h5_sha))
    if case == "corrupted":
        _flip_middle(delta)
    proc = run_cli("--config", str(config), "encoder", "export", "--weights", str(h5), "--delta", str(delta))
    line = assert_one_line_error(proc, "ft.npz")
    assert ("train the delta again" if case == "other base encoder" else "corrupted") in line
    assert not list((config.parent / "engines").glob("*.onnx"))
