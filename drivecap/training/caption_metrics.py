"""Caption metrics: BLEU-4, CIDEr-D, fact precision/recall/F1, flip consistency, within-clip signal.

Pure functions over captions (strings) and fact keys; nothing here reads files or runs a model.

BLEU-4 and CIDEr-D are the COCO caption evaluation's (pycocoevalcap 1.2): corpus BLEU with the closest
reference length, and CIDEr-D with n = 4, sigma = 6, clipped counts, idf from the references of the evaluated
set, times 10. pycocoevalcap is used when it is installed (the ``train`` extra); otherwise the re-implementation
here, which the tests check gives the same numbers, down to pycocoevalcap's quirks (its CIDEr-D length
penalty counts bigrams, not words). Captions are tokenised by :func:`~drivecap.captions.grammar.tokenize`
and the comma is dropped, as COCO's PTB tokenizer drops punctuation (that tokenizer needs Java: not used).
"""

from __future__ import annotations

import contextlib
import io
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from drivecap.captions.facts import ALL_KEYS, mirror_key
from drivecap.captions.grammar import mentions_side, mirror_caption, parse, tokenize

Backend = Literal["auto", "pycocoevalcap", "builtin"]


def normalise(caption: str) -> str:
    """The tokenised caption the caption scores compare: words joined by single spaces, commas dropped."""
    return " ".join(t for t in tokenize(caption) if t != ",")


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    c: Counter[tuple[str, ...]] = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            c[tuple(words[i : i + k])] += 1
    return c


def _check(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str]) -> list[Any]:
    if set(refs) != set(hyps):
        raise ValueError("references and hypotheses must have the same ids")
    if not refs:
        raise ValueError("no captions to score")
    for k, r in refs.items():
        if isinstance(r, str) or len(r) == 0:
            raise ValueError(f"references of {k!r} must be a non-empty list of captions")
    return list(refs)


# ------------------------------------------------------------------------------------------------ BLEU


def bleu_builtin(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n exactly as pycocoevalcap's BleuScorer (option "closest") computes it."""
    ids = _check(refs, hyps)
    small, tiny = 1e-9, 1e-15
    guess = [0] * n
    correct = [0] * n
    testlen_total = 0
    reflen_total = 0
    for i in ids:
        words = normalise(hyps[i]).split()
        counts = _ngrams(words, n)
        maxref: dict[tuple[str, ...], int] = {}
        reflens = []
        for r in refs[i]:
            rw = normalise(r).split()
            reflens.append(len(rw))
            for g, c in _ngrams(rw, n).items():
                maxref[g] = max(maxref.get(g, 0), c)
        testlen = len(words)
        testlen_total += testlen
        reflen_total += min((abs(length - testlen), length) for length in reflens)[1]
        for k in range(n):
            guess[k] += max(0, testlen - k)
        for g, c in counts.items():
            correct[len(g) - 1] += min(maxref.get(g, 0), c)
    out = []
    prod = 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        out.append(prod ** (1.0 / (k + 1)))
    ratio = (testlen_total + tiny) / (reflen_total + small)
    if ratio < 1:
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def _coco_inputs(
    refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str]
) -> tuple[dict[Any, list[str]], dict[Any, list[str]]]:
    ids = _check(refs, hyps)
    return ({i: [normalise(r) for r in refs[i]] for i in ids}, {i: [normalise(hyps[i])] for i in ids})


def _have_coco() -> bool:
    try:
        import pycocoevalcap.bleu.bleu
        import pycocoevalcap.cider.cider  # noqa: F401
    except ImportError:
        return False
    return True


def bleu4(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], backend: Backend = "auto") -> float:
    """Corpus BLEU-4 of hypotheses against their references (ids are frames: any hashable)."""
    if backend == "builtin" or (backend == "auto" and not _have_coco()):
        return bleu_builtin(refs, hyps)[3]
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _coco_inputs(refs, hyps)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its counts
        score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(score[3])


# ------------------------------------------------------------------------------------------------ CIDEr-D


def cider_builtin(
    refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """CIDEr-D (corpus mean, per-id scores) exactly as pycocoevalcap's CiderScorer computes it."""
    ids = _check(refs, hyps)
    crefs = [[_ngrams(normalise(r).split(), n) for r in refs[i]] for i in ids]
    ctest = [_ngrams(normalise(hyps[i]).split(), n) for i in ids]
    df: Counter[tuple[str, ...]] = Counter()
    for rs in crefs:
        df.update({g for r in rs for g in r})
    ref_len = math.log(float(len(crefs)))

    def vec(cnts: Counter[tuple[str, ...]]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        v: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in cnts.items():
            k = len(g) - 1
            v[k][g] = float(tf) * (ref_len - math.log(max(1.0, df.get(g, 0))))
            norm[k] += v[k][g] ** 2
            if k == 1:  # pycocoevalcap's "length" counts bigrams; kept so the numbers agree
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for test, rs in zip(ctest, crefs, strict=True):
        vh, nh, lh = vec(test)
        total = [0.0] * n
        for r in rs:
            vr, nr, lr = vec(r)
            delta = float(lh - lr)
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * math.exp(-(delta**2) / (2 * sigma**2))
        scores.append(sum(total) / n / len(rs) * 10.0)
    return sum(scores) / len(scores), scores


def cider_d(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], backend: Backend = "auto") -> float:
    """Corpus CIDEr-D (COCO's "CIDEr", which is the D variant) of hypotheses against their references."""
    if backend == "builtin" or (backend == "auto" and not _have_coco()):
        return cider_builtin(refs, hyps)[0]
    from pycocoevalcap.cider.cider import Cider

    gts, res = _coco_inputs(refs, hyps)
    score, _ = Cider().compute_score(gts, res)
    return float(score)


# ------------------------------------------------------------------------------------------------ facts


@dataclass(frozen=True)
class PRF:
    """Counts of one fact (or a sum of facts) over frames, and the scores from them (None when undefined)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else None

    def __add__(self, other: PRF) -> PRF:
        return PRF(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_json(self) -> dict[str, Any]:
        r = {"precision": self.precision, "recall": self.recall, "f1": self.f1}
        return {k: (None if v is None else round(v, 4)) for k, v in r.items()} | {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "support": self.tp + self.fn,
        }


def key_family(key: str) -> str:
    """vehicle / person / bicycle / light / stopsign / road: the fact type a key belongs to."""
    return key.split(":", 1)[0]


def fact_scores(pred: Sequence[Iterable[str]], true: Sequence[Iterable[str]]) -> dict[str, Any]:
    """Precision/recall/F1 of predicted fact keys against the teacher's, frame by frame.

    Returns ``{"micro": PRF, "per_fact": {key: PRF}, "per_family": {family: PRF}, "exact_match": share of frames
    whose key sets are equal, "frames": n}``. ``micro`` sums the counts of every key (the overall figure);
    per_fact has every key of :data:`ALL_KEYS` and any other key seen."""
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions for {len(true)} frames")
    counts: dict[str, list[int]] = {k: [0, 0, 0] for k in ALL_KEYS}
    exact = 0
    for p, t in zip(pred, true, strict=True):
        ps, ts = set(p), set(t)
        exact += ps == ts
        for k in ps | ts:
            c = counts.setdefault(k, [0, 0, 0])
            if k in ps and k in ts:
                c[0] += 1
            elif k in ps:
                c[1] += 1
            else:
                c[2] += 1
    per_fact = {k: PRF(*c) for k, c in counts.items()}
    per_family: dict[str, PRF] = {}
    for k, v in per_fact.items():
        fam = key_family(k)
        per_family[fam] = per_family.get(fam, PRF(0, 0, 0)) + v
    micro = sum(per_fact.values(), PRF(0, 0, 0))
    return {
        "micro": micro,
        "per_fact": per_fact,
        "per_family": per_family,
        "exact_match": exact / len(pred) if pred else None,
        "frames": len(pred),
    }


def caption_fact_scores(pred_captions: Sequence[str], teacher_captions: Sequence[str]) -> dict[str, Any]:
    """:func:`fact_scores` of captions, both sides parsed back to facts."""
    return fact_scores([parse(c).keys for c in pred_captions], [parse(c).keys for c in teacher_captions])


def fact_scores_json(scores: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`fact_scores` as plain data (PRF objects as dicts) for ``--json`` output."""
    return {
        "micro": scores["micro"].to_json(),
        "per_fact": {k: v.to_json() for k, v in scores["per_fact"].items()},
        "per_family": {k: v.to_json() for k, v in scores["per_family"].items()},
        "exact_match": None if scores["exact_match"] is None else round(scores["exact_match"], 4),
        "frames": scores["frames"],
    }


# ------------------------------------------------------------------------------------------------ flips


def flip_consistency(
    captions: Sequence[str],
    mirrored_captions: Sequence[str],
    count: Literal["either", "original"] = "either",
    by: Literal["caption", "facts"] = "caption",
) -> tuple[float | None, int]:
    """Share of frames whose mirrored frame's caption is the caption with left and right swapped.

    Only frames that mention a side count: with ``count="either"`` (default) a frame counts when its caption
    or its mirror's caption mentions one (so "clear road ahead" against "car on the left" is a miss, not
    skipped); with ``"original"`` only the frame's own caption decides. ``by="facts"`` compares the parsed
    fact keys instead of the words (word order and kind names then do not matter). Returns (share, frames
    counted); the share is None when no frame counts."""
    if len(captions) != len(mirrored_captions):
        raise ValueError(f"{len(captions)} captions for {len(mirrored_captions)} mirrored frames")
    hit = n = 0
    for c, m in zip(captions, mirrored_captions, strict=True):
        sided = mentions_side(c) or (count == "either" and mentions_side(m))
        if not sided:
            continue
        n += 1
        if by == "caption":
            hit += " ".join(tokenize(m)) == mirror_caption(c)
        else:
            hit += parse(m).keys == {mirror_key(k) for k in parse(c).keys}
    return (hit / n if n else None), n


# ------------------------------------------------------------------------------------------------ within clip


def within_clip_signal(
    clips: Sequence[Hashable],
    frames: Sequence[int],
    pred: Sequence[Iterable[str]],
    true: Sequence[Iterable[str]],
    radius: int = 12,
    keys: Sequence[str] | None = None,
) -> dict[str, Any]:
    """How well a fact is predicted where the teacher's fact changes within a clip.

    The clip-level figures are flattered by road layout (a clip with traffic on the right only rewards always
    saying "right"). Here, for each clip and fact key, every frame within ``radius`` frames of a change of the
    teacher's value of that key (frame order within the clip) counts; the frames on either side of a change
    hold both values, so a prediction that is constant over the clip scores about 0.5. Returns per key and
    overall (all counted key-frames together): ``accuracy``, ``balanced_accuracy`` (mean of the recall of
    "present" and "absent"), ``frames`` and ``changes``. Keys the teacher never changes are left out."""
    n = len(clips)
    if not (len(frames) == len(pred) == len(true) == n):
        raise ValueError("clips, frames, pred and true must have the same length")
    by_clip: dict[Hashable, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_clip[clip].append(i)
    psets = [set(p) for p in pred]
    tsets = [set(t) for t in true]
    wanted = list(keys) if keys is not None else sorted(set().union(*tsets) if tsets else set())
    per: dict[str, dict[str, Any]] = {}
    tot = [0, 0, 0, 0]  # tp, tn, fp, fn over every counted key-frame
    for key in wanted:
        c = [0, 0, 0, 0]
        changes = 0
        for members in by_clip.values():
            idx = sorted(members, key=lambda i: frames[i])
            vals = [key in tsets[i] for i in idx]
            near: set[int] = set()
            for j in range(1, len(idx)):
                if vals[j] != vals[j - 1]:
                    changes += 1
                    near.update(range(max(0, j - radius), min(len(idx), j + radius)))
            for j in near:
                t, p = vals[j], key in psets[idx[j]]
                c[0 if (t and p) else 1 if (not t and not p) else 2 if p else 3] += 1
        if changes == 0:
            continue
        per[key] = _acc(c) | {"changes": changes}
        tot = [a + b for a, b in zip(tot, c, strict=True)]
    return {"per_fact": per, "overall": _acc(tot), "radius": radius}


def _acc(c: Sequence[int]) -> dict[str, Any]:
    tp, tn, fp, fn = c
    total = tp + tn + fp + fn
    rec_pos = tp / (tp + fn) if tp + fn else None
    rec_neg = tn / (tn + fp) if tn + fp else None
    parts = [r for r in (rec_pos, rec_neg) if r is not None]
    return {
        "accuracy": round((tp + tn) / total, 4) if total else None,
        "balanced_accuracy": round(sum(parts) / len(parts), 4) if parts else None,
        "frames": total,
    }
