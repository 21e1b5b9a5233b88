"""The scene-change gate: decides when a frame is worth encoding and when the scene is new enough to caption.

Two stages, both configured by ``cfg.gate``:

* :class:`PixelPreGate` compares a small grey thumbnail of the frame with the thumbnail of the last frame
  that was encoded (mean absolute difference, 0-1). Below ``pixel_threshold`` nothing moved and the encoder
  is skipped. Costs ~0.1 ms at 720p (one INTER_AREA resize of a grey image).
* :class:`SemanticGate` compares the global-pooled encoder feature with the one at the last caption (cosine
  distance). It is a Schmitt trigger: it opens above ``open_threshold``; an open gate that has to wait for
  ``min_interval_s`` stays open (pending) only while the distance stays above ``close_threshold``, so a
  blip (a frame of glare, a car flashing past) that reverts does not produce a caption a second later.
  ``max_age_s`` re-captions a scene that stayed the same, so a displayed caption is never older than that.
  :meth:`SemanticGate.request` asks for one more caption at a given time (the fact hold, when a change it
  holds back could be decided then), still no sooner than ``min_interval_s`` after the last one.

Both are pure functions of their inputs and the times passed in (no clock inside), so offline replay,
which passes file timestamps, gets the same decisions on every run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from drivecap.config import GateConfig

FloatArray = npt.NDArray[np.float32]

Reason = Literal["first", "change", "age", "confirm", "pending", "blip", "steady", "interval", "always"]


def grey_thumbnail(image: npt.NDArray[np.uint8], size: int) -> FloatArray:
    """(H, W, 3) BGR or (H, W) grey -> (size, size) float32 grey in 0-1."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    # INTER_AREA averages every source pixel, so sensor noise and compression speckle cancel out.
    small = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1.0 / 255.0)


def thumb_diff(a: FloatArray, b: FloatArray) -> float:
    """Mean absolute difference of two thumbnails (0 = identical, 1 = black vs white)."""
    return float(np.mean(np.abs(a - b)))


def cosine_distance(a: FloatArray, b: FloatArray) -> float:
    """1 - cosine similarity of two flat vectors (0 = same direction, 2 = opposite)."""
    a = a.ravel().astype(np.float32, copy=False)
    b = b.ravel().astype(np.float32, copy=False)
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    if den <= 0.0:
        return 0.0 if not (a.any() or b.any()) else 1.0
    return 1.0 - float(np.dot(a, b)) / den


class PixelPreGate:
    """Skips the encoder when the thumbnail barely differs from the last encoded frame's."""

    def __init__(self, thumb_size: int, threshold: float) -> None:
        self.thumb_size = thumb_size
        self.threshold = threshold
        self._ref: FloatArray | None = None

    def score(self, image: npt.NDArray[np.uint8]) -> tuple[float, FloatArray]:
        """(difference to the last encoded frame, this frame's thumbnail); 1.0 before any frame."""
        th = grey_thumbnail(image, self.thumb_size)
        return (1.0 if self._ref is None else thumb_diff(th, self._ref)), th

    def check(self, image: npt.NDArray[np.uint8]) -> tuple[bool, float, FloatArray]:
        """(moved enough to encode, score, thumbnail). Call :meth:`accept` with the thumbnail once encoded."""
        s, th = self.score(image)
        return s >= self.threshold, s, th

    def accept(self, thumb: FloatArray) -> None:
        self._ref = thumb

    def reset(self) -> None:
        self._ref = None


@dataclass(frozen=True)
class GateDecision:
    """One semantic-gate step: caption now or not, the distance it saw, why, and the state after."""

    open: bool
    distance: float
    reason: Reason
    state: str  # "armed" (waiting for change) or "pending" (changed, waiting for min interval)
    age_s: float  # time since the last caption (inf before the first)


class SemanticGate:
    """Cosine distance of the pooled feature to the feature at the last caption, with hysteresis."""

    def __init__(self, cfg: GateConfig) -> None:
        self.cfg = cfg
        self._ref: FloatArray | None = None
        self._t_last: float | None = None
        self._pending = False
        self._due: float | None = None

    @property
    def state(self) -> str:
        return "pending" if self._pending else "armed"

    def distance(self, pooled: FloatArray) -> float:
        return 1.0 if self._ref is None else cosine_distance(pooled, self._ref)

    def update(self, pooled: FloatArray, t: float) -> GateDecision:
        """Feeds one encoded frame's pooled feature at time ``t`` (seconds, any monotonic timeline)."""
        cfg = self.cfg
        d = self.distance(pooled)
        age = float("inf") if self._t_last is None else t - self._t_last
        if self._ref is None:
            return self._open(pooled, t, d, "first", age)
        if not cfg.enabled:
            return self._open(pooled, t, d, "always", age)
        if cfg.max_age_s > 0 and age >= cfg.max_age_s:
            return self._open(pooled, t, d, "age", age)
        if self.is_due(t) and age >= cfg.min_interval_s:
            return self._open(pooled, t, d, "confirm", age)
        if self._pending:
            if d < cfg.close_threshold:
                self._pending = False
                return GateDecision(False, d, "blip", self.state, age)
        elif d > cfg.open_threshold:
            self._pending = True
        else:
            return GateDecision(False, d, "steady", self.state, age)
        if age < cfg.min_interval_s:
            return GateDecision(False, d, "interval", self.state, age)
        return self._open(pooled, t, d, "change", age)

    def _open(self, pooled: FloatArray, t: float, d: float, reason: Reason, age: float) -> GateDecision:
        self._ref = pooled.astype(np.float32, copy=True)
        self._t_last = t
        self._pending = False
        self._due = None
        return GateDecision(True, d, reason, self.state, age)

    def request(self, t_due: float | None) -> None:
        """One more caption wanted at ``t_due`` (None: nothing wanted); replaced by the next request."""
        self._due = t_due

    def is_due(self, t: float) -> bool:
        """A requested caption is due at ``t`` (the pixel pre-gate must not skip this frame)."""
        return self._due is not None and t >= self._due

    def caption_age(self, t: float) -> float:
        return float("inf") if self._t_last is None else t - self._t_last

    def reset(self) -> None:
        self._ref = None
        self._t_last = None
        self._pending = False
        self._due = None
