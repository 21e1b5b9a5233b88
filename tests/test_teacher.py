"""The labelling teacher: geometry, smoothing, light colour, lanes, copy-paste augmentation, `drivecap label`.

Made-up boxes and pictures for the rules; the real SSD on real still frames and a real clip (a few frames) for
the whole path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.captions.facts import Facts, SceneObject
from drivecap.captions.grammar import render
from drivecap.cli import main
from drivecap.training.augment import (
    Crop,
    augment_frame,
    augment_frame_detail,
    augmented_frames,
    build_crops,
    clean_crop_boxes,
    paste_vehicle,
)
from drivecap.training.geometry import Box, LaneGeometry, light_colour, picture_columns
from drivecap.training.lanes import frame_bend, shapes_from_bends
from drivecap.training.smoothing import flicker, smooth
from drivecap.training.teacher import (
    Image,
    Teacher,
    TeacherSettings,
    boxes_to_objects,
    facts_from_boxes,
    frame_objects,
)

GEOM = LaneGeometry()


def still(name: str) -> Image:
    """One of the real still dashcam frames."""
    img = cv2.imread(str(next(p for p in AssetStore().test_images() if p.name == name)))
    assert img is not None
    return cast(Image, img)


def flip(img: Image) -> Image:
    return cast(Image, cv2.flip(img, 1))


def box(kind: str, x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Box:
    return Box(kind, score, x1, y1, x2, y2)


# ------------------------------------------------------------------------------------------ geometry


def test_lane_trapezoid_places() -> None:
    assert GEOM.half_width(0.58) == pytest.approx(0.05)
    assert GEOM.half_width(1.0) == pytest.approx(0.40)
    assert GEOM.half_width(0.79) == pytest.approx(0.225)
    assert GEOM.place_of(0.5, 0.7) == "ahead"
    assert GEOM.place_of(0.3, 0.7) == "left"  # half-width at 0.7 is 0.15: the lane is 0.35..0.65
    assert GEOM.place_of(0.7, 0.7) == "right"
    assert GEOM.place_of(0.36, 0.7) == "ahead"


def test_boxes_get_place_and_distance_and_rules_drop_some() -> None:
    kept = boxes_to_objects(
        [
            box("car", 0.45, 0.55, 0.55, 0.70),  # ahead, 0.15 tall: close
            box("truck", 0.75, 0.56, 0.85, 0.62),  # right, far
            box("car", 0.05, 0.6, 0.2, 0.66),  # left, far
            box("car", 0.3, 0.8, 0.7, 1.0),  # starts below y=0.75: the bonnet
            box("person", 0.5, 0.6, 0.51, 0.62),  # 0.02 tall: too small
            box("car", 0.55, 0.6, 0.85, 0.75),  # straddles the lane edge, mostly outside: right
            box("car", 0.50, 0.6, 0.70, 0.75),  # straddles, more than half inside (lane 0.32..0.68): ahead
        ],
        GEOM,
    )
    got = [(b.kind, b.place, b.distance) for b in kept]
    assert got == [
        ("car", "ahead", "close"),
        ("truck", "right", "far"),
        ("car", "left", "far"),
        ("car", "right", "close"),
        ("car", "ahead", "close"),
    ]
    f = facts_from_boxes(kept)
    assert render(f) == "car close ahead , car close on the right , car on the left"


def test_frame_objects_thresholds_and_crowd_boxes() -> None:
    s = TeacherSettings.first(score_threshold=0.5, person_threshold=0.6)
    boxes = [
        box("car", 0.45, 0.6, 0.55, 0.7, score=0.45),  # below the vehicle threshold
        box("person", 0.45, 0.6, 0.47, 0.7, score=0.55),  # below the person threshold
        box("person", 0.1, 0.4, 0.9, 0.6, score=0.9),  # one box around a crowd
        box("person", 0.45, 0.55, 0.48, 0.7, score=0.7),
    ]
    kept = frame_objects([{"whole": boxes}], s, GEOM)[0]
    assert [(b.kind, b.score) for b in kept] == [("person", 0.7)]


def test_box_mirror() -> None:
    b = Box("car", 0.9, 0.1, 0.5, 0.3, 0.6, "left", "far").mirrored()
    assert (b.x1, b.x2, b.place) == (pytest.approx(0.7), pytest.approx(0.9), "right")
    assert Box.from_json(b.to_json()) == b


def test_picture_columns_cut_side_bars() -> None:
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(3):
        f = np.zeros((90, 160, 3), np.uint8)
        f[:, 20:140] = rng.integers(30, 255, (90, 120, 3), dtype=np.uint8)
        frames.append(f)
    assert picture_columns(frames) == (23, 137)
    full = [rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)]
    assert picture_columns(full) == (0, 160)


# ------------------------------------------------------------------------------------------ light colour


def _light(lit: int) -> np.ndarray:
    """A dark housing with three lamps; lamp ``lit`` (0 top red, 1 yellow, 2 bottom green) is on."""
    img = np.full((60, 24, 3), 30, np.uint8)
    colours = [(30, 30, 240), (20, 200, 240), (90, 230, 40)]  # BGR
    for i in range(3):
        c = colours[i] if i == lit else (40, 40, 40)
        cv2.circle(img, (12, 10 + 20 * i), 7, c, -1)
    return img


@pytest.mark.parametrize(("lit", "colour"), [(0, "red"), (1, "yellow"), (2, "green")])
def test_light_colour(lit: int, colour: str) -> None:
    assert light_colour(_light(lit)) == colour


def test_light_colour_unknown_when_nothing_is_lit() -> None:
    assert light_colour(_light(5)) == "unknown"
    assert light_colour(np.zeros((0, 0, 3), np.uint8)) == "unknown"


# ------------------------------------------------------------------------------------------ smoothing


def _f(*objs: tuple[str, str, str]) -> Facts:
    return Facts(tuple(SceneObject(k, p, d) for k, p, d in objs))


def test_smoothing_fills_dropouts_and_removes_blips() -> None:
    car = ("car", "right", "far")
    seq = (
        [_f(car)] * 4 + [_f()] + [_f(car)] * 4 + [_f()] * 4 + [_f(("person", "ahead", "close"))] + [_f()] * 4
    )
    out = smooth(seq, window=5)
    assert [render(f) for f in out[:9]] == ["car on the right"] * 9  # the one-frame dropout is filled
    assert all(render(f) == "clear road ahead" for f in out[10:])  # the one-frame person is gone
    assert flicker([render(f) for f in seq]) == pytest.approx(5 / 17)  # 18 frames, 5 changes
    assert flicker([render(f) for f in out]) < flicker([render(f) for f in seq])


def test_smoothing_keeps_a_vehicle_whose_kind_flickers() -> None:
    seq = [_f(("car", "ahead", "close")), _f(("truck", "ahead", "close"))] * 4 + [
        _f(("car", "ahead", "close"))
    ]
    out = smooth(seq, window=5)
    assert all(render(f) == "car close ahead" for f in out)


def test_smoothing_window_one_changes_nothing() -> None:
    seq = [_f(("car", "left", "far")), _f(), _f(("bus", "right", "close"))]
    assert smooth(seq, window=1) == seq


# ------------------------------------------------------------------------------------------ lanes


def _lines(bend: float) -> np.ndarray:
    """A grey road with two white markings converging to (0.5, 0.58), bent sideways by ``bend`` at the top."""
    h, w = 360, 640
    img = np.full((h, w, 3), 90, np.uint8)
    for side in (-1, 1):
        ys = np.linspace(0.61, 0.95, 200)
        depth = (ys - 0.58) / 0.42
        xs = 0.5 + side * 0.36 * depth + bend * (1 - depth) ** 2
        pts = np.stack([xs * w, ys * h], 1).astype(np.int32)
        cv2.polylines(img, [pts], False, (240, 240, 240), 3)
    return img


def test_lane_bend_sign_and_straight() -> None:
    straight, left, right = (
        frame_bend(_lines(0.0), GEOM),
        frame_bend(_lines(-0.08), GEOM),
        frame_bend(_lines(0.08), GEOM),
    )
    assert abs(straight) < 0.01
    assert left < -0.02 < 0.02 < right
    assert frame_bend(np.full((360, 640, 3), 90, np.uint8), GEOM) != frame_bend(
        _lines(0.0), GEOM
    )  # NaN: none


def test_road_shapes_median_and_hysteresis() -> None:
    bends = [0.0] * 10 + [-0.05] * 20 + [-0.015] * 5 + [0.0] * 20 + [float("nan")] * 20
    shapes = shapes_from_bends(bends)
    assert shapes[0] == "straight"
    assert shapes[25] == "curve left"
    assert shapes[33] == "curve left"  # -0.015 is past "leave" (0.012): still curving
    assert shapes[50] == "straight"
    assert shapes[-1] == "unknown"


def test_real_straight_road_is_not_a_curve() -> None:
    img = still("straight_lines1.jpg")
    b = frame_bend(img, GEOM)
    assert abs(b) < 0.02
    assert frame_bend(flip(img), GEOM) == pytest.approx(-b, abs=0.01)


# ------------------------------------------------------------------------------------------ real SSD


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    return Teacher.from_assets()


def test_ssd_teacher_on_a_real_frame_and_its_mirror(teacher: Teacher) -> None:
    img = still("test5.jpg")
    keys = facts_from_boxes(teacher.label(img, GEOM)).keys
    assert "vehicle:right:close" in keys
    assert not any(k.startswith("vehicle:ahead") or k.startswith("vehicle:left") for k in keys)
    mkeys = facts_from_boxes(teacher.label(flip(img), GEOM)).keys
    assert "vehicle:left:close" in mkeys
    assert not any(k.startswith("vehicle:right") for k in mkeys)


# ------------------------------------------------------------------------------------------ augmentation


def _crop(h: int = 60, w: int = 90) -> Crop:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 2] = 200  # a red block: easy to find where it went
    return Crop(img, "car", "other", 0, height=0.12, y_bottom=0.67, grey=False)


def _road(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(60, 120, (540, 960, 3), dtype=np.uint8)


def test_pasted_vehicle_is_in_the_ego_lane_at_perspective_scale() -> None:
    for seed in range(10):
        pic = _road(seed)
        rng = np.random.default_rng(seed)
        p = paste_vehicle(pic, _crop(), GEOM, rng)
        assert p is not None
        b = p.box
        # the teacher's own rule says "ahead" for the pasted box
        (again,) = boxes_to_objects([Box("car", 1.0, b.x1, b.y1, b.x2, b.y2)], GEOM)
        assert again.place == "ahead" == p.obj.place
        assert p.obj.distance == again.distance
        # perspective: height / (bottom - horizon) is the crop's own (0.12 / 0.09), within a pixel
        assert b.height / (b.y2 - GEOM.top_y) == pytest.approx(0.12 / 0.09, abs=2 / 540 / (b.y2 - GEOM.top_y))
        # the pixels really changed there, and only around there
        ph, pw = pic.shape[:2]
        inside = pic[int(b.y1 * ph) + 3 : int(b.y2 * ph) - 3, int(b.x1 * pw) + 3 : int(b.x2 * pw) - 3]
        assert inside[..., 2].mean() > 150
        assert (pic != _road(seed)).any(axis=2).sum() <= (b.x2 - b.x1) * pw * (b.y2 - b.y1) * ph + 1


def test_augment_frame_updates_facts_and_is_deterministic() -> None:
    facts = Facts((SceneObject("truck", "right", "far"),))
    frame = _road()
    a_img, a_facts = augment_frame(frame, facts, [_crop()], np.random.default_rng(3))
    b_img, b_facts = augment_frame(frame, facts, [_crop()], np.random.default_rng(3))
    assert np.array_equal(a_img, b_img) and a_facts == b_facts
    assert "vehicle:ahead" in a_facts.keys and "vehicle:right" in a_facts.keys
    assert render(a_facts).startswith("car")
    assert not np.array_equal(a_img, frame)
    assert np.array_equal(frame, _road())  # the input frame is not touched


def test_augment_avoids_existing_boxes_and_respects_the_look() -> None:
    # the whole lane is taken by a box: nothing can go there
    blocker = Box("truck", 0.9, 0.0, 0.5, 1.0, 0.9)
    img, pasted = augment_frame_detail(_road(), Facts(), [_crop()], np.random.default_rng(0), boxes=[blocker])
    assert pasted is None and np.array_equal(img, _road())
    # a black-and-white frame takes no colour crop
    grey = np.repeat(_road()[..., :1], 3, axis=2)
    _, pasted = augment_frame_detail(grey, Facts(), [_crop()], np.random.default_rng(0))
    assert pasted is None


def test_clean_crop_boxes() -> None:
    good = box("car", 0.6, 0.6, 0.7, 0.68)
    boxes = [
        good,
        box("car", 0.0, 0.6, 0.1, 0.68),  # cut by the picture edge
        box("person", 0.3, 0.5, 0.32, 0.6),  # not a vehicle
        box("car", 0.2, 0.6, 0.3, 0.68, score=0.4),  # unsure
        box("car", 0.4, 0.6, 0.5, 0.68),
        box("truck", 0.45, 0.58, 0.55, 0.7),  # overlaps the one before: neither is clean
    ]
    assert clean_crop_boxes(boxes) == [good]


# ------------------------------------------------------------------------------------------ the command


def test_label_command_on_a_real_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "labels"
    rc = main(["label", "--clips", "project_video01", "--stride", "55", "--window", "3", "--out", str(out)])
    assert rc == 0
    path = out / "heldout" / "project_video01.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["frame"] for r in recs] == [0, 0, 55, 55, 110, 110, 165, 165, 220, 220]
    assert [r["mirrored"] for r in recs[:2]] == [False, True]
    assert {r["split"] for r in recs} == {"heldout"}
    assert not (out / "project_video01.jsonl").exists()  # a held-out clip has no training file
    for orig, mirror in zip(recs[::2], recs[1::2], strict=True):
        f = Facts.from_json(orig["facts"])
        assert orig["caption"] == render(f)
        assert Facts.from_json(mirror["facts"]) == f.mirrored()
        assert len(mirror["raw_boxes"]) == len(orig["raw_boxes"])
    # this highway clip has traffic on the left in the teacher's eyes, and so on the right in the mirror
    assert any("vehicle:left" in Facts.from_json(r["facts"]).keys for r in recs[::2])
    assert any("vehicle:right" in Facts.from_json(r["facts"]).keys for r in recs[1::2])
    stats = json.loads((out / "stats.json").read_text())["project_video01"]
    assert stats["frames"] == {"train": 0, "heldout": 5}
    # a second run skips the labelled clip (and says so), --force labels again from the detection cache
    capsys.readouterr()
    assert main(["label", "--clips", "project_video01", "--stride", "55", "--out", str(out)]) == 0
    assert "already labelled" in capsys.readouterr().out
    assert (
        main(
            [
                "label",
                "--clips",
                "project_video01",
                "--stride",
                "55",
                "--window",
                "3",
                "--out",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert [json.loads(line) for line in path.read_text().splitlines()] == recs
    # labels carry their teacher; another teacher labels the clip again instead of reusing them
    assert {r["teacher"] for r in recs} == {TeacherSettings().digest()} == {stats["teacher"]}
    capsys.readouterr()
    first = ["label", "--clips", "project_video01", "--stride", "55", "--out", str(out), "--teacher", "first"]
    assert main(first) == 0
    assert "already labelled" not in capsys.readouterr().out
    again = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["teacher"] for r in again} == {TeacherSettings.first().digest()} != {TeacherSettings().digest()}
    assert (out / ".detections" / "project_video01.s55.json").is_file()  # the first teacher's cache name


def test_label_command_bad_arguments(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["label", "--clips", "nope", "--out", str(tmp_path)]) == 2
    assert "not a known clip" in capsys.readouterr().err
    assert main(["label", "--stride", "0", "--out", str(tmp_path)]) == 2
    assert main(["label", "--window", "4", "--out", str(tmp_path)]) == 2


def test_crops_and_augmented_frames_from_real_labels(tmp_path: Path) -> None:
    out = tmp_path / "labels"
    assert (
        main(["label", "--clips", "project_video02", "--stride", "25", "--no-lanes", "--out", str(out)]) == 0
    )
    crops = build_crops(out, ["project_video02"], per_clip=10, seed=1)
    assert crops, "the teacher finds clean cars in project_video02"
    assert all(c.kind in ("car", "truck", "bus") and not c.grey and c.image.shape[0] >= 8 for c in crops)
    first = list(augmented_frames(out, "project_video02", crops, n=4, seed=5))
    again = list(augmented_frames(out, "project_video02", crops, n=4, seed=5))
    assert first, "some frames take a pasted car"
    assert [a.frame for a in first] == [a.frame for a in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    for a in first:
        assert "vehicle:ahead" in a.facts.keys
        assert a.caption == render(a.facts)
        # crops of the same clip come from more than 2 s away: never the same car again
        assert a.crop_from[0] != "project_video02" or abs(a.crop_from[1] - a.frame) > 50
        (placed,) = boxes_to_objects([Box("car", 1.0, a.box.x1, a.box.y1, a.box.x2, a.box.y2)], GEOM)
        assert placed.place == "ahead"
