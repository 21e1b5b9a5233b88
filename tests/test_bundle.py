"""Model bundles: a valid one loads and captions; each kind of broken bundle is a one-line ModelError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from drivecap.config import load_config
from drivecap.decoder.bundle import (
    BUNDLE_JSON,
    CARD,
    VOCAB,
    WEIGHTS,
    _sha256,
    default_bundle_dir,
    load_bundle,
    write_random_bundle,
)
from drivecap.decoder.captioner import Caption, Captioner
from drivecap.errors import ModelError

SHA_A = "a" * 64
SHA_B = "b" * 64


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_random_bundle(tmp_path / "bundle", encoder_sha256=SHA_A, seed=1)


def _rehash(folder: Path) -> None:
    """Makes bundle.json's file hashes agree with the files again (to reach the checks after the hash)."""
    meta = json.loads((folder / BUNDLE_JSON).read_text())
    for name in meta["files"]:
        meta["files"][name] = _sha256(folder / name)
    (folder / BUNDLE_JSON).write_text(json.dumps(meta))


def _one_line_error(folder: Path, encoder_sha256: str = "") -> str:
    with pytest.raises(ModelError) as info:
        load_bundle(folder, encoder_sha256)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_random_bundle_loads_and_captions(bundle: Path) -> None:
    cfg = load_config(None, [f"decoder.bundle={bundle}", "decoder.beam_width=3", "decoder.max_tokens=6"])
    cap = Captioner.load(cfg, encoder_sha256=SHA_A)
    assert cap.beam_width == 3 and cap.max_tokens == 6
    fmap = np.random.default_rng(0).random((512, 7, 7), dtype=np.float32)
    c = cap.caption(fmap)
    assert isinstance(c, Caption)
    assert 0 < len(c.tokens) <= 6
    assert c.text == " ".join(c.tokens)
    assert all(t in cap.bundle.vocab.index for t in c.tokens)


def test_random_bundles_differ_by_seed(tmp_path: Path) -> None:
    a = load_bundle(write_random_bundle(tmp_path / "a", seed=0))
    b = load_bundle(write_random_bundle(tmp_path / "b", seed=1))
    assert not np.array_equal(a.params["W_out"], b.params["W_out"])


def test_missing_folder(tmp_path: Path) -> None:
    assert "does not exist" in _one_line_error(tmp_path / "nope")


@pytest.mark.parametrize("name", [WEIGHTS, VOCAB, CARD, BUNDLE_JSON])
def test_missing_file(bundle: Path, name: str) -> None:
    (bundle / name).unlink()
    assert name in _one_line_error(bundle)


def test_truncated_weights(bundle: Path) -> None:
    data = (bundle / WEIGHTS).read_bytes()
    (bundle / WEIGHTS).write_bytes(data[: len(data) // 2])
    _rehash(bundle)
    msg = _one_line_error(bundle)
    assert "truncated or corrupt" in msg and WEIGHTS in msg


def test_swapped_file_fails_the_hash(bundle: Path, tmp_path: Path) -> None:
    other = write_random_bundle(tmp_path / "other", seed=2)
    shutil.copy(other / WEIGHTS, bundle / WEIGHTS)
    msg = _one_line_error(bundle)
    assert "sha256" in msg and WEIGHTS in msg


def test_vocabulary_weights_size_mismatch(bundle: Path) -> None:
    meta = json.loads((bundle / VOCAB).read_text())
    meta["words"].append("zebra")
    (bundle / VOCAB).write_text(json.dumps(meta))
    _rehash(bundle)
    msg = _one_line_error(bundle)
    assert "vocabulary size" in msg and "!=" in msg


def test_encoder_mismatch_names_both(bundle: Path) -> None:
    msg = _one_line_error(bundle, SHA_B)
    assert SHA_A[:12] in msg and SHA_B[:12] in msg and "drivecap encoder export" in msg


def test_empty_encoder_sha_accepts_any(tmp_path: Path) -> None:
    folder = write_random_bundle(tmp_path / "any", encoder_sha256="")
    assert load_bundle(folder, SHA_B).encoder.onnx_sha256 == ""


def test_not_json(bundle: Path) -> None:
    (bundle / BUNDLE_JSON).write_text("{not json")
    assert "not valid JSON" in _one_line_error(bundle)


def test_default_bundle_is_valid() -> None:
    folder = default_bundle_dir()
    if not (folder / BUNDLE_JSON).is_file():
        pytest.fail(f"the default bundle is not in {folder}")
    b = load_bundle(folder)
    assert b.encoder.onnx_sha256, "the shipped bundle must name its encoder"
    assert len(b.vocab) == b.arch.vocab_size


# ------------------------------------------------------------------------------------ drivecap caption (real encoder)


def _encoder_ready() -> bool:
    from drivecap.config import Config
    from drivecap.encoders.paths import encoder_onnx_path

    return encoder_onnx_path(Config()).is_file()


@pytest.mark.slow
def test_caption_command_on_real_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivecap.assets import AssetStore
    from drivecap.cli import main

    if not _encoder_ready():
        pytest.fail("the encoder ONNX is missing: run `drivecap encoder export` first")
    bundle = write_random_bundle(tmp_path / "b")
    images = AssetStore().test_images()[:2]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    sets = [
        "--set",
        f"decoder.bundle={bundle}",
        "--set",
        "encoder.precision=fp32",
        "--set",
        "encoder.threads=1",
    ]
    code = main([*sets, "caption", str(images[0]), str(bad), str(images[1])])
    out, err = capsys.readouterr()
    assert code == 2  # one file was not an image
    lines = out.strip().splitlines()
    assert [ln.split(":", 1)[0] for ln in lines] == [str(images[0]), str(images[1])]
    assert f"{bad} is not an image" in err and err.count("\n") == 1

    (tmp_path / "empty").mkdir()
    assert main([*sets, "caption", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "has no images" in err and err.count("\n") == 1


@pytest.mark.slow
def test_caption_command_refuses_a_bundle_of_another_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from drivecap.assets import AssetStore
    from drivecap.cli import main

    if not _encoder_ready():
        pytest.fail("the encoder ONNX is missing: run `drivecap encoder export` first")
    bundle = write_random_bundle(tmp_path / "b", encoder_sha256=SHA_B)
    code = main(
        [
            "--set",
            f"decoder.bundle={bundle}",
            "--set",
            "encoder.precision=fp32",
            "caption",
            str(AssetStore().test_images()[0]),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert SHA_B[:12] in err and "drivecap encoder export" in err


@pytest.mark.slow
def test_default_bundle_captions_real_frames_and_their_mirrors() -> None:
    """The shipped decoder on the real encoder: grammatical captions, mirrored frames get mirrored captions."""
    import cv2

    from drivecap.assets import AssetStore
    from drivecap.captions.grammar import VOCABULARY, mirror_caption, parse, render
    from drivecap.encoders.factory import make_encoder

    if not _encoder_ready():
        pytest.fail("the encoder ONNX is missing: run `drivecap encoder export` first")
    cfg = load_config(None, ["encoder.threads=1"])
    with make_encoder(cfg, backend="onnxruntime", precision="fp32") as enc:
        cap = Captioner.load(cfg, encoder_sha256=enc.onnx_sha256)
        grammatical = consistent = 0
        images = AssetStore().test_images()
        for path in images:
            img = cv2.imread(str(path))
            c = cap.caption(enc.encode(img).features)
            m = cap.caption(enc.encode(cv2.flip(img, 1)).features)
            assert c.tokens and set(c.tokens) <= set(VOCABULARY)
            grammatical += render(parse(c.text)) == c.text
            consistent += mirror_caption(c.text) == m.text
    assert grammatical == len(images)
    assert consistent >= len(images) - 2


def test_bundle_with_ensemble_members_round_trips(tmp_path: Path) -> None:
    from drivecap.decoder.bundle import EncoderRef, Pooling, random_params, save_bundle
    from drivecap.decoder.lstm import Arch, LSTMDecoder
    from drivecap.decoder.vocab import Vocab

    vocab = Vocab.build([], extra=["car", "left", "right", "on", "the"])
    arch = Arch("merge", 8, 3, 4, 6, 5, 4, len(vocab))
    ps = [random_params(arch, seed=s, scale=2.0) for s in range(3)]
    save_bundle(tmp_path / "e", arch, ps[0], vocab, EncoderRef(), Pooling(1, 3), "# e\n", members=ps[1:])
    b = load_bundle(tmp_path / "e")
    assert b.meta["decoding"]["members"] == 3 and len(b.members) == 2
    assert set(b.params) == set(arch.shapes())
    np.testing.assert_array_equal(b.members[1]["W_out"], ps[2]["W_out"])
    fmap = np.random.default_rng(0).standard_normal((8, 2, 6)).astype(np.float32)
    cap = Captioner(b, max_tokens=8)
    want = LSTMDecoder(arch, ps[0], vocab.start_id, vocab.end_id, members=ps[1:]).greedy(cap.cells(fmap), 8)
    assert cap.caption(fmap).tokens == tuple(vocab.decode(want.ids))


def test_bundle_without_members_field_is_one_decoder(bundle: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["decoding"].pop("members", None)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    assert load_bundle(bundle).members == []


def test_bundle_claiming_more_members_than_stored(bundle: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["decoding"]["members"] = 2
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="lack array 'm1/"):
        load_bundle(bundle)


def test_shipped_bundle_records_each_fold_beside_its_card() -> None:
    """bundle.json training.folds: each training clip's leave-one-out fact F1, the same as the card's table."""
    import re

    from drivecap.decoder.bundle import default_bundle_dir
    from drivecap.training.pipeline import training_clips

    folder = default_bundle_dir()
    folds = json.loads((folder / "bundle.json").read_text())["training"]["folds"]
    assert sorted(folds) == sorted(training_clips())
    card = (folder / "MODEL_CARD.md").read_text()
    for clip, f1 in folds.items():
        row = re.search(rf"^\| {clip} \| [0-9.]+ \| ([0-9.]+) \|", card, re.M)
        # The card prints three decimals, bundle.json keeps four.
        assert row is not None and abs(float(row.group(1)) - f1) <= 0.0005 + 1e-9, clip


def test_pool_modes_on_a_known_map() -> None:
    """Each cell of a 2x3 grid over a (2, 4, 6) map is a 2x2 block: mean, max, GeM and mean+max of its values."""
    from drivecap.decoder.captioner import pool_cells, pooled_channels

    fmap = np.arange(48, dtype=np.float32).reshape(2, 4, 6)
    block = fmap[:, 2:4, 4:6].reshape(2, -1)  # the bottom-right cell
    avg, mx = pool_cells(fmap, 2, 3, "avg"), pool_cells(fmap, 2, 3, "max")
    gem, both = pool_cells(fmap, 2, 3, "gem3"), pool_cells(fmap, 2, 3, "avgmax")
    assert avg.shape == mx.shape == gem.shape == (6, 2) and both.shape == (6, 4)
    np.testing.assert_allclose(avg[5], block.mean(axis=1))
    np.testing.assert_allclose(mx[5], block.max(axis=1))
    np.testing.assert_allclose(gem[5], np.cbrt((block**3).mean(axis=1)), rtol=1e-6)
    assert np.all(avg < gem) and np.all(gem < mx)  # distinct values: the mean < GeM(3) < the max
    np.testing.assert_allclose(both, np.concatenate([avg, mx], axis=1))
    assert pooled_channels(512, "avgmax") == 1024 and pooled_channels(512, "gem3") == 512


def _pooled_bundle(folder: Path, mode: str, feature_dim: int) -> Path:
    from drivecap.decoder.bundle import EncoderRef, Pooling, random_params, save_bundle
    from drivecap.decoder.lstm import Arch
    from drivecap.decoder.vocab import Vocab

    vocab = Vocab.build([], extra=["car", "left", "right", "on", "the"])
    arch = Arch("merge", feature_dim, 6, 4, 6, 5, 4, len(vocab))
    save_bundle(folder, arch, random_params(arch, seed=0), vocab, EncoderRef(), Pooling(2, 3, mode), "# p\n")
    return folder


def test_avgmax_bundle_reads_maps_of_half_its_width(tmp_path: Path) -> None:
    b = load_bundle(_pooled_bundle(tmp_path / "b", "avgmax", 16))
    assert b.pooling.mode == "avgmax"
    cap = Captioner(b, max_tokens=6)
    fmap = np.random.default_rng(1).random((8, 7, 7), dtype=np.float32)
    assert cap.cells(fmap).shape == (6, 16)
    assert 0 < len(cap.caption(fmap).tokens) <= 6
    with pytest.raises(ModelError, match=r"conv5 maps of 8 channels \(avgmax pooling\)") as info:
        cap.cells(np.zeros((16, 7, 7), np.float32))
    assert "\n" not in str(info.value)


def test_unknown_pool_mode_is_a_one_line_error(tmp_path: Path) -> None:
    folder = _pooled_bundle(tmp_path / "b", "avg", 8)
    meta = json.loads((folder / BUNDLE_JSON).read_text())
    assert meta["pooling"]["mode"] == "avg"
    meta["pooling"]["mode"] = "median"
    (folder / BUNDLE_JSON).write_text(json.dumps(meta))
    msg = _one_line_error(folder)
    assert "'median'" in msg and "avgmax" in msg and str(folder / BUNDLE_JSON) in msg


def test_bundle_without_pool_mode_is_average_pooled(bundle: Path) -> None:
    meta = json.loads((bundle / BUNDLE_JSON).read_text())
    meta["pooling"].pop("mode", None)
    (bundle / BUNDLE_JSON).write_text(json.dumps(meta))
    assert load_bundle(bundle).pooling.mode == "avg"
