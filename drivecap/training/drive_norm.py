"""Per-drive feature normalisation: a frame's cells read against the drive's own recent statistics.

Measured under leave-one-clip-out (``scripts/drive_norm_loco.py``, docs/caption-model.md) and not shipped: every
mode scored below the plain decoder. The idea: a drive the decoder never saw differs from the training drives in
every cell's conv5 average (road, light, camera); subtracting the drive's own running mean per cell and channel
(and, in ``standardise``, dividing by its running std) is the input-layer form of adaptive batch normalisation
(AdaBN: normalisation statistics re-estimated on the target domain). ``concat`` keeps the cells and adds the
centred ones.

The statistics are causal and rate-free: an exponentially decaying, time-weighted mean over the frames encoded
so far (time constant ``tau_s``), shrunk towards the training set's statistics with the weight of ``prior_s``
seconds, so the first frames of a drive are read against the training mean. Gaps (a static scene the pixel
pre-gate skipped, a dropped stream) count at most ``max_gap_s``. The mirror view reads the mirrored frame
against the same statistics with the cell columns reversed (the mirrored drive's mean, up to VGG16's
approximate mirror symmetry), so only the frame stream updates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from drivecap.decoder.lstm import FloatArray

MODES = ("off", "center", "standardise", "concat")


@dataclass(frozen=True)
class DriveNormSettings:
    mode: str = "off"
    tau_s: float = 30.0
    prior_s: float = 2.0
    max_gap_s: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"drive normalisation mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.tau_s <= 0 or self.prior_s <= 0 or self.max_gap_s <= 0:
            raise ValueError("drive normalisation tau_s, prior_s and max_gap_s must be > 0")


def flip_cells(cells: FloatArray, rows: int, cols: int) -> FloatArray:
    """(rows * cols, C) row-major cells with the columns in reverse order (left <-> right)."""
    c = cells.shape[-1]
    return np.ascontiguousarray(cells.reshape(rows, cols, c)[:, ::-1].reshape(rows * cols, c))


class DriveNorm:
    """Running per-cell statistics of one drive; :meth:`update` with each encoded frame, :meth:`apply` to read."""

    def __init__(
        self, s: DriveNormSettings, prior_mean: FloatArray, prior_var: FloatArray, rows: int, cols: int
    ) -> None:
        self.s = s
        self.rows, self.cols = rows, cols
        self.prior_mean = np.asarray(prior_mean, np.float64)
        self.prior_sq = np.asarray(prior_var, np.float64) + self.prior_mean**2
        self.reset()

    def reset(self) -> None:
        """A new drive: back to the training statistics."""
        self._sum = np.zeros_like(self.prior_mean)
        self._sq = np.zeros_like(self.prior_mean)
        self._weight = 0.0
        self._t: float | None = None

    def update(self, cells: FloatArray, t: float) -> None:
        """Adds the frame at source time ``t`` (seconds) to the running statistics."""
        x = np.asarray(cells, np.float64)
        dt = self.s.max_gap_s if self._t is None else min(max(t - self._t, 0.0), self.s.max_gap_s)
        self._t = t
        d = math.exp(-dt / self.s.tau_s)
        self._sum = d * self._sum + dt * x
        self._sq = d * self._sq + dt * x * x
        self._weight = d * self._weight + dt

    def stats(self) -> tuple[FloatArray, FloatArray]:
        """(mean, std) per cell and channel: the running ones shrunk towards the training set's."""
        k = self.s.prior_s
        w = self._weight + k
        mean = (self._sum + k * self.prior_mean) / w
        var = np.maximum((self._sq + k * self.prior_sq) / w - mean**2, 0.0)
        return mean.astype(np.float32), np.sqrt(var).astype(np.float32)

    def apply(self, cells: FloatArray, mirrored: bool = False) -> FloatArray:
        """The cells as the decoder reads them; ``mirrored``: cells of the mirrored frame."""
        if self.s.mode == "off":
            return np.asarray(cells, np.float32)
        mean, std = self.stats()
        return normalise(cells, mean, std, self.s.mode, self.rows, self.cols, mirrored)


def normalise(
    cells: FloatArray,
    mean: FloatArray,
    std: FloatArray,
    mode: str,
    rows: int,
    cols: int,
    mirrored: bool = False,
) -> FloatArray:
    """``cells`` read against a drive's (mean, std); a mirrored frame against their column-reversed copies."""
    x = np.asarray(cells, np.float32)
    if mode == "off":
        return x
    if mirrored:
        mean, std = flip_cells(mean, rows, cols), flip_cells(std, rows, cols)
    if mode == "center":
        return x - mean
    if mode == "standardise":
        floor = max(float(np.median(std)) * 0.1, 1e-3)
        return ((x - mean) / np.maximum(std, floor)).astype(np.float32)
    return np.concatenate([x, x - mean], axis=-1).astype(np.float32)
