"""Training on made-up features: the decoder learns a spatial rule, exports, and numpy agrees with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from drivecap.captions.facts import Facts, SceneObject
from drivecap.captions.grammar import mirror_caption, render
from drivecap.decoder.bundle import EncoderRef, Pooling, load_bundle, save_bundle
from drivecap.decoder.captioner import Captioner
from drivecap.training.baseline import FactBaseline
from drivecap.training.data import Sample, Split, load_split
from drivecap.training.evaluate import val_scorer
from drivecap.training.features import ClipFeatures, _save
from drivecap.training.pipeline import caption_vocab
from drivecap.training.train import TrainSettings, decode_split, fit

D = 16


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, Facts]:
    """A 3x... map whose left / right columns light channel 0 when a car is there; channel 1 = close."""
    fmap = rng.random((D, 3, 7)).astype(np.float32) * 0.3
    objs = []
    for place, cols in (("left", slice(0, 2)), ("right", slice(5, 7))):
        if rng.random() < 0.5:
            close = rng.random() < 0.4
            fmap[0, :, cols] += 2.0
            if close:
                fmap[1, :, cols] += 2.0
            objs.append(SceneObject("car", place, "close" if close else "far"))
    return fmap, Facts(tuple(objs))


def _split(n: int, seed: int, clip: str, grid: tuple[int, int] = (1, 3)) -> Split:
    """Frames and their mirrors (map flipped, caption mirrored), like the real data, pooled to ``grid`` cells."""
    rng = np.random.default_rng(seed)
    samples, cells = [], []
    for i in range(n):
        fmap, facts = _scene(rng)
        for mirrored, m, f in ((False, fmap, facts), (True, fmap[:, :, ::-1], facts.mirrored())):
            samples.append(Sample(clip, i, mirrored, render(f), f.to_json(), "train"))
            cells.append(_cells(m, *grid))
    return Split(samples, np.stack(cells))


def _cells(fmap: np.ndarray, rows: int = 1, cols: int = 3) -> np.ndarray:
    from drivecap.decoder.captioner import pool_cells

    return pool_cells(np.ascontiguousarray(fmap), rows, cols)


def small_settings(max_epochs: int, **kw: object) -> TrainSettings:
    """A decoder small enough to learn the made-up scenes in seconds (no early stop before max_epochs)."""
    base: dict[str, object] = {"embed_dim": 16, "hidden_dim": 32, "image_dim": 32, "dropout": 0.1, "lr": 5e-3}
    return TrainSettings(**{**base, **kw, "max_epochs": max_epochs, "patience": max_epochs})  # type: ignore[arg-type]


def test_decoder_learns_sides_and_exports(tmp_path: Path) -> None:
    train, val = _split(300, 0, "a"), _split(60, 1, "b")
    vocab = caption_vocab()
    s = small_settings(kind="merge", rows=1, cols=3, max_epochs=15)
    model, hist = fit(train, val, vocab, s, val_scorer)
    first, best = hist.epochs[0], hist.epochs[hist.best_epoch]
    assert best["val_fact_f1"] > 0.85 and best["val_fact_f1"] > first["val_fact_f1"] + 0.2
    assert best["val_flip"] > 0.7

    save_bundle(tmp_path / "b", model.arch, model.export(), vocab, EncoderRef(), Pooling(1, 3), "# t\n")
    cap = Captioner(load_bundle(tmp_path / "b"), beam_width=1, max_tokens=17)
    torch_caps = decode_split(model, val.cells, vocab, 17)
    numpy_caps = [cap.caption_cells(c).text for c in val.cells]
    assert numpy_caps == torch_caps
    # The mirrored frames get the mirrored caption (what flip consistency measures on real frames).
    pairs = list(zip(numpy_caps[0::2], numpy_caps[1::2], strict=True))
    assert sum(mirror_caption(a) == b for a, b in pairs) >= 0.7 * len(pairs)


def test_fact_baseline_learns_the_keys() -> None:
    train, val = _split(300, 2, "a"), _split(60, 3, "b")
    base = FactBaseline()
    base.fit(train.cells, [Facts.from_json(x.facts) for x in train.samples])
    got = base.predict_keys(val.cells)
    want = [Facts.from_json(x.facts).keys for x in val.samples]
    assert sum(g == w for g, w in zip(got, want, strict=True)) >= 0.9 * len(want)
    assert all(not k.startswith("person") for keys in got for k in keys), (
        "never-seen keys are never predicted"
    )
    # Mirror view: each frame read with its mirror's cells; swapping the two gives exactly the mirrored keys.
    from drivecap.captions.facts import mirror_key

    other = val.counterparts()
    assert (other >= 0).all() and (other[other] == np.arange(len(val))).all()
    noisy = val.cells[other] + np.random.default_rng(0).normal(0, 0.1, val.cells.shape).astype(np.float32)
    a = base.predict_keys(val.cells, noisy)
    b = base.predict_keys(noisy, val.cells)
    assert all(kb == {mirror_key(k) for k in ka} for ka, kb in zip(a, b, strict=True))
    assert sum(g == w for g, w in zip(a, want, strict=True)) >= 0.8 * len(want)


def test_load_split_joins_labels_and_features(tmp_path: Path) -> None:
    home, folder = tmp_path, tmp_path / "features" / "abc"
    rng = np.random.default_rng(0)
    frames = np.array([0, 2, 4])
    fmap = rng.random((3, 8, 7, 7)).astype(np.float16)
    _save(folder, ClipFeatures("c", frames, fmap, fmap[:, :, :, ::-1].copy()), {})
    recs = []
    for fr in range(5):  # frames 1 and 3 have labels but no features: skipped
        for mirrored in (False, True):
            place = "right" if mirrored else "left"
            recs.append(
                {
                    "clip": "c",
                    "frame": fr,
                    "split": "train",
                    "mirrored": mirrored,
                    "facts": {"objects": [{"kind": "car", "place": place}]},
                    "caption": f"car on the {place}",
                }
            )
    (home / "labels").mkdir()
    (home / "labels" / "c.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    split = load_split(home, folder, ["c"], 1, 3)
    assert [(s.frame, s.mirrored) for s in split.samples] == [
        (f, m) for f in (0, 2, 4) for m in (False, True)
    ]
    i = 3  # frame 2, mirrored
    want = _cells(fmap[1, :, :, ::-1].astype(np.float32))
    np.testing.assert_allclose(split.cells[i], want, rtol=1e-6)
    assert split.samples[i].caption == "car on the right"
    # The stride, not the cache's contents, picks the frames.
    assert [s.frame for s in load_split(home, folder, ["c"], 1, 3, stride=4).samples] == [0, 0, 4, 4]


def test_token_weights_lift_rare_tokens_only() -> None:
    import torch

    from drivecap.training.train import encode_captions, token_weights

    vocab = caption_vocab()
    caps = ["car on the left"] * 30 + ["car on the left , road curves right"] * 3
    ids = encode_captions(vocab, caps, 16)
    assert token_weights(vocab, ids, 0.0, 4.0) is None
    w = token_weights(vocab, ids, 0.5, 4.0)
    assert w is not None
    idx = vocab.index
    assert float(w[idx["car"]]) == pytest.approx(1.0)
    # "road" is 11x rarer than the median target token (33 of "car", "on", ..., <end>): weight sqrt(11) ~ 3.3,
    # under the cap of 4; a word never in the targets keeps 1.
    assert float(w[idx["road"]]) == pytest.approx(11**0.5, rel=1e-4)
    assert float(w[idx["bus"]]) == 1.0
    capped = token_weights(vocab, ids, 1.0, 4.0)
    assert capped is not None and float(capped[idx["road"]]) == pytest.approx(4.0)
    assert torch.all(w >= 1.0)


def test_fixed_epoch_training_repeats_the_cross_validated_run() -> None:
    """The final model (trained for the chosen epoch count) equals the snapshot cross-validation scored."""
    from drivecap.training.train import train_fixed

    train = _split(40, 5, "a")
    vocab = caption_vocab()
    s = TrainSettings(rows=1, cols=3, embed_dim=8, hidden_dim=12, image_dim=8, max_epochs=4, aux_weight=0.5)
    snaps: dict[int, dict[str, np.ndarray]] = {}
    train_fixed(train, vocab, s, 4, lambda e, m: snaps.__setitem__(e + 1, m.export()))
    again = train_fixed(train, vocab, s, 2).export()
    assert set(snaps) == {1, 2, 3, 4}
    for k, v in again.items():
        np.testing.assert_array_equal(v, snaps[2][k])
    assert not np.array_equal(snaps[2]["W_out"], snaps[4]["W_out"])


def test_street_repeat_oversamples_the_street_views_only() -> None:
    """``street_repeat`` trains on the street film's views that many times over: other clips once each, and the
    feature statistics the model normalises with are those of the repeated set."""
    from drivecap.training.train import train_fixed

    data = _split(20, 6, "a").concat(_split(10, 7, "street"))
    rep = data.repeat_clip("street", 3)
    by_clip = {c: sum(x.clip == c for x in rep.samples) for c in ("a", "street")}
    assert by_clip == {"a": 40, "street": 60} and len(data.repeat_clip("street", 1)) == len(data)
    with pytest.raises(ValueError, match="repeat count"):
        data.repeat_clip("street", 0)
    vocab = caption_vocab()
    s = TrainSettings(rows=1, cols=3, embed_dim=8, hidden_dim=12, image_dim=8, max_epochs=1, street_repeat=3)
    model = train_fixed(data, vocab, s, 1)

    def channel_mean(x: Split) -> np.ndarray:
        return x.cells.reshape(-1, x.cells.shape[-1]).mean(axis=0)

    np.testing.assert_allclose(model.feat_mean.numpy(), channel_mean(rep), rtol=1e-5, atol=1e-6)
    assert not np.allclose(channel_mean(rep), channel_mean(data), atol=1e-3)


def test_cross_validation_leaves_each_clip_out_and_picks_the_best_mean() -> None:
    from drivecap.training.crossval import best_choice, cross_validate

    a, b = _split(30, 6, "a"), _split(30, 7, "b")
    data = a.concat(b)
    data.flipped = np.concatenate([a.cells[:, ::-1], b.cells[:, ::-1]])
    vocab = caption_vocab()
    s = TrainSettings(rows=1, cols=3, embed_dim=8, hidden_dim=12, image_dim=8, max_epochs=2)
    cv = cross_validate(data, vocab, s, seeds=(0, 1), check_epochs=[1, 2])
    assert set(cv["folds"]) == {"a", "b"}
    assert set(cv["mean"]) == {"1", "2"} and set(cv["mean"]["1"]) == {1, 2}
    m = cv["mean"]["2"][1]["score"]
    assert m == pytest.approx((cv["folds"]["a"]["2"][1]["score"] + cv["folds"]["b"]["2"][1]["score"]) / 2)
    k, e, score = best_choice(cv)
    assert score == max(r["score"] for by in cv["mean"].values() for r in by.values())
    assert cv["mean"][str(k)][e]["score"] == score
    # With a flip floor: the best fact F1 among the choices that keep flip consistency above the floor.
    flips = sorted(r["val_flip"] for by in cv["mean"].values() for r in by.values())
    floor = flips[len(flips) // 2]
    k, e, f1 = best_choice(cv, min_flip=floor)
    ok = [r for by in cv["mean"].values() for r in by.values() if r["val_flip"] >= floor]
    assert f1 == max(r["val_fact_f1"] for r in ok) and cv["mean"][str(k)][e]["val_flip"] >= floor
    # Nothing qualifies: the most flip-consistent choice.
    k, e, flip = best_choice(cv, min_flip=2.0)
    assert flip == flips[-1]

    from drivecap.training.card import HELDOUT_BEGIN, loco_model_card

    report = {
        "extraction": {
            "encoder_sha256": "ab" * 32,
            "preprocess": "caffe",
            "input": [224, 224],
            "encoded_frames": 0,
            "seconds": 0.0,
        },
        "command": "drivecap train",
        "train_clips": ["a", "b"],
        "train_samples": len(data),
        "train_seconds": 1.0,
        "cv_seconds": 1.0,
        "final_seconds": 0.0,
        "cv_rule": {"min_mean_flip": floor},
        "cv_baseline": {"mean": cv["mean"]["1"][1]},
        "cv": {"merge2x3": cv},
        "chosen": {"candidate": "merge2x3", "members": k, "epochs": e, "score": flip},
    }
    card = loco_model_card(report, {"kind": "merge"})
    assert f"**merge2x3**, {k} decoder(s) averaged, {e} epoch(s)" in card and HELDOUT_BEGIN in card
    assert "| a |" in card and "| b |" in card


def test_heldout_evaluation_with_the_mirror_view(tmp_path: Path) -> None:
    """evaluate_heldout decodes each frame with its mirror's cells: flip consistency is then 1 whatever the
    decoder; the frame-alone figures sit beside it, and the Markdown tables keep one cell per column."""
    import torch

    from drivecap.commands.eval import heldout_markdown
    from drivecap.training.evaluate import evaluate_baseline, evaluate_heldout
    from drivecap.training.model import CaptionModel

    vocab = caption_vocab()
    split = _split(40, 8, "h")
    # The encoder's map of a mirrored frame is not exactly the flipped map: add noise to the mirror views.
    rng = np.random.default_rng(1)
    split.cells[1::2] += rng.normal(0, 0.8, split.cells[1::2].shape).astype(np.float32)
    split.flipped = np.ascontiguousarray(split.cells[:, ::-1])
    torch.manual_seed(0)
    s = TrainSettings(rows=1, cols=3, embed_dim=8, hidden_dim=12, image_dim=8)
    model = CaptionModel(s.arch(len(vocab), D)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
        model.out.bias[vocab.index["left"]] += 3.0
        model.out.bias[vocab.index["right"]] += 3.0
    save_bundle(
        tmp_path / "b",
        model.arch,
        model.export(),
        vocab,
        EncoderRef(),
        Pooling(1, 3),
        "# t\n",
        flip_ensemble=True,
    )
    cap = Captioner(load_bundle(tmp_path / "b"), max_tokens=10)
    r = evaluate_heldout(cap, split, beam_width=2, mirror_view=True)
    assert r["frames"] == 40 and r["mirror_view"] is True
    assert r["flip_frames"] > 0 and r["flip_consistency"] == 1.0
    assert r["beam"]["flip_consistency"] == 1.0
    assert r["single_view"]["mirror_view"] is False
    assert r["single_view"]["flip_consistency"] < 1.0, (
        "the noisy mirror views should break the frame-alone view"
    )
    base = FactBaseline()
    base.fit(split.cells, [Facts.from_json(x.facts) for x in split.samples])
    r["baseline"] = evaluate_baseline(base, split)
    assert r["baseline"]["mirror_view"]["flip_consistency_facts"] in (None, 1.0)
    r["clips"] = ["h"]
    md = heldout_markdown(r)
    assert "frame alone" in md and "baseline (mirror view)" in md
    for table in md.split("\n\n"):
        rows = [ln for ln in table.splitlines() if ln.startswith("|")]
        if rows:
            assert len({ln.count("|") for ln in rows}) == 1, table


def test_feature_cache_is_keyed_by_input_size(tmp_path: Path) -> None:
    """Maps of a 224x384 input must never be read as (or merged into) the 224x224 cache."""
    from drivecap.training.features import features_dir

    sha = "ab" * 32
    square, frame_shaped = features_dir(tmp_path, sha, 224, 224), features_dir(tmp_path, sha, 224, 384)
    assert square != frame_shaped and square.parent == frame_shaped.parent == tmp_path / "features"
    assert features_dir(tmp_path, "cd" * 32, 224, 224) != square


def test_attention_over_the_full_grid_learns_sides_and_reads_the_cache_grid(tmp_path: Path) -> None:
    """The 'attention-grid' candidate: every cell of the cached map, its grid read from the cache."""
    from drivecap.training.features import map_grid

    rng = np.random.default_rng(0)
    fmap = rng.random((2, 4, 3, 7)).astype(np.float16)
    _save(tmp_path / "f", ClipFeatures("c", np.array([0, 1]), fmap, fmap.copy()), {})
    assert map_grid(tmp_path / "f", ["missing", "c"]) == (3, 7)

    train, val = _split(300, 0, "a", (3, 7)), _split(60, 1, "b", (3, 7))
    assert train.cells.shape[1:] == (21, D)
    s = small_settings(kind="attention", rows=3, cols=7, attention_dim=16, max_epochs=12)
    model, hist = fit(train, val, caption_vocab(), s, val_scorer)
    assert hist.epochs[hist.best_epoch]["val_fact_f1"] > 0.8
    save_bundle(
        tmp_path / "b", model.arch, model.export(), caption_vocab(), EncoderRef(), Pooling(3, 7), "# t\n"
    )
    cap = Captioner(load_bundle(tmp_path / "b"), beam_width=1, max_tokens=17)
    assert [cap.caption_cells(c).text for c in val.cells[:20]] == decode_split(
        model, val.cells[:20], caption_vocab(), 17
    )


def test_copy_paste_cache_is_keyed_by_the_labels(tmp_path: Path) -> None:
    """Two homes sharing a feature folder but labelled by different teachers never share copy-paste frames."""
    from drivecap.training.augment_data import augmented_path, labels_tag

    a, b = tmp_path / "a", tmp_path / "b"
    for home, caption in ((a, "car on the left"), (b, "car close ahead")):
        (home / "labels").mkdir(parents=True)
        (home / "labels" / "challenge02.jsonl").write_text(json.dumps({"caption": caption}) + "\n")
    folder = tmp_path / "features"
    pa = augmented_path(folder, ["challenge02"], 10, 0, labels_tag(a, ["challenge02"]))
    pb = augmented_path(folder, ["challenge02"], 10, 0, labels_tag(b, ["challenge02"]))
    assert pa != pb and pa.parent == pb.parent == folder
    # the same labels in another home give the same file; another clip's labels do not enter the tag
    (b / "labels" / "challenge02.jsonl").write_text((a / "labels" / "challenge02.jsonl").read_text())
    (b / "labels" / "street.jsonl").write_text("{}\n")
    assert labels_tag(a, ["challenge02"]) == labels_tag(b, ["challenge02"])


def test_fold_scores_say_the_object_and_ahead_keys_apart_from_the_road() -> None:
    from drivecap.training.crossval import fold_scores

    refs = ["car on the left , road curves left", "person close ahead"]
    samples = [Sample("c", i, False, r, {}, "train") for i, r in enumerate(refs)]
    split = Split(samples, np.zeros((2, 6, 4), np.float32))
    v = fold_scores(["car on the left", "person ahead"], split)
    # Object keys: vehicle:left and person:ahead found, person:ahead:close missed -> 2 * 2 / (4 + 0 + 1).
    assert v["val_object_f1"] == pytest.approx(0.8)
    assert v["val_ahead_f1"] == pytest.approx(2 / 3)  # person:ahead found, person:ahead:close missed
    assert v["val_road_f1"] == 0.0 and v["val_road_support"] == 1.0
    assert v["val_fact_f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))  # the road key counts here
