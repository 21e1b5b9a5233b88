"""Lane geometry per clip, detection boxes, the picture's columns and traffic-light colour: what the teacher's labelling stands on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from drivecap.errors import DrivecapError

#: COCO ids of the SSD-MobileNetV2 model (ASSETS.md) that matter to a driver.
COCO_KINDS: dict[int, str] = {
    1: "person",
    2: "bicycle",
    3: "car",
    4: "motorcycle",
    6: "bus",
    8: "truck",
    10: "traffic light",
    13: "stop sign",
}

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class LaneGeometry:
    """The ego lane and the size rules, in fractions of the picture (0,0 top left, 1,1 bottom right)."""

    top_y: float = 0.58  # horizon end of the trapezoid
    top_half_width: float = 0.05
    bottom_y: float = 1.0
    bottom_half_width: float = 0.40
    centre_x: float = 0.5
    close_height: float = 0.12  # a road user taller than this is close
    min_height: float = 0.03  # road users smaller than this are dropped (too far, or false alarms)
    min_light_height: float = 0.02  # lights and signs are small even when near
    bonnet_y: float = 0.75  # boxes whose top is below this are the ego car itself
    signal_half_width: float = 0.12  # lights/signs within this of the centre are "ahead"
    lane_markings: bool = True  # False: the road has no painted lanes (road shape is then unknown)

    def half_width(self, y: float) -> float:
        """Half-width of the ego lane at height ``y`` (linear between the ends; held above the horizon)."""
        t = (y - self.top_y) / (self.bottom_y - self.top_y)
        t = min(max(t, 0.0), 1.0)
        return self.top_half_width + t * (self.bottom_half_width - self.top_half_width)

    def place_of(self, x: float, y: float) -> str:
        """ahead / left / right of a point on the road."""
        hw = self.half_width(y)
        if x < self.centre_x - hw:
            return "left"
        if x > self.centre_x + hw:
            return "right"
        return "ahead"

    def box_height_at(self, y_bottom: float, height_at_bottom: float) -> float:
        """Perspective: an object's image height grows linearly with its distance below the horizon.

        ``height_at_bottom`` is the height it would have standing at the picture's bottom edge."""
        return max(0.0, (y_bottom - self.top_y) / (self.bottom_y - self.top_y)) * height_at_bottom


#: Geometry per clip where the default does not fit (street film: a streetcar's camera sits higher, people
#: are near, and the 1906 street has no lane markings; its rails fooled the lane finder into curves on a
#: straight street, so its road shape is left unknown).
CLIP_GEOMETRY: dict[str, LaneGeometry] = {
    "street": LaneGeometry(
        top_y=0.45,
        top_half_width=0.04,
        bottom_half_width=0.38,
        bonnet_y=0.92,
        close_height=0.22,
        lane_markings=False,
    ),
}


#: Version "v2" (issue 11 item 3): the street film's ego lane follows the streetcar's own tracks, measured on
#: training frames: the rails meet at about (0.46, 0.29) of the picture and their centre at the bottom edge is at
#: 0.44, left of the picture's middle; the lane is the streetcar's width (1.75 track gauges) with a margin for
#: loose boxes. The first geometry ("v1") centred the lane and put its far end at 0.45, so a streetcar far ahead
#: on the tracks fell "on the left" of a lane that, up there, was right of the rails.
CLIP_GEOMETRY_V2: dict[str, LaneGeometry] = {
    **CLIP_GEOMETRY,
    "street": replace(
        CLIP_GEOMETRY["street"], top_y=0.32, top_half_width=0.025, bottom_half_width=0.32, centre_x=0.445
    ),
}

GEOMETRIES: dict[str, dict[str, LaneGeometry]] = {"v1": CLIP_GEOMETRY, "v2": CLIP_GEOMETRY_V2}
DEFAULT_GEOMETRY = "v2"  # the first teacher's labels: "v1" (TeacherSettings.first())


def geometry_for(clip: str, version: str = DEFAULT_GEOMETRY) -> LaneGeometry:
    if version not in GEOMETRIES:
        raise ValueError(f"unknown lane geometry version {version!r}; known: {', '.join(GEOMETRIES)}")
    return GEOMETRIES[version].get(clip, LaneGeometry())


@dataclass(frozen=True)
class Box:
    """One detection in picture fractions, with what the teacher made of it."""

    kind: str
    score: float
    x1: float
    y1: float
    x2: float
    y2: float
    place: str = ""
    distance: str = ""
    colour: str = ""

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "score": round(self.score, 3),
            "box": [round(v, 4) for v in (self.x1, self.y1, self.x2, self.y2)],
            "place": self.place,
            "distance": self.distance,
        }
        if self.colour:
            out["colour"] = self.colour
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Box:
        x1, y1, x2, y2 = (float(v) for v in d["box"])
        return cls(
            str(d["kind"]),
            float(d["score"]),
            x1,
            y1,
            x2,
            y2,
            str(d.get("place", "")),
            str(d.get("distance", "")),
            str(d.get("colour", "")),
        )

    def mirrored(self) -> Box:
        place = {"left": "right", "right": "left"}.get(self.place, self.place)
        return replace(self, x1=1.0 - self.x2, x2=1.0 - self.x1, place=place)


# ------------------------------------------------------------------------------------------ picture area


def picture_columns(frames: Sequence[Image], dark: int = 24) -> tuple[int, int]:
    """Columns [x0, x1) that hold the picture: black side bars (4:3 film in a 16:9 frame) are cut off.

    Decided from several frames together, since a dark scene edge in one frame looks like a bar."""
    if not frames:
        raise ValueError("picture_columns needs at least one frame")
    w = frames[0].shape[1]
    col_max = np.max(np.stack([f.max(axis=(0, 2)) for f in frames]), axis=0)
    bright = np.flatnonzero(col_max > dark)
    if bright.size == 0:
        return 0, w
    x0, x1 = int(bright[0]), int(bright[-1]) + 1
    # Only substantial bars count; anything else is the scene itself.
    if x0 < 0.05 * w or (w - x1) < 0.05 * w:
        return 0, w
    # The bar's edge is a soft ramp a few pixels wide (video scaling): keep it out of the picture.
    return x0 + 3, x1 - 3


# ------------------------------------------------------------------------------------------ light colour


def light_colour(crop_bgr: Image) -> str:
    """red / yellow / green / unknown from the lit pixels of a traffic-light crop (HSV hue of bright,
    saturated pixels; a lamp that is on is the brightest coloured thing in the housing)."""
    import cv2

    if crop_bgr.size == 0 or crop_bgr.shape[0] < 3 or crop_bgr.shape[1] < 2:
        return "unknown"
    hsv = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2HSV)
    h, s, v = hsv[..., 0].astype(int), hsv[..., 1].astype(int), hsv[..., 2].astype(int)
    lit = (s > 90) & (v > 140)
    if lit.sum() < max(3, 0.02 * lit.size):
        return "unknown"
    hue = h[lit]  # OpenCV hue is 0..179
    counts = {
        "red": int(((hue <= 8) | (hue >= 165)).sum()),
        "yellow": int(((hue >= 12) & (hue <= 34)).sum()),
        "green": int(((hue >= 45) & (hue <= 100)).sum()),
    }
    best = max(counts, key=lambda k: counts[k])
    if counts[best] < 0.5 * lit.sum():
        return "unknown"
    return best


# ------------------------------------------------------------------------------------------ clips


def read_frames(
    path: Path, stride: int = 1, start: int = 0, stop: int | None = None
) -> Iterator[tuple[int, Image]]:
    """(index, BGR frame) for every ``stride``-th frame of a video in [start, stop)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DrivecapError(f"cannot open video {path}; is it a real video file?")
    try:
        i = 0
        while stop is None or i < stop:
            ok = cap.grab()
            if not ok:
                break
            if i >= start and (i - start) % stride == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                yield i, cast(Image, frame)
            i += 1
    finally:
        cap.release()
