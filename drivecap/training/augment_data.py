"""Copy-paste augmented training frames ("vehicle in my lane") joined with their encoder features.

The frames come from :mod:`drivecap.captions.augment` (vehicle crops pasted into the ego lane of training
frames). They are encoded once, with their mirror (the *image* flipped, the facts mirrored), into
``<feature folder>/augmented-<tag>.npz`` and then used as training samples like any other frame. The tag names
the clips, the count, the seed and the label files the crops and facts came from (their sha256), so frames made
from one teacher's labels are never read as another's (homes may share a feature folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from drivecap.captions.facts import Facts
from drivecap.captions.grammar import render
from drivecap.decoder.captioner import pool_cells
from drivecap.encoders.base import Encoder
from drivecap.training.data import Sample, Split, labels_dir

log = logging.getLogger(__name__)


def labels_tag(home: Path, clips: Sequence[str]) -> str:
    """First 8 hex digits of the sha256 over the clips' label files (missing files count as empty)."""
    h = hashlib.sha256()
    for clip in sorted(clips):
        path = labels_dir(home) / f"{clip}.jsonl"
        h.update(clip.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return h.hexdigest()[:8]


def augmented_path(folder: Path, clips: Sequence[str], per_clip: int, seed: int, labels: str) -> Path:
    tag = "-".join(sorted(clips))
    return folder / f"augmented-{tag}-n{per_clip}-s{seed}-l{labels}.npz"


def extract_augmented(
    encoder: Encoder, home: Path, folder: Path, clips: Sequence[str], per_clip: int = 100, seed: int = 0
) -> dict[str, Any]:
    """Makes and encodes the augmented frames of ``clips`` (crops also only from ``clips``), once."""
    import cv2

    from drivecap.training.augment import augmented_frames, build_crops

    path = augmented_path(folder, clips, per_clip, seed, labels_tag(home, clips))
    if path.is_file():
        return {"path": str(path), "encoded": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    lab = labels_dir(home)
    crops = build_crops(lab, list(clips), seed=seed, home=home)
    recs: list[dict[str, Any]] = []
    maps, mirrors = [], []
    for clip in clips:
        for af in augmented_frames(lab, clip, crops, per_clip, seed=seed, home=home):
            maps.append(encoder.encode(af.image).features.astype(np.float16))
            flipped = cast(npt.NDArray[np.uint8], cv2.flip(af.image, 1))
            mirrors.append(encoder.encode(flipped).features.astype(np.float16))
            recs.append(
                {
                    "clip": clip,
                    "frame": af.frame,
                    "facts": af.facts.to_json(),
                    "caption": af.caption,
                    "crop_from": list(af.crop_from),
                }
            )
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, fmap=np.stack(maps), fmap_mirror=np.stack(mirrors), records=np.array(json.dumps(recs)))
    os.replace(tmp, path)
    log.info("%d augmented frames (+ mirrors) encoded in %.0f s -> %s", len(recs), seconds, path)
    return {"path": str(path), "encoded": len(recs), "seconds": round(seconds, 1), "crops": len(crops)}


def load_augmented(path: Path, rows: int, cols: int) -> Split:
    """Augmented samples (each frame and its mirror); empty when the file does not exist."""
    if not path.is_file():
        return Split([], np.zeros((0, rows * cols, 512), np.float32))
    with np.load(path, allow_pickle=False) as z:
        recs = json.loads(str(z["records"]))
        fmap, fmir = z["fmap"], z["fmap_mirror"]
    samples: list[Sample] = []
    cells = []
    for i, r in enumerate(recs):
        facts = Facts.from_json(r["facts"])
        for mirrored, f, m in ((False, facts, fmap[i]), (True, facts.mirrored(), fmir[i])):
            samples.append(
                Sample(r["clip"], int(r["frame"]), mirrored, render(f), f.to_json(), "train", augmented=True)
            )
            cells.append(pool_cells(m.astype(np.float32), rows, cols))
    return Split(samples, np.stack(cells) if cells else np.zeros((0, rows * cols, 512), np.float32))
