"""The caption grammar and scene facts: hand-made cases and properties over random facts."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivecap.captions.facts import (
    ALL_KEYS,
    DISTANCES,
    KINDS,
    LIGHT_COLOURS,
    PLACES,
    ROADS,
    Facts,
    FactsError,
    SceneObject,
    mirror_key,
)
from drivecap.captions.grammar import (
    MAX_WORDS,
    VOCABULARY,
    mentions_side,
    mirror_caption,
    parse,
    render,
    simplify,
    tokenize,
)


def obj(kind: str, place: str, distance: str = "far", colour: str = "") -> SceneObject:
    return SceneObject(kind, place, distance, colour)


@st.composite
def scene_objects(draw: st.DrawFn) -> SceneObject:
    kind = draw(st.sampled_from(KINDS))
    colour = draw(st.sampled_from(LIGHT_COLOURS)) if kind == "traffic light" else ""
    return SceneObject(kind, draw(st.sampled_from(PLACES)), draw(st.sampled_from(DISTANCES)), colour)


facts_strategy = st.builds(Facts, st.lists(scene_objects(), max_size=8).map(tuple), st.sampled_from(ROADS))


# ------------------------------------------------------------------------------------------ hand-made


def test_nothing_relevant_is_a_clear_road() -> None:
    assert render(Facts()) == "clear road ahead"
    assert render(Facts(road="straight")) == "clear road ahead"
    assert parse("clear road ahead") == Facts()


def test_close_ahead_comes_first_then_sides_then_road() -> None:
    f = Facts((obj("truck", "right"), obj("car", "ahead", "close")), road="curve left")
    assert render(f) == "car close ahead , truck on the right , road curves left"


def test_person_before_car_at_equal_urgency_and_ahead_before_sides() -> None:
    f = Facts((obj("car", "ahead", "close"), obj("person", "ahead", "close"), obj("bus", "left", "close")))
    assert render(f) == "person close ahead , car close ahead , bus close on the left"


def test_same_kind_on_both_sides_is_one_mention() -> None:
    f = Facts((obj("car", "left"), obj("car", "right")))
    assert render(f) == "car on both sides"
    assert parse("car on both sides") == f


def test_close_hides_far_of_same_kind_and_place() -> None:
    f = Facts((obj("car", "right", "close"), obj("car", "right", "far")))
    assert render(f) == "car close on the right"
    assert simplify(f) == Facts((obj("car", "right", "close"),))


def test_lights_and_signs() -> None:
    f = Facts(
        (
            obj("traffic light", "right", "close", "red"),
            obj("stop sign", "ahead"),
            obj("traffic light", "ahead", colour="green"),
        )
    )
    # a red light anywhere and a stop sign ahead come before other lights; lights are said without distance
    assert render(f) == "red light on the right , stop sign ahead , green light ahead"
    assert not f.urgent  # the red light is not the ego lane's


def test_word_budget_keeps_the_most_urgent() -> None:
    kinds = ("car", "truck", "bus", "person", "bicycle")
    sides = [obj(k, "left" if i % 2 else "right", "close") for i, k in enumerate(kinds)]
    f = Facts((*sides, obj("car", "ahead", "close")), road="curve right")
    caption = render(f)
    words = [t for t in tokenize(caption) if t != ","]
    assert len(words) <= MAX_WORDS
    # 3 + 5 words; no other 5-word side mention fits in the 4 left, the 3-word road does
    assert caption == "car close ahead , person close on the left , road curves right"


def test_urgent() -> None:
    assert Facts((obj("person", "ahead", "close"),)).urgent
    assert Facts((obj("truck", "ahead", "close"),)).urgent
    assert not Facts((obj("truck", "ahead", "far"),)).urgent
    assert not Facts((obj("truck", "left", "close"),)).urgent
    assert not Facts((obj("traffic light", "ahead", colour="green"),)).urgent
    assert not Facts((obj("traffic light", "right", colour="red"),)).urgent


def test_keys_granularity() -> None:
    f = Facts(
        (
            obj("truck", "ahead", "close"),
            obj("motorcycle", "left"),
            obj("person", "right", "close"),
            obj("traffic light", "ahead", colour="green"),
            obj("stop sign", "left"),
        ),
        road="curve right",
    )
    assert f.keys == {
        "vehicle:ahead",
        "vehicle:ahead:close",
        "vehicle:left",
        "person:right",
        "person:right:close",
        "light:green",
        "stopsign",
        "road:curve right",
    }
    assert f.keys <= set(ALL_KEYS)
    assert Facts.from_keys(f.keys).keys == f.keys


def test_parse_is_tolerant() -> None:
    # no commas, unknown words, a mention without a place, a repeat
    f = parse("car close ahead blah truck on the right truck on the right car , road curves left")
    assert f == Facts((obj("car", "ahead", "close"), obj("truck", "right")), road="curve left")
    assert parse("") == Facts()
    assert parse("the the on") == Facts()


def test_json_round_trip_and_errors() -> None:
    f = Facts((obj("traffic light", "left", colour="yellow"), obj("bus", "ahead", "close")), road="straight")
    assert Facts.from_json(json.loads(json.dumps(f.to_json()))) == f
    assert Facts.from_json(f.dumps()) == f
    with pytest.raises(FactsError, match="plane"):
        Facts.from_json({"objects": [{"kind": "plane", "place": "ahead"}]})
    with pytest.raises(FactsError, match="colour"):
        SceneObject("car", "left", colour="red")
    with pytest.raises(FactsError, match="road shape"):
        Facts(road="uphill")


def test_mirror_caption() -> None:
    caption = "car close on the left , road curves right"
    assert mirror_caption(caption) == "car close on the right , road curves left"
    assert mentions_side("bus on both sides")
    assert not mentions_side("car close ahead")


# ------------------------------------------------------------------------------------------- properties


@settings(max_examples=400, deadline=None)
@given(facts_strategy)
def test_parse_inverts_render(f: Facts) -> None:
    caption = render(f)
    assert parse(caption) == simplify(f)
    assert parse(caption).keys == simplify(f).keys
    # rendering what was said says it again, word for word
    assert render(simplify(f)) == caption


@settings(max_examples=400, deadline=None)
@given(facts_strategy)
def test_mirrored_facts_give_the_mirrored_caption(f: Facts) -> None:
    assert render(f.mirrored()) == mirror_caption(render(f))
    assert parse(render(f.mirrored())) == parse(render(f)).mirrored()
    assert f.mirrored().mirrored() == f
    assert f.mirrored().keys == {mirror_key(k) for k in f.keys}


@settings(max_examples=400, deadline=None)
@given(facts_strategy)
def test_captions_are_short_and_in_the_vocabulary(f: Facts) -> None:
    tokens = tokenize(render(f))
    assert set(tokens) <= set(VOCABULARY)
    assert len([t for t in tokens if t != ","]) <= MAX_WORDS
    # the most urgent thing, when there is one, is said
    if f.urgent:
        assert simplify(f).urgent


@settings(max_examples=200, deadline=None)
@given(facts_strategy)
def test_simplify_only_drops(f: Facts) -> None:
    s = simplify(f)
    assert s.keys <= f.keys | {k for k in s.keys if k.startswith("light:") or k == "stopsign"}
    assert simplify(s) == s


def test_vocabulary_is_exactly_what_render_can_say() -> None:
    seen: set[str] = set()
    for kind in KINDS:
        for place in PLACES:
            for dist in DISTANCES:
                colours = LIGHT_COLOURS if kind == "traffic light" else ("",)
                for colour in colours:
                    seen |= set(tokenize(render(Facts((obj(kind, place, dist, colour),)))))
    seen |= set(
        tokenize(
            render(Facts((obj("car", "left"), obj("car", "right"), obj("bus", "ahead")), road="curve left"))
        )
    )
    seen |= set(tokenize(render(Facts(road="curve right")))) | set(tokenize(render(Facts())))
    assert seen == set(VOCABULARY)
