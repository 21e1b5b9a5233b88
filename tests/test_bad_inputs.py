"""Bad configurations and bad model files through the real command line: each is one ``drivecap: error:``
line that names the problem, exit code 2, no traceback.

tests/test_config.py checks ``load_config`` itself; here the same kinds of mistakes (and options that
contradict each other) go through ``drivecap replay`` / ``drivecap run`` as a user would make them, and
caption bundles and encoder ONNX files are broken on disk in the ways they break in real life: missing,
truncated, the wrong shapes, swapped files (wrong sha256).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.config import Config
from drivecap.encoders.export import INPUT_NAME

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, assert_one_line_error, run_cli

FAST = ["--set", "encoder.precision=int8", "--set", "encoder.warmup_runs=0", "--set", "speech.backend=none"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, store: AssetStore) -> Path:
    """Six real frames of a training drive, small: the bad inputs are found before or at the first frame."""
    path = tmp_path_factory.mktemp("clip") / "drive.mp4"
    cap = cv2.VideoCapture(str(store.clip("project_video02")))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (320, 180))
    for _ in range(6):
        ok, img = cap.read()
        assert ok
        w.write(cv2.resize(img, (320, 180), interpolation=cv2.INTER_AREA))
    w.release()
    cap.release()
    return path


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from drivecap.decoder.bundle import write_random_bundle

    return write_random_bundle(tmp_path_factory.mktemp("bundles") / "good", seed=5)


# --------------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class BadConfig:
    id: str
    yaml: str | None  # a config file's text (None: the repository's config.yaml)
    sets: tuple[str, ...]  # --set overrides
    command: tuple[str, ...]  # after the global options; {clip} and {out} are filled in
    needles: tuple[str, ...]  # the error line names these


REPLAY = ("replay", "{clip}", "--out", "{out}", "--no-progress")

BAD_CONFIGS = [
    BadConfig("unknown-top-key", "colour: red\n", (), REPLAY, ("unknown key 'colour'",)),
    BadConfig("unknown-nested-key", "gate:\n  threshold: 0.2\n", (), REPLAY, ("'gate.threshold'",)),
    BadConfig("unknown-key-by-set", None, ("encoder.turbo=true",), REPLAY, ("'encoder.turbo'",)),
    BadConfig(
        "wrong-type-number", "gate:\n  open_threshold: high\n", (), REPLAY, ("gate.open_threshold", "number")
    ),
    BadConfig("wrong-type-bool", "output:\n  video: 'yes'\n", (), REPLAY, ("output.video", "true or false")),
    BadConfig("wrong-type-int", None, ("decoder.beam_width=2.5",), REPLAY, ("decoder.beam_width", "integer")),
    BadConfig(
        "wrong-type-list", "calibration:\n  clips: street\n", (), REPLAY, ("calibration.clips", "list")
    ),
    BadConfig(
        "out-of-range-high", None, ("gate.open_threshold=5",), REPLAY, ("gate.open_threshold", "range")
    ),
    BadConfig(
        "out-of-range-low", None, ("encoder.input_height=16",), REPLAY, ("encoder.input_height", "range")
    ),
    BadConfig(
        "not-a-finite-number", None, ("gate.min_interval_s=.nan",), REPLAY, ("gate.min_interval_s", "finite")
    ),
    BadConfig("not-a-choice", None, ("encoder.backend=cuda",), REPLAY, ("encoder.backend", "onnxruntime")),
    BadConfig(
        "not-multiple-of-32", None, ("encoder.input_width=250",), REPLAY, ("encoder.input_width=250", "32")
    ),
    BadConfig("section-not-a-mapping", "gate: 3\n", (), REPLAY, ("gate", "mapping")),
    BadConfig("file-not-a-mapping", "- a\n- b\n", (), REPLAY, ("config", "mapping")),
    BadConfig("not-yaml", "gate: [0.1,\n  open: 2\n", (), REPLAY, ("not valid YAML", "line")),
    BadConfig("set-without-equals", None, ("gate.open_threshold",), REPLAY, ("KEY=VALUE",)),
    # Options that contradict each other
    BadConfig(
        "close-above-open",
        None,
        ("gate.open_threshold=0.1", "gate.close_threshold=0.3"),
        REPLAY,
        ("gate.close_threshold=0.3", "open_threshold"),
    ),
    BadConfig(
        "backoff-max-below-initial",
        None,
        ("capture.reconnect_initial_s=4", "capture.reconnect_max_s=1"),
        REPLAY,
        ("capture.reconnect_max_s=1.0", "reconnect_initial_s"),
    ),
    BadConfig(
        "fp16-on-onnxruntime",
        None,
        ("encoder.backend=onnxruntime", "encoder.precision=fp16"),
        REPLAY,
        ("fp16", "tensorrt"),
    ),
    BadConfig(
        "calibrate-on-held-out-clip",
        "calibration:\n  clips: [project_video02, project_video01]\n",
        (),
        REPLAY,
        ("project_video01", "held-out"),
    ),
    BadConfig("stride-zero", None, (), (*REPLAY, "--stride", "0"), ("--stride 0",)),
    BadConfig(
        "replay-a-live-source",
        None,
        (),
        ("replay", "rtsp://127.0.0.1:9/cam", "--out", "{out}"),
        ("live source",),
    ),
    BadConfig(
        "wav-speech-without-out", None, (), ("run", "--source", "{clip}", "--speech", "wav"), ("wav", "--out")
    ),
    BadConfig(
        "unsupported-scheme",
        None,
        (),
        ("run", "--source", "ftp://127.0.0.1/cam"),
        ("ftp://", "not supported"),
    ),
    BadConfig("max-frames-zero", None, (), (*REPLAY, "--max-frames", "0"), ("--max-frames 0",)),
    BadConfig(
        "negative-max-seconds",
        None,
        (),
        ("run", "--source", "{clip}", "--max-seconds", "-5"),
        ("--max-seconds -5.0", "positive"),
    ),
    BadConfig("missing-config-file", None, (), REPLAY, ("does not exist", "--config")),
    BadConfig(
        "missing-bundle", None, ("decoder.bundle=/nonexistent/bundle",), REPLAY, ("/nonexistent/bundle",)
    ),
]


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c.id for c in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_2(case: BadConfig, clip: Path, tmp_path: Path, real_cfg: Config) -> None:
    args: list[str] = []
    if case.id == "missing-config-file":
        args += ["--config", str(tmp_path / "nope.yaml")]
    elif case.yaml is not None:
        cfg_file = tmp_path / "bad.yaml"
        # Relative paths in a config file resolve against its folder: keep the repository's engines.
        prefix = "" if case.yaml.startswith("- ") else f"paths:\n  engines_dir: {REPO / 'engines'}\n"
        cfg_file.write_text(prefix + case.yaml)
        args += ["--config", str(cfg_file)]
    else:
        args += ["--config", str(REPO / "config.yaml")]
    args += FAST
    for s in case.sets:
        args += ["--set", s]
    out = tmp_path / "out"
    args += [a.format(clip=clip, out=out) for a in case.command]
    proc = run_cli(*args)
    line = assert_one_line_error(proc, *case.needles)
    assert len(line) < 400, line
    assert not (out / "drive.mp4").exists(), "nothing is written for a run that cannot start"


def test_there_are_at_least_fifteen_bad_configs() -> None:
    assert len(BAD_CONFIGS) >= 15 and len({c.id for c in BAD_CONFIGS}) == len(BAD_CONFIGS)


# --------------------------------------------------------------------------------------------- bundles


def _rewrite_npz(folder: Path, change: Callable[[dict[str, np.ndarray]], None]) -> None:
    with np.load(folder / "decoder.npz", allow_pickle=False) as z:
        arrays = {k: np.array(z[k]) for k in z.files}
    change(arrays)
    with open(folder / "decoder.npz", "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle


def _rehash(folder: Path) -> None:
    """Makes bundle.json's sha256 sums match the (broken) files again, as a careless re-export would."""
    from drivecap.decoder.bundle import _sha256

    meta = json.loads((folder / "bundle.json").read_text())
    meta["files"] = {n: _sha256(folder / n) for n in ("decoder.npz", "vocab.json")}
    (folder / "bundle.json").write_text(json.dumps(meta))


def _bundle_missing_json(b: Path) -> None:
    (b / "bundle.json").unlink()


def _bundle_truncated_json(b: Path) -> None:
    text = (b / "bundle.json").read_text()
    (b / "bundle.json").write_text(text[: len(text) // 2])


def _bundle_missing_weights(b: Path) -> None:
    (b / "decoder.npz").unlink()


def _bundle_truncated_weights(b: Path) -> None:
    data = (b / "decoder.npz").read_bytes()
    (b / "decoder.npz").write_bytes(data[: len(data) // 2])


def _bundle_wrong_shape(b: Path) -> None:
    def change(a: dict[str, np.ndarray]) -> None:
        a["W_out"] = np.zeros((a["W_out"].shape[0], a["W_out"].shape[1] + 3), np.float32)

    _rewrite_npz(b, change)
    _rehash(b)


def _bundle_nan_weights(b: Path) -> None:
    def change(a: dict[str, np.ndarray]) -> None:
        a["b_out"] = a["b_out"].copy()
        a["b_out"][0] = np.nan

    _rewrite_npz(b, change)
    _rehash(b)


def _bundle_swapped_weights(b: Path) -> None:
    # Same names and shapes, other values: only the sha256 tells.
    _rewrite_npz(b, lambda a: a.update(W_out=a["W_out"] * 1.01))


def _bundle_vocab_size(b: Path) -> None:
    vocab = json.loads((b / "vocab.json").read_text())
    words = vocab["words"] if isinstance(vocab, dict) and "words" in vocab else None
    if words is None:
        pytest.fail(f"unexpected vocab.json layout: {list(vocab)[:5]}")
    words.append("zebra")
    (b / "vocab.json").write_text(json.dumps(vocab))
    _rehash(b)


def _bundle_other_encoder(b: Path) -> None:
    meta = json.loads((b / "bundle.json").read_text())
    meta["encoder"]["onnx_sha256"] = "ab" * 32
    (b / "bundle.json").write_text(json.dumps(meta))


def _bundle_other_input_size(b: Path) -> None:
    # A decoder trained on frame-shaped 224x384 input reads 7x12 maps; pooled to its cells they look valid.
    meta = json.loads((b / "bundle.json").read_text())
    meta["encoder"]["input_width"] = 384
    (b / "bundle.json").write_text(json.dumps(meta))


def _bundle_future_format(b: Path) -> None:
    meta = json.loads((b / "bundle.json").read_text())
    meta["format_version"] = 99
    (b / "bundle.json").write_text(json.dumps(meta))


BAD_BUNDLES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("missing-bundle-json", _bundle_missing_json, ("bundle.json", "not a drivecap caption bundle")),
    ("truncated-bundle-json", _bundle_truncated_json, ("bundle.json", "not valid JSON")),
    ("missing-weights", _bundle_missing_weights, ("missing decoder.npz",)),
    ("truncated-weights", _bundle_truncated_weights, ("decoder.npz", "truncated or corrupt")),
    ("wrong-shape", _bundle_wrong_shape, ("W_out has shape",)),
    ("nan-weights", _bundle_nan_weights, ("NaN",)),
    ("wrong-hash", _bundle_swapped_weights, ("decoder.npz", "sha256")),
    ("vocab-size-mismatch", _bundle_vocab_size, ("vocabulary size",)),
    ("other-encoder", _bundle_other_encoder, ("trained on encoder abababababab",)),
    ("future-format", _bundle_future_format, ("format_version 99",)),
    ("other-input-size", _bundle_other_input_size, ("224x384 encoder input", "encoder.input_height")),
]


@pytest.mark.parametrize(
    ("breaker", "needles"), [b[1:] for b in BAD_BUNDLES], ids=[b[0] for b in BAD_BUNDLES]
)
def test_bad_caption_bundle_is_one_line_exit_2(
    breaker: Callable[[Path], None],
    needles: tuple[str, ...],
    good_bundle: Path,
    clip: Path,
    tmp_path: Path,
    real_cfg: Config,
) -> None:
    b = tmp_path / "bundle"
    shutil.copytree(good_bundle, b)
    breaker(b)
    proc = run_cli(
        "--config",
        str(REPO / "config.yaml"),
        *FAST,
        "--set",
        f"decoder.bundle={b}",
        "replay",
        str(clip),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    )
    assert_one_line_error(proc, *needles)


# --------------------------------------------------------------------------------------------- encoder ONNX


def _tiny_onnx(
    path: Path, input_name: str, shape: list[int | str], pool: int | None, meta: bool = True
) -> Path:
    """A small real ONNX graph: an average pool over the input (or an identity), with drivecap metadata."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("features", TensorProto.FLOAT, None)
    if pool:
        node = helper.make_node(
            "AveragePool", [input_name], ["features"], kernel_shape=[pool, pool], strides=[pool, pool]
        )
    else:
        node = helper.make_node("Identity", [input_name], ["features"])
    model = helper.make_model(
        helper.make_graph([node], "wrong", [inp], [out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, {"drivecap.preprocess": "caffe"})
    onnx.save(model, str(path))
    return path


def _onnx_missing(d: Path, real: Path) -> Path:
    return d / "vgg16_conv5.onnx"


def _onnx_truncated(d: Path, real: Path) -> Path:
    p = d / "truncated.onnx"
    with open(real, "rb") as f:
        p.write_bytes(f.read(3_000_000))  # a download or copy interrupted inside the weights
    return p


def _onnx_not_onnx(d: Path, real: Path) -> Path:
    p = d / "notes.onnx"
    p.write_text("this was supposed to be a model\n")
    return p


def _onnx_wrong_input(d: Path, real: Path) -> Path:
    return _tiny_onnx(d / "wrong_input.onnx", "x", [1, 10], None)


def _onnx_wrong_output(d: Path, real: Path) -> Path:
    # Accepts frames, but gives 3 feature channels where the decoder reads 512.
    return _tiny_onnx(d / "wrong_output.onnx", INPUT_NAME, ["N", 3, "H", "W"], 32)


def _onnx_no_metadata(d: Path, real: Path) -> Path:
    return _tiny_onnx(d / "plain.onnx", INPUT_NAME, ["N", 3, "H", "W"], 32, meta=False)


BAD_ONNX: list[tuple[str, Callable[[Path, Path], Path], tuple[str, ...]]] = [
    ("missing", _onnx_missing, ("does not exist", "drivecap encoder export")),
    ("truncated", _onnx_truncated, ("truncated.onnx", "corrupt or truncated")),
    ("not-onnx", _onnx_not_onnx, ("notes.onnx",)),
    ("wrong-input-shape", _onnx_wrong_input, ("wrong_input.onnx", "[N, 3, H, W]")),
    ("wrong-output-shape", _onnx_wrong_output, ("512",)),
    ("no-preprocessing-metadata", _onnx_no_metadata, ("plain.onnx", "preprocessing metadata")),
]


@pytest.mark.parametrize(("make", "needles"), [b[1:] for b in BAD_ONNX], ids=[b[0] for b in BAD_ONNX])
def test_bad_encoder_onnx_is_one_line_exit_2(
    make: Callable[[Path, Path], Path],
    needles: tuple[str, ...],
    good_bundle: Path,
    clip: Path,
    tmp_path: Path,
    real_cfg: Config,
) -> None:
    onnx_path = make(tmp_path, real_cfg.engines_dir / "vgg16_conv5.onnx")
    proc = run_cli(
        "--config",
        str(REPO / "config.yaml"),
        "--set",
        "encoder.backend=onnxruntime",
        "--set",
        "encoder.precision=fp32",
        "--set",
        "encoder.warmup_runs=0",
        "--set",
        "speech.backend=none",
        "--set",
        f"encoder.onnx={onnx_path}",
        "--set",
        f"decoder.bundle={good_bundle}",
        "replay",
        str(clip),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    )
    assert_one_line_error(proc, *needles)


def test_int8_model_made_from_another_encoder_is_one_line_exit_2(
    good_bundle: Path, clip: Path, tmp_path: Path, real_cfg: Config
) -> None:
    # An engines folder whose INT8 file is real but whose fp32 file was swapped for another model.
    engines = tmp_path / "engines"
    engines.mkdir()
    shutil.copy(real_cfg.engines_dir / "vgg16_conv5.int8.onnx", engines / "vgg16_conv5.int8.onnx")
    _tiny_onnx(engines / "vgg16_conv5.onnx", INPUT_NAME, ["N", 3, "H", "W"], 32)
    proc = run_cli(
        "--config",
        str(REPO / "config.yaml"),
        *FAST,
        "--set",
        f"paths.engines_dir={engines}",
        "--set",
        f"decoder.bundle={good_bundle}",
        "replay",
        str(clip),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    )
    assert_one_line_error(proc, "another fp32 model", "drivecap calibrate")
