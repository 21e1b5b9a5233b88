"""Training data: teacher label records (JSONL) joined with cached encoder features, pooled into cells."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.decoder.captioner import pool_cells, pooled_channels
from drivecap.errors import DrivecapError
from drivecap.training.features import load_clip_features

log = logging.getLogger(__name__)


def labels_dir(home: Path) -> Path:
    return home / "labels"


def read_labels(path: Path) -> list[dict[str, Any]]:
    """All records of one labels JSONL file; a bad line is a one-line error naming the file and line."""
    if not path.is_file():
        raise DrivecapError(f"labels {path} do not exist; run `drivecap label` first")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise DrivecapError(f"{path}:{n} is not valid JSON; run `drivecap label` again") from None
    return out


@dataclass
class Sample:
    """One labelled view of a frame (the frame itself or its mirror, or a copy-paste augmented frame)."""

    clip: str
    frame: int
    mirrored: bool
    caption: str
    facts: dict[str, Any]
    split: str
    augmented: bool = False


@dataclass
class Split:
    """Samples and their pooled cells (N, cells, 512) float32, in the same order."""

    samples: list[Sample]
    cells: npt.NDArray[np.float32]
    meta: dict[str, Any] = field(default_factory=dict)
    #: cells of the horizontally flipped map of the same view (for the flip ensemble), when loaded
    flipped: npt.NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, mask: Sequence[bool] | npt.NDArray[np.bool_]) -> Split:
        m = np.asarray(mask, dtype=bool)
        return Split(
            [s for s, k in zip(self.samples, m, strict=True) if k],
            self.cells[m],
            self.meta,
            None if self.flipped is None else self.flipped[m],
        )

    def counterparts(self) -> npt.NDArray[np.int64]:
        """Index of each view's other view (the same frame mirrored, or unmirrored), -1 where it is missing."""
        at = {(x.clip, x.frame, x.mirrored, x.augmented): i for i, x in enumerate(self.samples)}
        return np.array(
            [at.get((x.clip, x.frame, not x.mirrored, x.augmented), -1) for x in self.samples], np.int64
        )

    def repeat_clip(self, clip: str, times: int) -> Split:
        """This split with ``clip``'s views repeated ``times`` times in all (oversampling; 1 = unchanged).
        The repeats go at the end; training shuffles every epoch, so the order does not matter."""
        if times < 1:
            raise ValueError(f"repeat count must be >= 1, got {times}")
        extra = self.select([x.clip == clip for x in self.samples])
        out = self
        for _ in range(times - 1):
            out = out.concat(extra)
        return out

    def concat(self, other: Split) -> Split:
        if not len(other):
            return self
        if not len(self):
            return other
        return Split(self.samples + other.samples, np.concatenate([self.cells, other.cells]), self.meta)


def _cells(
    fmaps: npt.NDArray[np.float16], rows: int, cols: int, pool: str = "avg"
) -> npt.NDArray[np.float32]:
    out = np.empty((len(fmaps), rows * cols, pooled_channels(fmaps.shape[1], pool)), np.float32)
    for i, f in enumerate(fmaps):
        out[i] = pool_cells(f.astype(np.float32), rows, cols, pool)
    return out


def load_split(
    home: Path,
    feature_folder: Path,
    clips: Iterable[str],
    rows: int,
    cols: int,
    frame_filter: dict[str, tuple[int, int | None]] | None = None,
    mirrored: bool = True,
    heldout: bool = False,
    with_flipped: bool = False,
    stride: int = 1,
    pool: str = "avg",
) -> Split:
    """Label records of ``clips`` that have cached features; ``frame_filter`` keeps clip frames in [lo, hi).

    Training records are read from ``labels/<clip>.jsonl``, held-out ones from ``labels/heldout/<clip>.jsonl``
    (the layout ``drivecap label`` writes)."""
    samples: list[Sample] = []
    chunks: list[npt.NDArray[np.float32]] = []
    fchunks: list[npt.NDArray[np.float32]] = []
    missing = 0
    for clip in clips:
        feats = load_clip_features(feature_folder, clip)
        if feats is None:
            log.warning("no cached features for %s in %s: skipped", clip, feature_folder)
            continue
        index = feats.index()
        lo, hi = (frame_filter or {}).get(clip, (0, None))
        rows_n: list[int] = []
        rows_m: list[int] = []
        sub = labels_dir(home) / "heldout" if heldout else labels_dir(home)
        for rec in read_labels(sub / f"{clip}.jsonl"):
            if rec.get("augmented"):
                continue
            fr = int(rec["frame"])
            # The stride, not whatever else happens to be cached, decides the frames: reproducible data.
            if fr < lo or (hi is not None and fr >= hi) or fr % stride:
                continue
            is_m = bool(rec.get("mirrored", False))
            if is_m and not mirrored:
                continue
            i = index.get(fr)
            if i is None:
                missing += 1
                continue
            samples.append(
                Sample(clip, fr, is_m, str(rec["caption"]), rec.get("facts", {}), str(rec.get("split", "")))
            )
            (rows_m if is_m else rows_n).append(len(samples) - 1)
            chunks.append(np.empty(0, np.float32))  # placeholder, filled below in sample order
            fchunks.append(np.empty(0, np.float32))
        # Pool in two vectorised passes (plain frames, mirrored frames), then place by sample position.
        pos = {fr: i for fr, i in index.items()}
        for group, source in ((rows_n, feats.fmap), (rows_m, feats.fmap_mirror)):
            if not group:
                continue
            maps = source[[pos[samples[k].frame] for k in group]]
            pooled = _cells(maps, rows, cols, pool)
            fpooled = _cells(maps[:, :, :, ::-1], rows, cols, pool) if with_flipped else None
            for j, k in enumerate(group):
                chunks[k] = pooled[j]
                if fpooled is not None:
                    fchunks[k] = fpooled[j]
    if missing:
        log.info("%d label records have no cached features (frames not extracted): skipped", missing)
    cells = np.stack(chunks) if chunks else np.zeros((0, rows * cols, pooled_channels(512, pool)), np.float32)
    flipped = (np.stack(fchunks) if fchunks else np.zeros_like(cells)) if with_flipped else None
    return Split(samples, cells, flipped=flipped)
