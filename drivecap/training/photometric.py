"""Image-space augmentation of a training frame before the encoder: zoom-crop, light, grey, blur, JPEG.

Issue 11 item 2. The caption decoder learns from encoder maps of training frames; these ops make more views of
each frame whose captions stay true, so the same facts are learnt under other exposure, lenses and codecs.

What keeps the labels true:

- Brightness, contrast, gamma, blur and JPEG change no object's size or position: every fact survives.
  (Blur sigma is in pixels of the image given: on a 720p frame 1.5 px is under half a pixel of the encoder's
  224 input, a mild effect; JPEG is done at full size, as the camera does.)
- Grayscale matches the black-and-white street film, whose labels never name a light colour. On a colour frame
  whose facts name a light's colour (``light:red``...) grey would make that fact unseeable: pass
  ``keep_colour=True`` (see :func:`facts_need_colour`) and grey is left out for that frame.
- The zoom-crop changes apparent size, and size is what "close" means (a road user taller than
  ``LaneGeometry.close_height``, 0.12 of the picture, 0.22 in the street film; a light taller than half that).
  Only zoom-in (no border appears) and at most ``MAX_ZOOM`` = 1.12: a far object can look close only if it was
  already within 12% of the threshold (0.107-0.12 of the picture height), and a close one never looks far.
  A stronger zoom widens that band of wrong "far" labels; 1.12 is the cap.
- The zoom's centre is jittered, which is also the shift. Place (left / ahead / right) is where a box's bottom
  centre stands against the ego-lane trapezoid, fixed in the picture, so moving the picture moves objects
  across the lane edge. The lane is narrowest at its far end (half-width 0.05 of the picture, 0.025 for the
  street film's tracks), hence the small defaults: horizontal 2%, vertical 3% (``MAX_SHIFT`` = 3%). The window
  always stays inside the picture, so a small zoom allows only a smaller shift (none at 1.0). The crop can
  hide at most 1 - 1/1.12 = 11% of the width (at most about 7% on one side), where a road user at the very
  edge may be cut.

Mirroring is *not* done here: the project encodes the mirrored image separately with mirrored captions
(``features.py``); flip the augmented image for the mirror of the same view.

Deterministic: the same (image, seed, settings) give the same bytes. Every op's random numbers are drawn in a
fixed order whether or not it fires, so changing one probability does not change another op's parameters.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, fields
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from drivecap.captions.facts import Facts
from drivecap.training.augment import is_grey

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

MAX_ZOOM = 1.12  # see the module docstring: the band of "far" objects that may look close
MAX_SHIFT = 0.03  # centre jitter, fraction of the picture's width or height


@dataclass(frozen=True)
class ImageAugment:
    """The ranges and the probability of each op (uniform draws; contrast and gamma log-uniform)."""

    zoom_p: float = 0.7
    zoom: tuple[float, float] = (1.0, MAX_ZOOM)  # scale factor, zoom-in only
    shift_x: float = 0.02  # max centre jitter, fraction of the width (places left/ahead/right must hold)
    shift_y: float = 0.03  # max centre jitter, fraction of the height
    brightness_p: float = 0.8
    brightness: tuple[float, float] = (-25.0, 25.0)  # added, of 255
    contrast_p: float = 0.8
    contrast: tuple[float, float] = (0.75, 1.3)  # factor around the image mean
    gamma_p: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.4)  # out = 255 * (in / 255) ** gamma
    grey_p: float = 0.5  # colour frames only; the result stays 3-channel BGR
    blur_p: float = 0.3
    blur_sigma: tuple[float, float] = (0.5, 1.5)  # Gaussian, pixels of the image given
    jpeg_p: float = 0.4
    jpeg_quality: tuple[int, int] = (25, 70)  # cv2 JPEG quality, both ends included

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= v <= 1.0:
                raise ValueError(f"ImageAugment.{f.name} = {v!r}: a probability must be in [0, 1]")
            if isinstance(v, tuple) and not (len(v) == 2 and v[0] <= v[1]):
                raise ValueError(f"ImageAugment.{f.name} = {v!r}: expected a range (low, high), low <= high")
        if not (self.zoom[0] >= 1.0 and self.zoom[1] <= MAX_ZOOM):
            raise ValueError(
                f"ImageAugment.zoom = {self.zoom!r}: must lie in [1.0, {MAX_ZOOM}] (zoom-in only)"
            )
        for name in ("shift_x", "shift_y"):
            if not 0.0 <= getattr(self, name) <= MAX_SHIFT:
                raise ValueError(
                    f"ImageAugment.{name} = {getattr(self, name)!r}: must lie in [0, {MAX_SHIFT}]"
                )
        if self.contrast[0] <= 0 or self.gamma[0] <= 0 or self.blur_sigma[0] <= 0:
            raise ValueError("ImageAugment: contrast, gamma and blur_sigma ranges must be positive")
        if not (self.jpeg_quality[0] >= 1 and self.jpeg_quality[1] <= 100):
            raise ValueError(f"ImageAugment.jpeg_quality = {self.jpeg_quality!r}: must lie in [1, 100]")

    @classmethod
    def identity(cls) -> ImageAugment:
        """Every probability 0 and every range neutral: :func:`augment_image` returns the image unchanged."""
        return cls(
            zoom_p=0.0,
            zoom=(1.0, 1.0),
            shift_x=0.0,
            shift_y=0.0,
            brightness_p=0.0,
            brightness=(0.0, 0.0),
            contrast_p=0.0,
            contrast=(1.0, 1.0),
            gamma_p=0.0,
            gamma=(1.0, 1.0),
            grey_p=0.0,
            blur_p=0.0,
            jpeg_p=0.0,
            jpeg_quality=(100, 100),
        )


def view_seed(clip: str, frame: int, k: int, base_seed: int = 0) -> int:
    """Seed of the ``k``-th augmented view of a frame: CRC-32 of the names, so the same in every process
    (Python's ``hash`` of a string changes with PYTHONHASHSEED)."""
    return zlib.crc32(f"photometric:{base_seed}:{clip}:{frame}:{k}".encode())


def facts_need_colour(facts: Facts) -> bool:
    """True when the facts name a traffic light's colour: a grey view of the frame would contradict them."""
    return any(o.kind == "traffic light" and o.colour not in ("", "unknown") for o in facts.objects)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return math.exp(float(rng.uniform(math.log(lo_hi[0]), math.log(lo_hi[1]))))


def _zoom(img: Image, scale: float, fx: float, fy: float) -> tuple[Image, float, float]:
    """Zoom by ``scale`` around the centre moved by (fx, fy) of the size, the window kept inside the image.

    Returns the image and the shift actually applied (fractions of width and height, after clamping)."""
    h, w = img.shape[:2]
    cx0, cy0 = (w - 1) / 2, (h - 1) / 2
    # Output pixel u samples source x = cx + (u - cx0) / scale; keep that inside [0, w - 1].
    rx, ry = cx0 / scale, cy0 / scale
    cx = min(max(cx0 + fx * w, rx), (w - 1) - rx)
    cy = min(max(cy0 + fy * h, ry), (h - 1) - ry)
    m = np.array([[1 / scale, 0.0, cx - rx], [0.0, 1 / scale, cy - ry]], dtype=np.float64)
    out = cv2.warpAffine(
        img, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101
    )
    return np.asarray(out, dtype=np.uint8), (cx - cx0) / w, (cy - cy0) / h


def _jpeg(img: Image, quality: int, grey: bool) -> Image:
    """Encode and decode. A greyed view is coded as one channel, as a black-and-white camera would; its three
    channels are then equal by construction, not by the codec's colour arithmetic."""
    src = img[..., 0] if grey else img
    ok, buf = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"cv2.imencode failed on a {src.shape} image at JPEG quality {quality}")
    dec = np.asarray(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR), dtype=np.uint8)
    return np.repeat(dec[..., None], 3, axis=2) if grey else dec


def augment_image(
    img: Image,
    seed: int,
    aug: ImageAugment = ImageAugment(),
    *,
    picture_x: tuple[int, int] | None = None,
    keep_colour: bool = False,
) -> tuple[Image, dict[str, Any]]:
    """One augmented view of a BGR uint8 frame, and the record of what was applied (JSON-ready).

    Order: zoom-crop, brightness, contrast, gamma, grey, blur, JPEG (last, as the camera's encoder would).
    ``picture_x`` are the picture's columns when the frame has black side bars (the street film): only those
    are augmented, the bars stay as they are. ``keep_colour`` leaves grey out (see :func:`facts_need_colour`).
    The record: ``{"seed", "shape", "picture_x", "input_grey", "ops": [{"op": name, parameters...}, ...]}``
    with the ops in the order applied."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR uint8 image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    x0, x1 = picture_x or (0, w)
    if not 0 <= x0 < x1 <= w:
        raise ValueError(f"picture_x = {picture_x!r} is not a column range of a {w}-wide image")
    rng = np.random.default_rng(seed)
    # Every draw happens, in this order, whatever fires: one op's parameters never depend on another's p.
    u = rng.random(7)
    scale = float(rng.uniform(*aug.zoom))
    fx, fy = float(rng.uniform(-aug.shift_x, aug.shift_x)), float(rng.uniform(-aug.shift_y, aug.shift_y))
    delta = float(rng.uniform(*aug.brightness))
    factor = _log_uniform(rng, aug.contrast)
    gamma = _log_uniform(rng, aug.gamma)
    sigma = float(rng.uniform(*aug.blur_sigma))
    quality = int(rng.integers(aug.jpeg_quality[0], aug.jpeg_quality[1] + 1))

    pic = np.ascontiguousarray(img[:, x0:x1])
    input_grey = is_grey(pic)
    ops: list[dict[str, Any]] = []
    if u[0] < aug.zoom_p:
        pic, sx, sy = _zoom(pic, scale, fx, fy)
        ops.append({"op": "zoom", "scale": scale, "shift_x": sx, "shift_y": sy})
    light = [
        ("brightness", u[1] < aug.brightness_p, {"delta": delta}),
        ("contrast", u[2] < aug.contrast_p, {"factor": factor}),
        ("gamma", u[3] < aug.gamma_p, {"gamma": gamma}),
        ("grey", u[4] < aug.grey_p and not input_grey and not keep_colour, {}),
        ("blur", u[5] < aug.blur_p, {"sigma": sigma, "ksize": 2 * math.ceil(3 * sigma) + 1}),
    ]
    if any(fire for _, fire, _ in light):
        x = pic.astype(np.float32)
        for name, fire, params in light:
            if not fire:
                continue
            if name == "brightness":
                x = np.clip(x + np.float32(delta), 0, 255)
            elif name == "contrast":
                mean = np.float32(x.mean())
                x = np.clip((x - mean) * np.float32(factor) + mean, 0, 255)
            elif name == "gamma":
                x = np.float32(255) * np.power(x / np.float32(255), np.float32(gamma))
            elif name == "grey":
                g = np.asarray(cv2.cvtColor(x, cv2.COLOR_BGR2GRAY), dtype=np.float32)
                x = np.repeat(g[..., None], 3, axis=2)
            else:
                k = int(params["ksize"])
                x = np.asarray(cv2.GaussianBlur(x, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101))
            ops.append({"op": name, **params})
        pic = np.rint(np.clip(x, 0, 255)).astype(np.uint8)
    if u[6] < aug.jpeg_p:
        pic = _jpeg(pic, quality, grey=any(o["op"] == "grey" for o in ops))
        ops.append({"op": "jpeg", "quality": quality})

    out = img.copy()
    out[:, x0:x1] = pic
    record = {"seed": int(seed), "shape": [h, w], "picture_x": [x0, x1], "input_grey": input_grey, "ops": ops}
    log.debug("augment seed %d: %s", seed, [o["op"] for o in ops])
    return out, record
