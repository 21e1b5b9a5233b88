"""Caption metrics on hand-made inputs (values worked out by hand) and against pycocoevalcap."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivecap.captions.facts import DISTANCES, KINDS, PLACES, ROADS, Facts, SceneObject
from drivecap.captions.grammar import render
from drivecap.training.caption_metrics import (
    PRF,
    bleu4,
    bleu_builtin,
    caption_fact_scores,
    cider_builtin,
    cider_d,
    fact_scores,
    flip_consistency,
    normalise,
    within_clip_signal,
)


def test_normalise_drops_commas() -> None:
    assert normalise("Car close ahead, truck on the right") == "car close ahead truck on the right"


def test_bleu4_worked_by_hand() -> None:
    # hyp (7 words) misses "close" from the ref (8 words):
    # p1 = 7/7, p2 = 5/6, p3 = 4/5, p4 = 3/4; BP = exp(1 - 8/7)
    refs = {"a": ["car close on the right , road curves left"]}
    hyps = {"a": "car on the right , road curves left"}
    expected = (1 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25 * math.exp(1 - 8 / 7)
    assert bleu_builtin(refs, hyps)[3] == pytest.approx(expected, rel=1e-9)
    assert bleu4(refs, hyps, backend="builtin") == pytest.approx(expected, rel=1e-9)
    assert bleu4(refs, hyps, backend="pycocoevalcap") == pytest.approx(expected, rel=1e-9)
    # BLEU-1 is the unigram precision times the brevity penalty
    assert bleu_builtin(refs, hyps)[0] == pytest.approx(math.exp(1 - 8 / 7), rel=1e-9)


def test_bleu_corpus_sums_counts_before_dividing() -> None:
    # Two frames: a perfect 3-word caption and a 2-word caption sharing only one word with its 2-word ref.
    # p1 = (3 + 1) / (3 + 2), p2 = (2 + 0) / (2 + 1), p3 = 1/1, p4 = 0/0, which COCO's scorer makes
    # (0 + 1e-15) / (0 + 1e-9); equal lengths, no brevity penalty.
    refs = {1: ["car close ahead"], 2: ["truck ahead"]}
    hyps = {1: "car close ahead", 2: "bus ahead"}
    b = bleu_builtin(refs, hyps)
    assert b[0] == pytest.approx(4 / 5, rel=1e-9)
    assert b[1] == pytest.approx((4 / 5 * 2 / 3) ** 0.5, rel=1e-9)
    assert b[3] == pytest.approx((4 / 5 * 2 / 3 * 1 * 1e-6) ** 0.25, rel=1e-6)


def test_cider_d_perfect_and_single_frame() -> None:
    refs = {1: ["car close ahead"], 2: ["road curves left"]}
    # identical captions with no n-gram shared between frames: cosine 1 for n = 1..3, and 0 for n = 4 (three
    # words have no 4-gram); the mean over n times 10 is 7.5
    assert cider_builtin(refs, {1: "car close ahead", 2: "road curves left"})[0] == pytest.approx(7.5)
    assert cider_d(
        refs, {1: "car close ahead", 2: "road curves left"}, backend="pycocoevalcap"
    ) == pytest.approx(7.5)
    # one frame only: every n-gram is in every reference, idf is 0, CIDEr-D is 0
    assert cider_builtin({1: ["car ahead"]}, {1: "car ahead"})[0] == 0.0
    # a caption sharing nothing with its reference scores 0
    assert cider_builtin(refs, {1: "truck on the left", 2: "road curves left"})[1][0] == 0.0


@st.composite
def facts(draw: st.DrawFn) -> Facts:
    objs = draw(
        st.lists(
            st.builds(
                SceneObject,
                st.sampled_from([k for k in KINDS if k != "traffic light"]),
                st.sampled_from(PLACES),
                st.sampled_from(DISTANCES),
            ),
            max_size=4,
        )
    )
    return Facts(tuple(objs), draw(st.sampled_from(ROADS)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(facts(), facts(), facts()), min_size=1, max_size=12))
def test_builtin_scores_equal_pycocoevalcap(rows: list[tuple[Facts, Facts, Facts]]) -> None:
    refs = {i: [render(a), render(b)] for i, (a, b, _) in enumerate(rows)}
    hyps = {i: render(c) for i, (_, _, c) in enumerate(rows)}
    assert bleu4(refs, hyps, backend="builtin") == pytest.approx(
        bleu4(refs, hyps, backend="pycocoevalcap"), rel=1e-9, abs=1e-12
    )
    assert cider_d(refs, hyps, backend="builtin") == pytest.approx(
        cider_d(refs, hyps, backend="pycocoevalcap"), rel=1e-9, abs=1e-12
    )


def test_score_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="same ids"):
        bleu4({1: ["a"]}, {2: "a"})
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d({1: "car ahead"}, {1: "car ahead"})


def test_fact_scores_worked_by_hand() -> None:
    pred = [{"vehicle:right"}, {"vehicle:right", "vehicle:ahead"}, set()]
    true = [{"vehicle:right"}, {"vehicle:left"}, {"person:ahead"}]
    s = fact_scores(pred, true)
    assert s["per_fact"]["vehicle:right"] == PRF(tp=1, fp=1, fn=0)
    assert s["per_fact"]["vehicle:ahead"] == PRF(0, 1, 0)
    assert s["per_fact"]["vehicle:left"] == PRF(0, 0, 1)
    assert s["per_fact"]["person:ahead"] == PRF(0, 0, 1)
    assert s["per_family"]["vehicle"] == PRF(1, 2, 1)
    micro = s["micro"]
    assert micro == PRF(1, 2, 2)
    assert micro.precision == pytest.approx(1 / 3)
    assert micro.recall == pytest.approx(1 / 3)
    assert micro.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["per_fact"]["stopsign"].f1 is None  # never said by either side: undefined, not perfect


def test_caption_fact_scores_parse_both_sides() -> None:
    s = caption_fact_scores(["car close ahead , truck on the right"], ["truck close ahead"])
    # pred keys: vehicle:ahead, vehicle:ahead:close, vehicle:right; teacher: vehicle:ahead, vehicle:ahead:close
    assert s["micro"] == PRF(2, 1, 0)


def test_flip_consistency_worked_by_hand() -> None:
    captions = [
        "car on the left",
        "car on the right",
        "clear road ahead",
        "car close ahead",
        "clear road ahead",
    ]
    mirrored = [
        "car on the right",
        "car on the right",
        "car on the left",
        "car close ahead",
        "clear road ahead",
    ]
    # counted: frames 0, 1 (own side), 2 (its mirror mentions a side); 3 and 4 never mention one.
    # consistent: frame 0 only.
    assert flip_consistency(captions, mirrored) == (pytest.approx(1 / 3), 3)
    assert flip_consistency(captions, mirrored, count="original") == (pytest.approx(1 / 2), 2)
    # by facts: "truck" vs "car" are both vehicles on the mirrored side
    assert flip_consistency(["truck on the left"], ["car on the right"], by="facts") == (1.0, 1)
    assert flip_consistency(["truck on the left"], ["car on the right"]) == (0.0, 1)
    assert flip_consistency(["car close ahead"], ["car close ahead"]) == (None, 0)


def test_within_clip_signal_worked_by_hand() -> None:
    # Clip a: teacher says vehicle:right from frame 4 on; clip b: never (no change: not counted).
    frames = list(range(8)) + list(range(8))
    clips = ["a"] * 8 + ["b"] * 8
    true: list[set[str]] = [set()] * 4 + [{"vehicle:right"}] * 4 + [set()] * 8
    # a predictor that always says "right" in clip a: right after the change, wrong before it
    pred = [{"vehicle:right"}] * 8 + [set()] * 8
    s = within_clip_signal(clips, frames, pred, true, radius=2)
    r = s["per_fact"]["vehicle:right"]
    # frames 2..5 of clip a are within 2 of the change at frame 4: 2 wrong (2, 3), 2 right (4, 5)
    assert r["frames"] == 4 and r["changes"] == 1
    assert r["accuracy"] == 0.5
    assert r["balanced_accuracy"] == 0.5
    # a predictor that follows the teacher one frame late gets 3 of 4
    late: list[set[str]] = [set()] * 5 + [{"vehicle:right"}] * 3 + [set()] * 8
    assert within_clip_signal(clips, frames, late, true, radius=2)["overall"]["accuracy"] == 0.75
    # frame order, not list order, defines a change
    order = [7, 6, 5, 4, 3, 2, 1, 0]
    rev = within_clip_signal(["a"] * 8, order, [set()] * 8, [true[f] for f in order], radius=2)
    assert rev["per_fact"]["vehicle:right"]["changes"] == 1
