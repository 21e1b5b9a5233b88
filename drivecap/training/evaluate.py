"""Validation score for early stopping and model choice, and the held-out evaluation behind ``drivecap eval``.

The reported figures (BLEU-4, CIDEr-D, fact P/R/F1, flip consistency, within-clip signal) come from
:mod:`drivecap.captions.metrics`; this module only arranges predictions and references for it.
"""

from __future__ import annotations

import logging
from typing import Any

from drivecap.training.caption_metrics import caption_fact_scores, flip_consistency
from drivecap.training.data import Split

log = logging.getLogger(__name__)


def _pairs(preds: list[str], split: Split) -> list[tuple[str, str]]:
    """(caption of a frame, caption of its mirror) for every frame that has both."""
    plain: dict[tuple[str, int], str] = {}
    mirror: dict[tuple[str, int], str] = {}
    for p, s in zip(preds, split.samples, strict=True):
        if s.augmented:
            continue
        (mirror if s.mirrored else plain)[(s.clip, s.frame)] = p
    return [(plain[k], mirror[k]) for k in plain if k in mirror]


def val_scorer(preds: list[str], split: Split, facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Micro fact F1 against the teacher and flip consistency on the validation clip; ``score`` is their mean.
    ``facts``: the ``caption_fact_scores`` of ``preds`` when the caller has them already.

    Both matter for the product (the issue's targets are on both), so neither alone picks the epoch."""
    if facts is None:
        facts = caption_fact_scores(preds, [s.caption for s in split.samples])
    pairs = _pairs(preds, split)
    flip, _ = flip_consistency([a for a, _ in pairs], [b for _, b in pairs])
    f1 = facts["micro"].f1 or 0.0
    flip_v = 0.0 if flip is None else flip  # no side ever said: nothing to reward
    ahead = facts["per_fact"].get("vehicle:ahead")
    return {
        "val_fact_f1": f1,
        "val_flip": flip_v,
        "val_exact": facts["exact_match"] or 0.0,
        "val_vehicle_ahead_f1": (ahead.f1 if ahead is not None else None) or 0.0,
        "score": (f1 + flip_v) / 2,
    }


# ------------------------------------------------------------------------------------------ held-out evaluation

HELDOUT_CLIPS = ("project_video01", "challenge01", "street")


def _summary(
    preds: list[str], mirror_preds: list[str], split_plain: Split, ms: list[float]
) -> dict[str, Any]:
    """Every figure for one way of captioning the held-out frames (plain frames vs teacher; flips)."""
    import numpy as np

    from drivecap.captions.grammar import parse
    from drivecap.training.caption_metrics import bleu4, cider_d, fact_scores_json, within_clip_signal

    teacher = [s.caption for s in split_plain.samples]
    ids = list(range(len(preds)))
    refs = {i: [teacher[i]] for i in ids}
    hyps = {i: preds[i] for i in ids}
    facts = caption_fact_scores(preds, teacher)
    flip, flip_n = flip_consistency(preds, mirror_preds)
    flip_facts, _ = flip_consistency(preds, mirror_preds, by="facts")
    within = within_clip_signal(
        [s.clip for s in split_plain.samples],
        [s.frame for s in split_plain.samples],
        [parse(p).keys for p in preds],
        [parse(t).keys for t in teacher],
    )
    per_clip: dict[str, Any] = {}
    for clip in sorted({s.clip for s in split_plain.samples}):
        idx = [i for i, s in enumerate(split_plain.samples) if s.clip == clip]
        cf = caption_fact_scores([preds[i] for i in idx], [teacher[i] for i in idx])
        fl, fn = flip_consistency([preds[i] for i in idx], [mirror_preds[i] for i in idx])
        per_clip[clip] = {
            "frames": len(idx),
            "fact_f1": rounded(cf["micro"].f1),
            "flip_consistency": rounded(fl),
            "flip_frames": fn,
            "exact_match": rounded(cf["exact_match"]),
        }
    fj = fact_scores_json(facts)
    out: dict[str, Any] = {
        "bleu4": rounded(bleu4(refs, hyps)),
        "cider": rounded(cider_d(refs, hyps)),
        "flip_consistency": rounded(flip),
        "fact_f1": fj["micro"]["f1"],
        "frames": len(preds),
        "fact_precision": fj["micro"]["precision"],
        "fact_recall": fj["micro"]["recall"],
        "exact_match": fj["exact_match"],
        "flip_frames": flip_n,
        "flip_consistency_facts": rounded(flip_facts),
        "per_family": fj["per_family"],
        "per_fact": {k: v for k, v in fj["per_fact"].items() if v["support"] or v["fp"]},
        "within_clip": within,
        "per_clip": per_clip,
    }
    if ms:
        out["decode_ms"] = {
            "mean": rounded(float(np.mean(ms)), 3),
            "p95": rounded(float(np.percentile(ms, 95)), 3),
        }
    return out


def rounded(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def split_views(split: Split) -> tuple[Split, Split]:
    """(plain frames, their mirrors) in the same frame order; frames missing either view are dropped."""
    plain = {(s.clip, s.frame): i for i, s in enumerate(split.samples) if not s.mirrored}
    mirror = {(s.clip, s.frame): i for i, s in enumerate(split.samples) if s.mirrored}
    keys = [k for k in plain if k in mirror]
    pi = [plain[k] for k in keys]
    mi = [mirror[k] for k in keys]

    def take(idx: list[int]) -> Split:
        return Split(
            [split.samples[i] for i in idx],
            split.cells[idx],
            split.meta,
            None if split.flipped is None else split.flipped[idx],
        )

    return take(pi), take(mi)


def evaluate_heldout(cap: Any, heldout: Split, beam_width: int, mirror_view: bool = True) -> dict[str, Any]:
    """Greedy (top level), beam and baseline figures on held-out frames.

    With ``mirror_view`` (the runtime default, ``decoder.mirror_view``) each frame is decoded together with
    the encoder's map of its mirror, as the pipeline does; ``single_view`` then holds the greedy figures of
    the frame's own map alone (flip ensemble on the flipped map, if the bundle has it), so what the decoder
    does by itself stays visible."""
    plain, mirror = split_views(heldout)
    out: dict[str, Any] = {}
    runs = [("greedy", 1, mirror_view), ("beam", beam_width, mirror_view)]
    if mirror_view:
        runs.append(("single_view", 1, False))
    for name, width, use_mirror in runs:
        preds: list[str] = []
        mpreds: list[str] = []
        ms: list[float] = []
        for view, other, dest in ((plain, mirror, preds), (mirror, plain, mpreds)):
            for i in range(len(view)):
                c = cap.caption_cells(
                    view.cells[i],
                    width,
                    None if view.flipped is None else view.flipped[i],
                    mirror=other.cells[i] if use_mirror else None,
                )
                dest.append(c.text)
                if view is plain:
                    ms.append(c.decode_ms)
        summary = _summary(preds, mpreds, plain, ms)
        summary["beam_width"] = width
        summary["mirror_view"] = use_mirror
        if name == "greedy":
            out.update(summary)
            out["captions"] = {"plain": preds, "mirrored": mpreds}
        else:
            out[name] = summary
    return out


def evaluate_baseline(baseline: Any, heldout: Split) -> dict[str, Any]:
    """The per-fact baseline's figures on the same held-out frames (captions rendered from its keys)."""
    plain, mirror = split_views(heldout)
    preds = baseline.predict_captions(plain.cells)
    mpreds = baseline.predict_captions(mirror.cells)
    out = _summary(preds, mpreds, plain, [])
    out["captions"] = {"plain": preds, "mirrored": mpreds}
    # The same mirror view as the decoder's: each fact's logit averaged with its mirror fact's on the mirror.
    mv = _summary(
        baseline.predict_captions(plain.cells, mirror.cells),
        baseline.predict_captions(mirror.cells, plain.cells),
        plain,
        [],
    )
    mv["mirror_view"] = True
    out["mirror_view"] = mv
    return out
