"""Training on made-up features: the decoder learns a spatial rule, exports, and numpy agrees with torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from drivecap.captions.facts import Facts, SceneObject
from drivecap.captions.grammar import mirror_caption, render
from drivecap.decoder import Captioner
from drivecap.decoder.bundle import EncoderRef, Pooling, load_bundle, save_bundle
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


def _split(n: int, seed: int, clip: str) -> Split:
    """Frames and their mirrors (map flipped, caption mirrored), like the real data."""
    rng = np.random.default_rng(seed)
    samples, cells = [], []
    for i in range(n):
        fmap, facts = _scene(rng)
        for mirrored, m, f in ((False, fmap, facts), (True, fmap[:, :, ::-1], facts.mirrored())):
            samples.append(Sample(clip, i, mirrored, render(f), f.to_json(), "train"))
            cells.append(_cells(m))
    return Split(samples, np.stack(cells))


def _cells(fmap: np.ndarray) -> np.ndarray:
    from drivecap.decoder import pool_cells

    return pool_cells(np.ascontiguousarray(fmap), 1, 3)


def test_decoder_learns_sides_and_exports(tmp_path: Path) -> None:
    train, val = _split(300, 0, "a"), _split(60, 1, "b")
    vocab = caption_vocab()
    s = TrainSettings(
        kind="merge",
        rows=1,
        cols=3,
        embed_dim=16,
        hidden_dim=32,
        image_dim=32,
        max_epochs=15,
        patience=15,
        dropout=0.1,
        lr=5e-3,
    )
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
