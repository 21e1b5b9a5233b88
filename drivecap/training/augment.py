"""Copy-paste augmentation: vehicle crops from other frames pasted into the ego lane, labels updated.

"A vehicle in my lane" is rare in the dashcam clips (a few percent of frames), too rare to learn. A clean
teacher box of a car, truck or bus (high score, not cut by the picture edge, not overlapping another box) is
cut out of its frame and pasted into the ego lane of another frame. The scale follows perspective: an object's
image height grows linearly with its distance below the horizon, so the crop's own height and position in its
source frame say how tall it must be at the new position. The paste avoids the boxes already in the frame (no
impossible occlusion) and is blended with a feathered mask so its edges are not a give-away.

Everything is deterministic given the seed: the same seed, labels and videos give the same frames.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.captions.facts import Facts, SceneObject
from drivecap.training.geometry import Box, LaneGeometry, geometry_for, read_frames
from drivecap.training.teacher import Image

log = logging.getLogger(__name__)

PASTE_KINDS = ("car", "truck", "bus")


@dataclass(frozen=True)
class Crop:
    """A vehicle cut out of a frame, and where it stood there (picture fractions, source clip geometry)."""

    image: Image  # BGR pixels of the box
    kind: str
    clip: str
    frame: int
    height: float  # box height as a fraction of the source picture height
    y_bottom: float  # box bottom in the source picture
    grey: bool  # from a black-and-white film

    def height_at_bottom(self, geom: LaneGeometry) -> float:
        """Height this vehicle would have with its bottom on the picture's bottom edge (perspective).

        Measured on the dashcam clips, a car's box height is about 1.3x its bottom's distance below the
        trapezoid top; the ratio is clamped so a crop whose bottom sat near the horizon (where a pixel of
        error is a large share) cannot make a giant."""
        depth = (self.y_bottom - geom.top_y) / (geom.bottom_y - geom.top_y)
        h0 = min(
            max(self.height / max(depth, 1e-3), 0.9 * (geom.bottom_y - geom.top_y)),
            2.2 * (geom.bottom_y - geom.top_y),
        )
        return h0


@dataclass(frozen=True)
class Pasted:
    """Where a crop went: its box in picture fractions, and the facts object it adds."""

    box: Box
    obj: SceneObject
    crop: Crop


def is_grey(image: Image) -> bool:
    """A black-and-white picture (the street film): colour channels agree everywhere."""
    small = image[::8, ::8].astype(np.int16)
    return bool(
        np.abs(small[..., 0] - small[..., 2]).mean() < 4 and np.abs(small[..., 1] - small[..., 2]).mean() < 4
    )


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def _overlap(a: Box, b: Box) -> float:
    """Share of the smaller box covered by the other."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    small = min((a.x2 - a.x1) * (a.y2 - a.y1), (b.x2 - b.x1) * (b.y2 - b.y1))
    return ix * iy / small if small > 0 else 0.0


def clean_crop_boxes(
    boxes: Sequence[Box],
    geom: LaneGeometry | None = None,
    min_score: float = 0.6,
    min_height: float = 0.06,
    max_height: float = 0.45,
) -> list[Box]:
    """The boxes worth cutting out: confident vehicles, whole, big enough, not touching another box, standing
    clearly below the horizon (so their perspective scale can be trusted)."""
    geom = geom or LaneGeometry()
    out = []
    for b in boxes:
        if b.kind not in PASTE_KINDS or b.score < min_score or b.y2 < geom.top_y + 0.06:
            continue
        if not (min_height <= b.height <= max_height) or b.x1 < 0.01 or b.x2 > 0.99 or b.y2 > 0.98:
            continue
        aspect = (b.x2 - b.x1) / b.height
        if not 0.7 <= aspect <= 2.6:
            continue
        if any(o is not b and _overlap(b, o) > 0.05 for o in boxes):
            continue
        out.append(b)
    return out


def _feather(h: int, w: int) -> npt.NDArray[np.float32]:
    """Alpha mask: 1 inside, falling to 0 over the outer ~12% (softens the seam of a rectangular cut)."""
    ry = np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / max(1.0, 0.12 * h)
    rx = np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / max(1.0, 0.12 * w)
    m = np.clip(np.minimum(ry[:, None], rx[None, :]), 0.0, 1.0)
    return m.astype(np.float32)


def paste_vehicle(
    picture: Image,
    crop: Crop,
    geom: LaneGeometry,
    rng: np.random.Generator,
    avoid: Sequence[Box] = (),
    tries: int = 20,
) -> Pasted | None:
    """Pastes ``crop`` into the ego lane of ``picture`` (in place). None when no place fits."""
    import cv2

    h, w = picture.shape[:2]
    h0 = crop.height_at_bottom(geom)
    for _ in range(tries):
        # Bottom of the pasted vehicle: somewhere on the road between just below the horizon and the bonnet.
        y2 = float(rng.uniform(geom.top_y + 0.06, min(geom.bonnet_y + 0.12, geom.bottom_y - 0.02)))
        bh = geom.box_height_at(y2, h0)
        ch, cw = crop.image.shape[:2]
        # Not much bigger than the crop's own pixels: an upscaled blur is easy to tell from a real car.
        if bh < geom.min_height * 1.3 or bh > 0.6 or bh * h > 1.5 * ch:
            continue
        bw = bh * h / (ch / cw) / w  # same aspect ratio in pixels
        cx = geom.centre_x + float(rng.uniform(-0.4, 0.4)) * geom.half_width(y2)
        box = Box(crop.kind, 1.0, cx - bw / 2, y2 - bh, cx + bw / 2, y2)
        if box.x1 < 0 or box.x2 > 1 or box.y1 < 0 or box.y1 > geom.bonnet_y:
            continue
        if any(_overlap(box, o) > 0.05 for o in avoid):
            continue
        px1, py1 = round(box.x1 * w), round(box.y1 * h)
        pw, ph = max(2, round(bw * w)), max(2, round(bh * h))
        if px1 + pw > w or py1 + ph > h:
            continue
        patch = cv2.resize(
            crop.image, (pw, ph), interpolation=cv2.INTER_AREA if pw < cw else cv2.INTER_LINEAR
        )
        alpha = _feather(ph, pw)[..., None]
        region = picture[py1 : py1 + ph, px1 : px1 + pw].astype(np.float32)
        picture[py1 : py1 + ph, px1 : px1 + pw] = (
            (alpha * patch + (1 - alpha) * region).round().astype(np.uint8)
        )
        box = Box(crop.kind, 1.0, px1 / w, py1 / h, (px1 + pw) / w, (py1 + ph) / h)
        dist = "close" if box.height > geom.close_height else "far"
        return Pasted(
            Box(box.kind, 1.0, box.x1, box.y1, box.x2, box.y2, "ahead", dist),
            SceneObject(crop.kind, "ahead", dist),
            crop,
        )
    return None


def augment_frame(
    frame: Image,
    facts: Facts,
    crops: Sequence[Crop],
    rng: np.random.Generator,
    geom: LaneGeometry | None = None,
    boxes: Sequence[Box] = (),
    picture_x: tuple[int, int] | None = None,
) -> tuple[Image, Facts]:
    """A copy of ``frame`` with one vehicle pasted into the ego lane, and the facts that say so.

    ``boxes`` (the frame's teacher boxes, picture fractions) are avoided; ``picture_x`` are the picture's
    columns in the frame (side bars). Crops of the other look (black-and-white film vs colour) are not used.
    When nothing fits, the frame and facts come back unchanged."""
    out, pasted = augment_frame_detail(frame, facts, crops, rng, geom, boxes, picture_x)
    return out, (facts if pasted is None else Facts((*facts.objects, pasted.obj), facts.road))


def augment_frame_detail(
    frame: Image,
    facts: Facts,
    crops: Sequence[Crop],
    rng: np.random.Generator,
    geom: LaneGeometry | None = None,
    boxes: Sequence[Box] = (),
    picture_x: tuple[int, int] | None = None,
) -> tuple[Image, Pasted | None]:
    """As :func:`augment_frame`, returning what was pasted (box in picture fractions) instead of the facts."""
    geom = geom or LaneGeometry()
    out = frame.copy()
    x0, x1 = picture_x or (0, frame.shape[1])
    picture = out[:, x0:x1]
    grey = is_grey(picture)
    usable = [c for c in crops if c.grey == grey]
    if not usable:
        return out, None
    crop = usable[int(rng.integers(len(usable)))]
    pasted = paste_vehicle(picture, crop, geom, rng, avoid=[b for b in boxes if b.kind != "traffic light"])
    return out, pasted


# ------------------------------------------------------------------------------------------ from labels


def read_labels(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_crops(
    labels_dir: Path, clips: Sequence[str], per_clip: int = 60, seed: int = 0, home: Path | None = None
) -> list[Crop]:
    """Vehicle crops from the training labels of ``clips`` (unmirrored frames), at most ``per_clip`` each,
    spread over the clip (consecutive frames show the same vehicle)."""
    from drivecap.assets import AssetStore

    store = AssetStore(home) if home else AssetStore()
    crops: list[Crop] = []
    for clip in clips:
        path = labels_dir / f"{clip}.jsonl"
        if not path.is_file():
            log.warning("no labels for %s in %s: no crops from it", clip, labels_dir)
            continue
        wanted: dict[int, tuple[list[Box], tuple[int, int]]] = {}
        for r in read_labels(path):
            if r["mirrored"] or r["split"] != "train":
                continue
            boxes = [Box.from_json(b) for b in r["raw_boxes"]]
            good = clean_crop_boxes(boxes, geometry_for(clip))
            if good:
                wanted[int(r["frame"])] = (good, (int(r["picture_x"][0]), int(r["picture_x"][1])))
        if not wanted:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(clip.encode())])
        frames = sorted(wanted)
        # One crop per chosen frame, the frames spread out so crops are not the same car many times.
        take = sorted(rng.choice(frames, size=min(per_clip, len(frames)), replace=False).tolist())
        want = set(take)
        for i, img in read_frames(store.clip(clip), start=take[0], stop=take[-1] + 1):
            if i not in want:
                continue
            good, (x0, x1) = wanted[i]
            pic = img[:, x0:x1]
            ph, pw = pic.shape[:2]
            b = good[int(rng.integers(len(good)))]
            cut = pic[
                int(b.y1 * ph) : int(np.ceil(b.y2 * ph)), int(b.x1 * pw) : int(np.ceil(b.x2 * pw))
            ].copy()
            if cut.shape[0] < 8 or cut.shape[1] < 8:
                continue
            crops.append(Crop(cut, b.kind, clip, i, b.height, b.y2, is_grey(pic)))
    log.info("%d vehicle crops from %d clips", len(crops), len(clips))
    return crops


@dataclass
class AugmentedFrame:
    clip: str
    frame: int  # the source frame the vehicle was pasted into
    image: Image  # full frame (side bars kept), BGR
    facts: Facts
    caption: str
    box: Box  # the pasted vehicle, picture fractions
    crop_from: tuple[str, int]  # (clip, frame) the vehicle came from


def augmented_frames(
    labels_dir: Path,
    clip: str,
    crops: Sequence[Crop],
    n: int,
    seed: int = 0,
    home: Path | None = None,
) -> Iterator[AugmentedFrame]:
    """``n`` augmented frames of one training clip, deterministic in ``seed``.

    Frames are drawn from the clip's unmirrored training frames without a vehicle ahead; each gets one vehicle
    from a crop of another clip, or of this clip more than 2 s away (not the same car again). The facts are
    the frame's smoothed teacher facts plus the pasted vehicle. Mirror them yourself (flip the image,
    ``facts.mirrored()``) if you train on mirrors."""
    from drivecap.assets import AssetStore
    from drivecap.captions.grammar import render

    store = AssetStore(home) if home else AssetStore()
    recs = [
        r for r in read_labels(labels_dir / f"{clip}.jsonl") if not r["mirrored"] and r["split"] == "train"
    ]
    pool = [r for r in recs if "vehicle:ahead" not in Facts.from_json(r["facts"]).keys]
    if not pool or n <= 0:
        return
    rng = np.random.default_rng([seed, zlib.crc32(clip.encode()), 7])
    pick = sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False).tolist())
    chosen = {int(pool[i]["frame"]): pool[i] for i in pick}
    geom = geometry_for(clip)
    timed = next((r for r in recs if r.get("t")), None)
    fps = float(timed["frame"]) / float(timed["t"]) if timed else 25.0
    for i, img in read_frames(store.clip(clip), start=min(chosen), stop=max(chosen) + 1):
        r = chosen.get(i)
        if r is None:
            continue
        usable = [c for c in crops if c.clip != clip or abs(c.frame - i) > 2 * fps]
        facts = Facts.from_json(r["facts"])
        boxes = [Box.from_json(b) for b in r["raw_boxes"]]
        px = (int(r["picture_x"][0]), int(r["picture_x"][1]))
        frng = np.random.default_rng([seed, zlib.crc32(clip.encode()), i])
        out, pasted = augment_frame_detail(img, facts, usable, frng, geom, boxes, px)
        if pasted is None:
            continue
        new = Facts((*facts.objects, pasted.obj), facts.road)
        yield AugmentedFrame(
            clip, i, out, new, render(new), pasted.box, (pasted.crop.clip, pasted.crop.frame)
        )
