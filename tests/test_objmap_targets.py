"""The per-position targets scripts/objmap_loco.py measures its object maps against (docs/caption-model.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "objmap_loco.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("objmap_loco", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["objmap_loco"] = mod
    spec.loader.exec_module(mod)
    return mod


def _record(
    box: list[float], mirrored: bool, kind: str = "car", distance: str = "close"
) -> dict[str, object]:
    # A 4:3 picture in a 16:9 frame: columns 160..1120 of 1280 hold the picture the boxes are fractions of.
    b = {"kind": kind, "score": 0.9, "box": box, "place": "left", "distance": distance}
    return {"size": [1280, 720], "picture_x": [160, 1120], "mirrored": mirrored, "raw_boxes": [b]}


def test_a_box_marks_the_positions_it_covers_through_the_picture_columns() -> None:
    m = _script()
    # The picture's left half, lower half: frame columns 160..640 of 1280 -> encoder x 0.125..0.5.
    t = m.box_targets(_record([0.0, 0.5, 0.5, 1.0], mirrored=False), 4, 8)
    car, close, person = (m.CHANNELS.index(c) for c in ("vehicle", "vehicle:close", "person"))
    assert t[car].sum() == 2 * 3  # rows 2-3, columns 1-3 (column 0 is the side bar; x 0.125 starts column 1)
    assert t[car, 2:, 1:4].all() and not t[car, :2].any() and not t[car, :, 0].any()
    assert (t[close] == t[car]).all() and not t[person].any()
    # Its mirror record (box mirrored in the picture, picture columns mirrored in the frame) is the mirror image.
    tm = m.box_targets(_record([0.5, 0.5, 1.0, 1.0], mirrored=True), 4, 8)
    assert (tm == t[:, :, ::-1]).all()


def test_a_far_box_smaller_than_a_position_still_marks_its_centre() -> None:
    m = _script()
    t = m.box_targets(_record([0.50, 0.40, 0.52, 0.43], mirrored=False, kind="person", distance="far"), 7, 7)
    person, close = m.CHANNELS.index("person"), m.CHANNELS.index("person:close")
    assert t[person].sum() == 1 and t[close].sum() == 0
    y, x = np.argwhere(t[person])[0]
    assert (y, x) == (2, 3)  # centre y 0.415 -> row 2 of 7; x (160 + 0.51 * 960) / 1280 = 0.5075 -> column 3


def test_the_ego_lane_zones_follow_the_lane_geometry_and_the_mirror() -> None:
    from drivecap.training.data import Sample

    m = _script()
    views = [Sample("challenge02", 0, False, "", {}, "train"), Sample("street", 0, False, "", {}, "train")]
    street_m = Sample("street", 0, True, "", {}, "train")
    # The street film's picture is columns 52..588 of 640; its mirror view's columns are mirrored in the frame.
    z = m.zone_masks(
        [*views, street_m], [(1280.0, 0.0, 1280.0), (640.0, 52.0, 588.0), (640.0, 52.0, 588.0)], 7, 7
    )
    ahead, left, right = 0, 1, 2
    assert not z[0, :, :3].any() and not z[0, :, 6].any()  # sky and bonnet rows belong to no zone
    assert z[0, ahead, 4, 3] and z[0, left, 4, 0] and z[0, right, 4, 6]
    assert (z[0].sum(axis=0) <= 1).all()  # a position is in one zone at most
    assert not z[1, :, :, 0].any() and not z[1, :, :, 6].any()  # the side bars are in none
    assert (z[2][[ahead, right, left]] == z[1][:, :, ::-1]).all()  # mirror view: left and right swap
