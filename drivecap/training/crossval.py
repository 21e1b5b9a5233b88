"""Leave-one-clip-out cross-validation over the training clips: chooses the number of epochs, the decoder
settings and the ensemble size by the mean over folds, never by one clip and never on held-out data.

Each fold trains on all training clips but one and scores the left-out clip with the runtime (numpy) decoder,
flip ensemble on, after every epoch; with several seeds it also scores the ensemble that averages the seeds'
word log-probabilities (:class:`drivecap.decoder.lstm.LSTMDecoder` ``members``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from typing import Any

import numpy as np

from drivecap.decoder.lstm import FloatArray, LSTMDecoder
from drivecap.decoder.vocab import Vocab
from drivecap.training.caption_metrics import PRF, caption_fact_scores
from drivecap.training.data import Split
from drivecap.training.evaluate import val_scorer
from drivecap.training.train import TrainSettings, train_fixed

log = logging.getLogger(__name__)


def split_by_clip(data: Split) -> dict[str, Split]:
    clips = sorted({s.clip for s in data.samples})
    return {c: data.select([s.clip == c for s in data.samples]) for c in clips}


def decode_members(
    members: Sequence[dict[str, FloatArray]],
    s: TrainSettings,
    vocab: Vocab,
    split: Split,
    flip: bool = True,
    mirror_view: bool = True,
) -> list[str]:
    """Greedy captions of ``split`` by the (ensemble of) exported decoders, as the runtime decodes them: with
    ``mirror_view`` each view is decoded with its other view's cells as the mirrored stream (the runtime's
    ``decoder.mirror_view``); views without one, and ``mirror_view=False``, use the flipped map (``flip``)."""
    arch = s.arch(len(vocab), split.cells.shape[-1])
    dec = LSTMDecoder(
        arch,
        members[0],
        vocab.start_id,
        vocab.end_id,
        mirror_ids=np.array(vocab.mirror_ids()),
        members=list(members[1:]),
    )
    flipped = split.flipped if flip else None
    other = split.counterparts() if mirror_view else np.full(len(split), -1)
    out = []
    for i in range(len(split)):
        second = split.cells[other[i]] if other[i] >= 0 else (None if flipped is None else flipped[i])
        hyp = dec.greedy(split.cells[i], s.max_words + 1, second)
        out.append(" ".join(vocab.decode(hyp.ids)))
    return out


def fold_scores(preds: list[str], split: Split) -> dict[str, float]:
    scores = caption_fact_scores(preds, [x.caption for x in split.samples])
    v = val_scorer(preds, split, scores)
    fam = scores["per_family"]
    road = fam.get("road")
    v["val_road_f1"] = (road.f1 if road is not None else None) or 0.0
    v["val_road_support"] = float(road.tp + road.fn if road is not None else 0)
    # Diagnostics, not the choice rule: the object keys alone (all but the road's shape) and the "ahead" keys.
    none = PRF(0, 0, 0)
    v["val_object_f1"] = sum((p for f, p in fam.items() if f != "road"), none).f1 or 0.0
    v["val_ahead_f1"] = sum((p for k, p in scores["per_fact"].items() if ":ahead" in k), none).f1 or 0.0
    return v


def keep_snapshot(snaps: dict[int, list[dict[str, FloatArray]]], epoch: int, model: Any) -> None:
    """Keeps the exported weights after ``epoch`` (0-based) when its 1-based count is checked."""
    if epoch + 1 in snaps:
        snaps[epoch + 1].append(model.export())


def snapshots(
    train: Split, vocab: Vocab, s: TrainSettings, seeds: int, epochs: Sequence[int]
) -> dict[int, list[dict[str, FloatArray]]]:
    """The exported decoders of ``seeds`` runs (seeds 0..n-1) on ``train``, after each epoch count of
    ``epochs``, all on one cosine schedule of ``s.max_epochs``."""
    snaps: dict[int, list[dict[str, FloatArray]]] = {e: [] for e in epochs}
    for seed in range(seeds):
        train_fixed(train, vocab, replace(s, seed=seed), max(epochs), partial(keep_snapshot, snaps))
    return snaps


def fold_by_epoch(
    train: Split, val: Split, vocab: Vocab, s: TrainSettings, seeds: int, epochs: Sequence[int]
) -> dict[int, dict[str, float]]:
    """One fold: decoders trained on ``train`` (``seeds`` members averaged) scored on ``val`` after each epoch
    count, decoded as the runtime decodes (mirror view)."""
    snaps = snapshots(train, vocab, s, seeds, epochs)
    return {e: fold_scores(decode_members(snaps[e], s, vocab, val), val) for e in epochs}


def best_epoch_summary(
    folds: dict[str, dict[int, dict[str, float]]], epochs: Sequence[int], not_dashcam: str = "street"
) -> dict[str, Any]:
    """The mean fold fact F1 after each checked epoch count, the count with the best mean (ties -> fewer epochs)
    and its folds, mean of all folds and mean of the dashcam folds (all but ``not_dashcam``)."""
    mean = {e: float(np.mean([folds[c][e]["val_fact_f1"] for c in folds])) for e in epochs}
    best = max(epochs, key=lambda e: (mean[e], -e))
    dash = [c for c in folds if c != not_dashcam]
    return {
        "mean_fact_f1": mean,
        "best_epochs": best,
        "best_folds": {c: round(folds[c][best]["val_fact_f1"], 4) for c in folds},
        "best_mean5": round(mean[best], 4),
        "best_mean_dashcam": round(float(np.mean([folds[c][best]["val_fact_f1"] for c in dash])), 4),
    }


def cross_validate(
    data: Split,
    vocab: Vocab,
    s: TrainSettings,
    seeds: Sequence[int] = (0, 1, 2),
    check_epochs: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Scores ``s`` by leave-one-clip-out: per fold, epoch (1-based count) and ensemble size 1..len(seeds).

    Returns ``{"settings", "folds": {clip: {"k": {"epochs": {...}}}}, "mean": {"k": {epochs: scores}}}``."""
    checks = sorted(set(check_epochs or range(1, s.max_epochs + 1)))
    by_clip = split_by_clip(data)
    t0 = time.perf_counter()
    folds: dict[str, dict[str, dict[int, dict[str, float]]]] = {}
    for clip, val in by_clip.items():
        train = data.select([x.clip != clip for x in data.samples])
        snaps: dict[int, list[dict[str, FloatArray]]] = {e: [] for e in checks}
        for seed in seeds:
            train_fixed(train, vocab, replace(s, seed=seed), max(checks), partial(keep_snapshot, snaps))
        res: dict[str, dict[int, dict[str, float]]] = {}
        for n in range(1, len(seeds) + 1):
            res[str(n)] = {e: fold_scores(decode_members(snaps[e][:n], s, vocab, val), val) for e in checks}
        folds[clip] = res
        log.info(
            "fold %s: %s (%.0f s)",
            clip,
            {k: {e: round(r["score"], 3) for e, r in v.items()} for k, v in res.items()},
            time.perf_counter() - t0,
        )
    mean: dict[str, dict[int, dict[str, float]]] = {}
    for k in folds[next(iter(folds))]:
        mean[k] = {}
        for e in checks:
            keys = folds[next(iter(folds))][k][e].keys()
            mean[k][e] = {m: float(np.mean([folds[c][k][e][m] for c in folds])) for m in keys}
    return {
        "settings": asdict(s),
        "seeds": list(seeds),
        "folds": folds,
        "mean": mean,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def best_choice(
    cv: dict[str, Any], min_flip: float | None = None, max_members: int | None = None
) -> tuple[int, int, float]:
    """(ensemble size, epochs, value) with the best mean over folds; ties go to fewer members and epochs.

    Without ``min_flip`` the value is the mean ``score`` (fact F1 and flip consistency averaged). With it, the
    value is the mean fact F1 among the choices whose mean flip consistency is at least ``min_flip`` (the
    issue's rule: no worse than the per-fact baseline's mirror consistency by more than 0.05); if none
    qualifies, the most flip-consistent choice is taken."""
    best: tuple[int, int, float] | None = None
    fallback: tuple[int, int, float] | None = None
    for k, by_epoch in cv["mean"].items():
        if max_members is not None and int(k) > max_members:
            continue
        for e, r in by_epoch.items():
            if min_flip is None:
                cand = (int(k), int(e), float(r["score"]))
            else:
                flip = float(r["val_flip"])
                if fallback is None or flip > fallback[2] + 1e-9:
                    fallback = (int(k), int(e), flip)
                if flip < min_flip:
                    continue
                cand = (int(k), int(e), float(r["val_fact_f1"]))
            if best is None or cand[2] > best[2] + 1e-9:
                best = cand
    if best is None:
        assert fallback is not None
        return fallback
    return best


def baseline_cross_validate(data: Split) -> dict[str, Any]:
    """The per-fact logistic-regression baseline under the same leave-one-clip-out folds."""
    from drivecap.captions.facts import Facts
    from drivecap.training.baseline import FactBaseline

    folds: dict[str, dict[str, float]] = {}
    for clip, val in split_by_clip(data).items():
        train = data.select([x.clip != clip for x in data.samples])
        base = FactBaseline()
        base.fit(train.cells, [Facts.from_json(x.facts) for x in train.samples])
        other = val.counterparts()
        mirror = np.where((other >= 0)[:, None, None], val.cells[np.maximum(other, 0)], val.cells[:, ::-1])
        # The same mirror view as the decoders are scored with (a view without its mirror: its flipped cells).
        folds[clip] = fold_scores(base.predict_captions(val.cells, mirror), val)
    keys = next(iter(folds.values())).keys()
    return {"folds": folds, "mean": {m: float(np.mean([f[m] for f in folds.values()])) for m in keys}}


__all__ = [
    "baseline_cross_validate",
    "best_choice",
    "cross_validate",
    "decode_members",
    "fold_scores",
    "split_by_clip",
]
