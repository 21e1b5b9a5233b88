"""The teacher's extra looks (issue 11 item 3): tiles, mirror agreement, temporal consistency, settings digest.

All on small made-up box lists: no SSD, no clip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from drivecap.training.geometry import Box, geometry_for
from drivecap.training.teacher import ClipDetections, frame_objects, label_records
from drivecap.training.teacher_settings import TeacherSettings
from drivecap.training.teacher_views import (
    iou,
    merge_views,
    mirror_agree,
    near,
    nms,
    road_region,
    select_boxes,
    tile_rects,
    tile_to_picture,
    unmirror,
)


def person(x1: float, y1: float, x2: float, y2: float, score: float = 0.6) -> Box:
    return Box("person", score, x1, y1, x2, y2)


LOW = TeacherSettings.first(
    consistent_threshold=0.3, consistent_radius=2, consistent_frames=2, consistent_kinds=("person", "bicycle")
)


# ------------------------------------------------------------------------------------------ temporal consistency


def test_a_weak_person_held_by_its_neighbours_is_accepted() -> None:
    weak = person(0.50, 0.40, 0.53, 0.50, score=0.35)  # under the 0.45 person threshold
    frames = [[replace(weak, score=s)] for s in (0.33, 0.36, 0.35, 0.31, 0.40)]
    out = select_boxes(frames, LOW)
    assert [len(f) for f in out] == [1, 1, 1, 1, 1]
    # the same frames without the rule: nothing passes
    assert select_boxes(frames, TeacherSettings.first()) == [[], [], [], [], []]


def test_a_weak_person_with_one_neighbour_or_neighbours_elsewhere_is_dropped() -> None:
    weak = person(0.50, 0.40, 0.53, 0.50, score=0.35)
    elsewhere = person(0.80, 0.40, 0.83, 0.50, score=0.9)  # same kind, another place
    lonely = [[], [], [weak], [replace(weak, score=0.32)], []]  # one neighbour only
    assert select_boxes(lonely, LOW)[2] == []
    apart = [[elsewhere], [elsewhere], [weak], [elsewhere], [elsewhere]]
    assert select_boxes(apart, LOW)[2] == []
    # neighbours beyond the radius do not count
    far_in_time = [[weak], [], [], [weak], [], [], [weak]]
    assert select_boxes(far_in_time, LOW)[3] == []


def test_consistency_is_for_its_kinds_only_and_strong_boxes_always_pass() -> None:
    car = Box("car", 0.35, 0.4, 0.5, 0.5, 0.6)  # under the 0.4 vehicle threshold, steady over time
    strong = person(0.1, 0.4, 0.13, 0.5, score=0.9)
    frames = [[car], [car], [car, strong], [car], [car]]
    out = select_boxes(frames, LOW)
    assert out[2] == [strong]
    bike = Box("bicycle", 0.34, 0.4, 0.5, 0.45, 0.6)
    assert select_boxes([[bike]] * 5, LOW)[2] == [bike]
    # a neighbour under the low threshold does not hold anything (the cache keeps boxes from 0.3)
    low_too = replace(LOW, consistent_threshold=0.36)
    assert select_boxes([[replace(bike, score=0.35)]] * 5, low_too)[2] == []


def test_near_needs_similar_place_and_size() -> None:
    a = person(0.50, 0.40, 0.53, 0.50)
    assert near(a, person(0.51, 0.41, 0.54, 0.51))
    assert not near(a, person(0.60, 0.40, 0.63, 0.50))  # 0.1 apart, box 0.1 tall: too far at 0.5
    assert not near(a, person(0.50, 0.30, 0.53, 0.50))  # twice as tall


# ------------------------------------------------------------------------------------------ tiles


def test_tile_rects_cover_the_region_with_overlap() -> None:
    rects = tile_rects((0.0, 0.2, 1.0, 0.9), overlap=0.25)
    assert len(rects) == 4
    tw = 1.0 / 1.75
    assert rects[0] == pytest.approx((0.0, 0.2, tw, 0.2 + 0.7 / 1.75))
    assert rects[3][2:] == pytest.approx((1.0, 0.9))
    # neighbours share a quarter of a tile
    assert rects[0][2] - rects[1][0] == pytest.approx(0.25 * tw)
    with pytest.raises(ValueError):
        tile_rects((0, 0, 1, 1), overlap=1.0)


def test_tile_boxes_map_back_and_cut_boxes_are_dropped() -> None:
    rect = (0.5, 0.25, 1.0, 0.75)  # the right-hand lower quarter-ish: its left and top edges are inner
    b = tile_to_picture(person(0.2, 0.2, 0.4, 0.6), rect)
    assert b is not None and (b.x1, b.y1, b.x2, b.y2) == pytest.approx((0.6, 0.35, 0.7, 0.55))
    assert tile_to_picture(person(0.0, 0.2, 0.1, 0.6), rect) is None  # cut by the inner left edge
    assert tile_to_picture(person(0.2, 0.0, 0.3, 0.6), rect) is None  # cut by the inner top edge
    right = tile_to_picture(person(0.9, 0.2, 1.0, 0.6), rect)  # at the picture's own right edge: kept
    assert right is not None and right.x2 == pytest.approx(1.0)
    assert tile_to_picture(person(0.2, 0.2, 0.3, 1.0), rect) is None  # the bottom (0.75) is inner too


def test_nms_keeps_the_best_of_one_family_and_both_of_two() -> None:
    whole = person(0.50, 0.40, 0.53, 0.50, score=0.42)
    tile = person(0.502, 0.401, 0.532, 0.502, score=0.61)  # the same person, seen bigger in a tile
    other = person(0.70, 0.40, 0.73, 0.50, score=0.5)
    bike = Box("bicycle", 0.7, 0.50, 0.44, 0.53, 0.52)  # overlaps the person: another road user
    out = nms([whole, tile, other, bike])
    assert tile in out and whole not in out and other in out and bike in out and len(out) == 3
    car, truck = Box("car", 0.6, 0.1, 0.5, 0.3, 0.7), Box("truck", 0.5, 0.11, 0.5, 0.3, 0.7)
    assert nms([truck, car]) == [car]  # one vehicle


def test_merge_views_with_tiles_raises_a_missed_person() -> None:
    s = TeacherSettings.first(tiles=True)
    views = {
        "whole": [person(0.50, 0.40, 0.53, 0.50, score=0.42)],
        "tiles": [person(0.5, 0.4, 0.53, 0.5, 0.6)],
    }
    assert [b.score for b in merge_views(views, s)] == [0.6]
    assert [b.score for b in merge_views(views, TeacherSettings.first())] == [0.42]  # tiles off: ignored
    with pytest.raises(KeyError):
        merge_views({"whole": []}, s)  # asked for but not detected


def test_road_region_spans_the_road() -> None:
    g = geometry_for("project_video02")
    assert road_region(g, 0.3) == pytest.approx((0.0, g.top_y - 0.3, 1.0, g.bonnet_y))


# ------------------------------------------------------------------------------------------ mirror


def test_mirror_agreement_keeps_what_both_views_hold() -> None:
    a = person(0.10, 0.40, 0.14, 0.55, score=0.6)
    b = Box("car", 0.8, 0.60, 0.5, 0.80, 0.7)
    # the mirrored picture saw the person (in its own coordinates: x -> 1 - x) and a truck where the car is
    seen = [person(0.86, 0.41, 0.90, 0.55, score=0.4), Box("truck", 0.5, 0.2, 0.5, 0.4, 0.7)]
    back = unmirror(seen)
    assert back[0].x1 == pytest.approx(0.10) and back[0].x2 == pytest.approx(0.14)
    out = mirror_agree([a, b], back)
    assert [(o.kind, round(o.score, 3)) for o in out] == [("car", 0.65), ("person", 0.5)]
    assert [round(o.score, 3) for o in mirror_agree([a], back, score="max")] == [0.6]
    alone = person(0.40, 0.40, 0.44, 0.55)
    assert mirror_agree([alone], back) == []  # the mirror has nothing there
    assert mirror_agree([a], [Box("bicycle", 0.9, 0.10, 0.40, 0.14, 0.55)]) == []  # another family


def test_mirror_partner_serves_one_box() -> None:
    a = person(0.10, 0.40, 0.14, 0.55, score=0.9)
    a2 = person(0.101, 0.40, 0.141, 0.55, score=0.7)  # a duplicate box on the same person
    out = mirror_agree([a2, a], [person(0.10, 0.40, 0.14, 0.55, score=0.5)])
    assert len(out) == 1 and out[0].x1 == pytest.approx(0.10)  # the higher score got the partner
    assert iou(a, a2) > 0.9


def test_mirror_agreement_drops_a_weak_one_sided_box_in_merge_views() -> None:
    s = TeacherSettings.first(mirror="agree-mean")
    views = {"whole": [person(0.2, 0.4, 0.24, 0.55, 0.5)], "mirror": []}
    assert merge_views(views, s) == []
    # union keeps both views' boxes, the better of a pair once
    views = {"whole": [person(0.2, 0.4, 0.24, 0.55, 0.38)], "mirror": [person(0.76, 0.4, 0.8, 0.55, 0.56)]}
    (b,) = merge_views(views, replace(s, mirror="union"))
    assert b.score == 0.56 and b.x1 == pytest.approx(0.2)
    with pytest.raises(ValueError):
        TeacherSettings(mirror="yes")


# ------------------------------------------------------------------------------------------ geometry and labels


def test_street_geometry_v2_puts_a_far_streetcar_on_the_tracks_ahead() -> None:
    """The streetcar ahead on its own track (rails meet left of the picture's middle) was 'on the left'."""
    tram = Box("bus", 0.8, 0.40, 0.33, 0.51, 0.42)
    first = TeacherSettings.first()
    v1 = frame_objects([{"whole": [tram]}], first, geometry_for("street", "v1"))[0]
    v2 = frame_objects([{"whole": [tram]}], replace(first, geometry="v2"), geometry_for("street", "v2"))[0]
    assert v1[0].place == "left" and v2[0].place == "ahead"
    # the highway clips keep their geometry
    assert geometry_for("challenge03", "v2") == geometry_for("challenge03", "v1")
    with pytest.raises(ValueError):
        geometry_for("street", "v9")


def test_settings_digest_and_detection_key() -> None:
    first = TeacherSettings.first()
    assert first.digest() == replace(first, threads=2).digest()  # threads do not change the labels
    assert first.digest() != replace(first, tiles=True).digest()
    assert first.digest() == replace(first, consistent_radius=9, tile_overlap=0.1).digest()  # off: no matter
    assert first.digest() != TeacherSettings().digest()
    assert (
        replace(first, consistent_threshold=0.3).digest()
        != replace(first, consistent_threshold=0.3, consistent_radius=9).digest()
    )
    assert first.detection_key(geometry_for("street")) == ""  # the first cache keeps its name
    g = geometry_for("street", "v2")
    k = replace(first, tiles=True).detection_key(g)
    assert len(k) == 8 and k != replace(first, tiles=True, tile_overlap=0.1).detection_key(g)
    assert replace(first, tiles=True, person_threshold=0.3).detection_key(g) == k  # thresholds: same boxes
    d = TeacherSettings()  # the default: the variant chosen on the tuning frames
    assert (d.geometry, d.mirror, d.tiles, d.consistent_threshold) == ("v2", "union", False, 0.3)
    assert d.views() == ("whole", "mirror")
    assert first.views() == ("whole",) and TeacherSettings(tiles=True, mirror="union").views() == (
        "whole",
        "tiles",
        "mirror",
    )
    with pytest.raises(ValueError):
        TeacherSettings(consistent_threshold=0.2)  # under the cache score: those boxes are not cached


def _det(views: dict[str, list[list[Box]]] | None = None) -> ClipDetections:
    boxes = [[person(0.60, 0.40, 0.63, 0.52, score=0.4)] for _ in range(6)]
    return ClipDetections("street", 1, (640, 360), (52, 588), 30.0, list(range(6)), boxes, 1.0, views or {})


def test_label_records_name_their_teacher_and_need_their_views() -> None:
    det = _det()
    g = geometry_for("street", "v1")
    recs, stats = label_records(det, g, TeacherSettings.first(), window=3)
    assert all(r["teacher"] == TeacherSettings.first().digest() for r in recs["train"])
    assert stats["teacher"] == TeacherSettings.first().digest()
    assert all(r["caption"] == "clear road ahead" for r in recs["train"])  # 0.4 < the 0.45 person threshold
    held = replace(TeacherSettings.first(), consistent_threshold=0.35)
    recs2, _ = label_records(det, g, held, window=3)
    assert all("person" in r["caption"] for r in recs2["train"])  # held by its neighbours
    with pytest.raises(Exception, match="tiles"):
        label_records(det, g, replace(held, tiles=True), window=3)


def test_consistency_never_crosses_the_held_out_boundary() -> None:
    boxes = [
        [],
        [],
        [],
        [person(0.60, 0.40, 0.63, 0.52, score=0.4)],
        [person(0.60, 0.40, 0.63, 0.52, score=0.4)],
        [],
    ]
    det = replace(_det(), boxes=boxes)
    held = replace(
        TeacherSettings.first(), consistent_threshold=0.35, consistent_frames=1, consistent_radius=1
    )
    recs, _ = label_records(det, geometry_for("street", "v1"), held, window=1, held_out_from=4)
    # frame 3 (training) and frame 4 (held out) would hold each other; across the boundary they do not
    assert [r["caption"] for r in recs["train"] if not r["mirrored"]] == ["clear road ahead"] * 4
    assert [r["caption"] for r in recs["heldout"] if not r["mirrored"]] == ["clear road ahead"] * 2


def test_detections_json_round_trip_keeps_views() -> None:
    v = {"tiles": [[person(0.1, 0.2, 0.3, 0.4)] for _ in range(6)]}
    det = replace(_det(v), key="abcd1234")
    back = ClipDetections.from_json(det.to_json())
    assert back == det and back.frame_views(2)["tiles"] == v["tiles"][2]
    first = ClipDetections.from_json(_det().to_json())  # the first format: no views, no key
    assert first.views == {} and first.key == "" and "views" not in _det().to_json()


def test_an_opencv_without_the_tensorflow_reader_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from drivecap.errors import ModelError
    from drivecap.training.teacher import Teacher

    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow", raising=False)
    with pytest.raises(ModelError, match=r"ssd\.pb .*opencv-python-headless<5\.1") as err:
        Teacher(tmp_path / "ssd.pb", tmp_path / "ssd.pbtxt")
    assert "\n" not in str(err.value)
