"""More than one look per frame for the teacher: tiles, the mirrored picture, and neighbouring frames.

Three rules, each switched by a ``TeacherSettings`` field (see ``teacher.py``), all on boxes in picture
fractions:

* **tiles** (``tiles``): the SSD sees a 300x300 squeeze of the whole picture, so a person 20-40 m away is a
  few pixels tall. The road area is also cut into 2x2 overlapping tiles, each given to the SSD at the frame's
  own resolution; tile boxes are mapped back to picture coordinates, boxes cut by an inner tile edge are dropped
  (another tile or the whole picture sees that object whole) and everything is merged with the whole-picture
  boxes by a same-family non-maximum suppression (the highest score of overlapping boxes stays).
* **mirror agreement** (``mirror``): the mirrored whole picture is detected too; a whole-picture box is kept
  only when the mirrored view has a box of the same family at about the same place, and its score becomes the
  mean (``agree-mean``) or the max (``agree-max``) of the two; or (``union``) the boxes of both views are
  merged by the same NMS as tiles, a test-time augmentation that can only add. Tile boxes are merged after that and are not checked against a mirror (tiling
  the mirror as well would double the tiles' cost again).
* **temporal consistency** (``consistent_threshold``): boxes of ``consistent_kinds`` (by default every road
  user) between ``consistent_threshold`` and their usual threshold are accepted when the same kind is found near the same place in at least
  ``consistent_frames`` of the ``consistent_radius`` frames either side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from drivecap.captions.facts import family
from drivecap.training.geometry import Box, LaneGeometry

if TYPE_CHECKING:
    from drivecap.training.teacher import TeacherSettings

Rect = tuple[float, float, float, float]  # x1, y1, x2, y2 in picture fractions

#: The views a frame can have in the detection cache.
VIEWS = ("whole", "tiles", "mirror")


# ------------------------------------------------------------------------------------------ overlap


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not touch)."""
    iw = min(a.x2, b.x2) - max(a.x1, b.x1)
    ih = min(a.y2, b.y2) - max(a.y1, b.y1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def nms(boxes: Sequence[Box], iou_threshold: float = 0.5) -> list[Box]:
    """Same-family non-maximum suppression: of boxes overlapping by ``iou_threshold`` or more, the highest
    score stays (ties: the earlier box). A car and a truck over the same vehicle are one vehicle; a person on
    a bicycle is two road users."""
    order = sorted(range(len(boxes)), key=lambda i: (-boxes[i].score, i))
    kept: list[Box] = []
    for i in order:
        b = boxes[i]
        if all(family(k.kind) != family(b.kind) or iou(k, b) < iou_threshold for k in kept):
            kept.append(b)
    return kept


# ------------------------------------------------------------------------------------------ tiles


def tile_rects(region: Rect, overlap: float = 0.25) -> list[Rect]:
    """Four rectangles covering ``region`` in 2x2, neighbours sharing ``overlap`` of a tile's width/height."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile overlap must be in [0, 1), got {overlap}")
    x1, y1, x2, y2 = region
    tw = (x2 - x1) / (2.0 - overlap)
    th = (y2 - y1) / (2.0 - overlap)
    out = []
    for ty in (y1, y2 - th):
        for tx in (x1, x2 - tw):
            out.append((tx, ty, tx + tw, ty + th))
    return out


def road_region(geom: LaneGeometry, above: float) -> Rect:
    """The part of the picture the tiles cover: full width, from ``above`` over the horizon to the bonnet."""
    return (0.0, max(0.0, geom.top_y - above), 1.0, min(1.0, geom.bonnet_y))


def tile_to_picture(b: Box, rect: Rect, edge: float = 0.01) -> Box | None:
    """A box in tile fractions -> picture fractions; None when the box touches an edge of the tile that is
    not an edge of the picture (the object goes on outside the tile: its box is a part of it)."""
    x1, y1, x2, y2 = rect
    w, h = x2 - x1, y2 - y1
    if (b.x1 <= edge and x1 > 0.0) or (b.x2 >= 1.0 - edge and x2 < 1.0):
        return None
    if (b.y1 <= edge and y1 > 0.0) or (b.y2 >= 1.0 - edge and y2 < 1.0):
        return None
    return replace(b, x1=x1 + b.x1 * w, y1=y1 + b.y1 * h, x2=x1 + b.x2 * w, y2=y1 + b.y2 * h)


# ------------------------------------------------------------------------------------------ mirror


def unmirror(boxes: Sequence[Box]) -> list[Box]:
    """Boxes found on the mirrored picture, in the coordinates of the picture itself."""
    return [replace(b, x1=1.0 - b.x2, x2=1.0 - b.x1) for b in boxes]


def mirror_agree(
    boxes: Sequence[Box], mirror: Sequence[Box], iou_threshold: float = 0.4, score: str = "mean"
) -> list[Box]:
    """The boxes of one view that the other view (``mirror``, already in picture coordinates) also holds: a
    box of the same family with IoU >= ``iou_threshold``. Each is matched to its best partner (greedily, by
    score), a partner serves one box only, and the kept box's score is the ``mean`` or ``max`` of the two."""
    if score not in ("mean", "max"):
        raise ValueError(f"mirror score must be 'mean' or 'max', got {score!r}")
    free = list(range(len(mirror)))
    out: list[Box] = []
    for b in sorted(boxes, key=lambda x: -x.score):
        best, best_iou = -1, iou_threshold
        for j in free:
            m = mirror[j]
            if family(m.kind) != family(b.kind):
                continue
            v = iou(b, m)
            if v >= best_iou:
                best, best_iou = j, v
        if best < 0:
            continue
        free.remove(best)
        s2 = mirror[best].score
        out.append(replace(b, score=(b.score + s2) / 2 if score == "mean" else max(b.score, s2)))
    return out


# ------------------------------------------------------------------------------------------ merging views


def merge_views(views: Mapping[str, Sequence[Box]], settings: TeacherSettings) -> list[Box]:
    """One frame's boxes from its cached views, as the settings ask (views they do not ask for are ignored;
    a view they ask for must be there)."""
    boxes = list(views["whole"])
    if settings.mirror == "union":
        boxes = nms([*boxes, *unmirror(views["mirror"])], settings.nms_iou)
    elif settings.mirror != "off":
        boxes = mirror_agree(boxes, unmirror(views["mirror"]), settings.mirror_iou, settings.mirror[6:])
    if settings.tiles:
        boxes = nms([*boxes, *views["tiles"]], settings.nms_iou)
    return boxes


# ------------------------------------------------------------------------------------------ time


def threshold(kind: str, settings: TeacherSettings) -> float:
    """The usual SSD score a box of this kind needs."""
    if kind == "person":
        return settings.person_threshold
    if kind in ("traffic light", "stop sign"):
        return settings.signal_threshold
    return settings.score_threshold


def near(a: Box, b: Box, tolerance: float = 0.5) -> bool:
    """Same kind at about the same place: bottom centres within ``tolerance`` of the taller box's height,
    and heights within a factor of two."""
    h = max(a.height, b.height)
    if h <= 0 or min(a.height, b.height) < 0.5 * h:
        return False
    return (
        abs(0.5 * (a.x1 + a.x2) - 0.5 * (b.x1 + b.x2)) <= tolerance * h and abs(a.y2 - b.y2) <= tolerance * h
    )


def select_boxes(frames: Sequence[Sequence[Box]], settings: TeacherSettings) -> list[list[Box]]:
    """Per frame, the boxes that pass their score threshold; with ``consistent_threshold`` set, also the boxes
    of ``consistent_kinds`` between it and their threshold that are held by their neighbours (see the module docstring).
    A neighbour counts when it has a box of the same kind, at ``consistent_threshold`` or more, near it."""
    low = settings.consistent_threshold
    kinds = set(settings.consistent_kinds)
    out: list[list[Box]] = []
    r = settings.consistent_radius
    for i, bs in enumerate(frames):
        kept = []
        for b in bs:
            if b.score >= threshold(b.kind, settings):
                kept.append(b)
                continue
            if low is None or b.kind not in kinds or b.score < low:
                continue
            support = 0
            for j in range(max(0, i - r), min(len(frames), i + r + 1)):
                if j != i and any(
                    o.kind == b.kind and o.score >= low and near(b, o, settings.consistent_tolerance)
                    for o in frames[j]
                ):
                    support += 1
            if support >= settings.consistent_frames:
                kept.append(b)
        out.append(kept)
    return out
