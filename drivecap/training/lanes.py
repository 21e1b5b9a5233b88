"""Road shape from lane markings: straight, curve left or curve right, for the teacher's labels.

Under perspective a straight marking stays a straight line in the image; a curving road bends it. So the
measure is the bend of the markings: thin bright lines (a horizontal top-hat picks out paint narrower than a
lane) are found inside a widened ego-lane trapezoid, a parabola ``x = a*y^2 + b*y + c`` is fitted to each side
(with outliers dropped), and ``bend = a * span^2`` is how far (in picture widths) the far end of the marking
leaves the straight line of its near end. Bends are smoothed over time (a median) and turned into a shape with
hysteresis, since a single frame's markings are noisy (dashes, shadows, glare).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from drivecap.training.geometry import LaneGeometry, read_frames
from drivecap.training.teacher import Image


@dataclass(frozen=True)
class LaneSettings:
    near_y: float = 0.92  # lowest row looked at (the bonnet and the very near road are below)
    far_margin: float = 0.03  # highest row looked at: this far below the horizon
    width_scale: float = 2.2  # look this many ego-lane half-widths either side of the centre
    tophat_frac: float = 0.025  # top-hat kernel width (picture widths): paint is narrower than this
    tophat_level: int = 22  # grey levels a marking stands above the road around it
    min_points: int = 60  # a side with fewer marking pixels gives no fit
    min_span: float = 0.15  # ... or with markings spanning less height than this (picture heights)
    max_scatter: float = 0.008  # median distance (picture widths) of a side's pixels from its fitted curve
    max_bend: float = 0.15  # a bigger bend is a mistracked side, not a road
    enter: float = 0.02  # |bend| above this (picture widths) starts a curve
    leave: float = 0.012  # ... and below this ends it
    median: int = 15  # frames in the running median of the bend


def _marking_mask(picture: Image, geom: LaneGeometry, s: LaneSettings) -> npt.NDArray[np.bool_]:
    import cv2

    w = picture.shape[1]
    grey = cv2.cvtColor(picture, cv2.COLOR_BGR2GRAY)
    k = max(3, int(s.tophat_frac * w) | 1)
    tophat = cv2.morphologyEx(grey, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (k, 1)))
    mask: npt.NDArray[np.bool_] = tophat > s.tophat_level
    return mask


def _track(
    mask: npt.NDArray[np.bool_], geom: LaneGeometry, s: LaneSettings, side: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Marking pixels of one side's lane line, followed up the picture slice by slice (sliding windows).

    The search starts where the near rows have the most marking pixels near the ego lane's edge; each slice
    up looks where a straight line towards the vanishing point would be, and re-centres on what it finds,
    so a curving line is followed and a car or a tree beside it is not."""
    h, w = mask.shape
    top = geom.top_y + s.far_margin
    y_lo = int(0.80 * h)
    y_hi = int(s.near_y * h)
    hw = geom.half_width(0.86)
    edge = geom.centre_x + side * hw
    a, b = int(max(0.0, edge - 0.6 * hw) * w), int(min(1.0, edge + 0.6 * hw) * w)
    hist = mask[y_lo:y_hi, a:b].sum(axis=0).astype(np.float64)
    if hist.size == 0 or hist.max() < 3:
        return np.empty(0), np.empty(0)
    # Prefer the marking nearest the lane edge to a bigger bright patch (bushes, a kerb) farther off.
    cols = (np.arange(a, b) + 0.5) / w
    score = hist * np.exp(-0.5 * ((cols - edge) / (0.3 * hw)) ** 2)
    x_last, y_last = float(cols[int(np.argmax(score))]), 0.86
    xs: list[npt.NDArray[np.float64]] = []
    ys: list[npt.NDArray[np.float64]] = []
    n_slices = 14
    edges = np.linspace(s.near_y, top, n_slices + 1)
    for k in range(n_slices):
        y0, y1 = edges[k + 1], edges[k]  # y0 above y1
        yc = 0.5 * (y0 + y1)
        # a straight marking heads for the vanishing point (centre_x, top_y)
        x_exp = geom.centre_x + (x_last - geom.centre_x) * (yc - geom.top_y) / max(1e-6, y_last - geom.top_y)
        margin = max(0.015, 0.3 * abs(x_exp - geom.centre_x))
        c0, c1 = int(max(0.0, x_exp - margin) * w), int(min(1.0, x_exp + margin) * w)
        r0, r1 = int(y0 * h), int(y1 * h)
        ry, rx = np.nonzero(mask[r0:r1, c0:c1])
        if rx.size >= 4:
            px = (rx + c0 + 0.5) / w
            py = (ry + r0 + 0.5) / h
            xs.append(px)
            ys.append(py)
            x_last, y_last = float(px.mean()), float(py.mean())
        else:
            x_last, y_last = x_exp, yc
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def _bend(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], s: LaneSettings
) -> tuple[float, int] | None:
    """Fitted bend of one side's marking pixels, or None when they do not make a usable line."""
    coef = None
    for _ in range(3):
        if x.size < s.min_points or float(y.max() - y.min()) < s.min_span:
            return None
        coef = np.polyfit(y, x, 2)
        resid = np.abs(np.polyval(coef, y) - x)
        keep = resid < max(0.01, 2.5 * float(np.median(resid)))
        if keep.all():
            break
        x, y = x[keep], y[keep]
    if coef is None or x.size < s.min_points:
        return None
    # A paint line is thin: scattered points (foliage, a shadow edge) are not a marking.
    if float(np.median(np.abs(np.polyval(coef, y) - x))) > s.max_scatter:
        return None
    span = float(y.max() - y.min())
    bend = float(coef[0]) * span * span
    if abs(bend) > s.max_bend:
        return None
    return bend, int(x.size)


def frame_bend(picture: Image, geom: LaneGeometry, s: LaneSettings | None = None) -> float:
    """The bend of the lane markings in one picture (picture widths; < 0 bends left), NaN when none found."""
    s = s or LaneSettings()
    mask = _marking_mask(picture, geom, s)
    fits = []
    for side in (-1, 1):
        got = _bend(*_track(mask, geom, s, side), s)
        if got is not None:
            fits.append(got)
    if not fits:
        return math.nan
    return sum(b * n for b, n in fits) / sum(n for _, n in fits)


def shapes_from_bends(bends: Sequence[float], s: LaneSettings | None = None) -> list[str]:
    """Per-frame bends -> straight / curve left / curve right / unknown (running median, then hysteresis)."""
    s = s or LaneSettings()
    arr = np.asarray(bends, dtype=np.float64)
    half = s.median // 2
    out: list[str] = []
    state = "unknown"
    for i in range(len(arr)):
        win = arr[max(0, i - half) : i + half + 1]
        win = win[~np.isnan(win)]
        if win.size < max(1, (2 * half + 1) // 3):
            state = "unknown"
            out.append(state)
            continue
        b = float(np.median(win))
        if state in ("curve left", "curve right"):
            still = b < -s.leave if state == "curve left" else b > s.leave
            if not still:
                state = "straight"
        if state in ("straight", "unknown"):
            state = "curve left" if b < -s.enter else "curve right" if b > s.enter else "straight"
        out.append(state)
    return out


def clip_road_shapes(
    path: Path,
    frames: Sequence[int],
    picture_x: tuple[int, int],
    geom: LaneGeometry,
    cache: Path | None = None,
    settings: LaneSettings | None = None,
) -> list[str]:
    """Road shape for each of ``frames`` of a video (bends cached in ``cache``: decoding is the slow part)."""
    bends: list[float] | None = None
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text())
        if data.get("frames") == list(frames) and data.get("picture_x") == list(picture_x):
            bends = [math.nan if b is None else float(b) for b in data["bends"]]
    if bends is None:
        from tqdm import tqdm

        wanted = set(frames)
        got: dict[int, float] = {}
        x0, x1 = picture_x
        stride = frames[1] - frames[0] if len(frames) > 1 else 1
        for i, frame in tqdm(
            read_frames(path, stride=stride, start=frames[0] if frames else 0),
            total=len(frames),
            desc=f"lanes {path.stem}",
            unit="frame",
            disable=None,
            leave=False,
        ):
            if i in wanted:
                got[i] = frame_bend(frame[:, x0:x1], geom, settings)
        bends = [got.get(f, math.nan) for f in frames]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.name}.tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "frames": list(frames),
                        "picture_x": list(picture_x),
                        "bends": [None if math.isnan(b) else round(b, 5) for b in bends],
                    }
                )
            )
            os.replace(tmp, cache)
    return shapes_from_bends(bends, settings)
