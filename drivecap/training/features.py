"""Encoder feature cache: conv5 maps of every labelled frame and of its mirror, computed once per encoder.

``$DRIVECAP_HOME/features/<sha12>-<h>x<w>/<clip>.npz`` holds ``frames`` (frame indices), ``fmap`` and ``fmap_mirror``
((N, 512, h, w) float16) for one clip. The mirror entry is the encoder's map of the horizontally flipped
*image* (flipping the feature map instead would not be what the encoder sees on a mirrored road). The folder
is keyed by the fp32 encoder ONNX sha256 and the input size, so features of another encoder are never mixed in. Extraction is
incremental: a later run with a finer stride encodes only the frames that are missing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt

from drivecap.assets import CLIPS, AssetStore
from drivecap.encoders.base import Encoder
from drivecap.errors import AssetError

if TYPE_CHECKING:
    from drivecap.config import Config

log = logging.getLogger(__name__)


def features_dir(home: Path, encoder_sha256: str, height: int, width: int) -> Path:
    """One folder per encoder file and input size (maps of another size must never be mixed in)."""
    return home / "features" / f"{encoder_sha256[:12]}-{height}x{width}"


def configured_features(cfg: Config) -> tuple[Path, Path]:
    """($DRIVECAP_HOME, the feature cache folder of the configured encoder ONNX and input size)."""
    from drivecap.assets import drivecap_home, sha256_file
    from drivecap.encoders.paths import encoder_onnx_path

    home = drivecap_home(cfg.paths.home)
    sha = sha256_file(encoder_onnx_path(cfg))
    return home, features_dir(home, sha, cfg.encoder.input_height, cfg.encoder.input_width)


@dataclass
class ClipFeatures:
    clip: str
    frames: npt.NDArray[np.int64]
    fmap: npt.NDArray[np.float16]
    fmap_mirror: npt.NDArray[np.float16]

    def index(self) -> dict[int, int]:
        return {int(f): i for i, f in enumerate(self.frames)}


def cache_path(folder: Path, clip: str) -> Path:
    return folder / f"{clip}.npz"


def load_clip_features(folder: Path, clip: str) -> ClipFeatures | None:
    path = cache_path(folder, clip)
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return ClipFeatures(clip, z["frames"].astype(np.int64), z["fmap"], z["fmap_mirror"])


def map_grid(folder: Path, clips: Iterable[str]) -> tuple[int, int]:
    """(h, w) of the cached conv5 maps: the grid an attention decoder reads whole."""
    for clip in clips:
        path = cache_path(folder, clip)
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                shape = z["fmap"].shape
            return int(shape[2]), int(shape[3])
    raise AssetError(f"no cached features in {folder}; let `drivecap train` extract them first")


def _save(folder: Path, feats: ClipFeatures, meta: dict[str, object]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = cache_path(folder, feats.clip)
    tmp = path.with_suffix(".tmp.npz")
    order = np.argsort(feats.frames)
    np.savez(
        tmp,
        frames=feats.frames[order],
        fmap=feats.fmap[order],
        fmap_mirror=feats.fmap_mirror[order],
        meta=np.array(json.dumps(meta)),
    )
    os.replace(tmp, path)


def iter_video(path: Path, wanted: set[int]) -> Iterator[tuple[int, npt.NDArray[np.uint8]]]:
    """The wanted frames of a video, read in order (frame index = position when reading from the start)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise AssetError(f"cannot open video {path}; fetch the assets again with `drivecap assets fetch`")
    last = max(wanted) if wanted else -1
    i = 0
    try:
        while i <= last:
            ok = cap.grab()
            if not ok:
                break
            if i in wanted:
                ok, img = cap.retrieve()
                if ok:
                    yield i, cast(npt.NDArray[np.uint8], img)
            i += 1
    finally:
        cap.release()


def clip_frame_count(path: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def extract_clip(
    encoder: Encoder,
    store: AssetStore,
    folder: Path,
    clip: str,
    frames: Iterable[int],
    progress: Callable[[int], object] | None = None,
    save_every: int = 50,
) -> tuple[int, float]:
    """Encodes the wanted frames (and their mirrors) not yet cached; returns (frames encoded, seconds)."""
    import cv2

    old = load_clip_features(folder, clip)
    have = set(old.frames.tolist()) if old is not None else set()
    todo = sorted(set(frames) - have)
    if not todo:
        return 0, 0.0
    meta: dict[str, object] = {
        "clip": clip,
        "encoder_sha256": encoder.onnx_sha256,
        "encoder": encoder.describe(),
        "input": [encoder.preprocess.height, encoder.preprocess.width],
        "preprocess": encoder.preprocess.mode,
    }
    idx: list[int] = []
    maps: list[npt.NDArray[np.float16]] = []
    mirrors: list[npt.NDArray[np.float16]] = []
    t0 = time.perf_counter()

    def flush() -> None:
        nonlocal old
        if not idx:
            return
        new = ClipFeatures(clip, np.array(idx, np.int64), np.stack(maps), np.stack(mirrors))
        if old is not None:
            new = ClipFeatures(
                clip,
                np.concatenate([old.frames, new.frames]),
                np.concatenate([old.fmap, new.fmap]),
                np.concatenate([old.fmap_mirror, new.fmap_mirror]),
            )
        _save(folder, new, meta)
        old = new
        idx.clear()
        maps.clear()
        mirrors.clear()

    for i, img in iter_video(store.clip(clip), set(todo)):
        maps.append(encoder.encode(img).features.astype(np.float16))
        mirrors.append(
            encoder.encode(cast(npt.NDArray[np.uint8], cv2.flip(img, 1))).features.astype(np.float16)
        )
        idx.append(i)
        if progress is not None:
            progress(1)
        if len(idx) >= save_every:
            flush()  # so an interrupted extraction keeps what it did
    flush()
    return len(todo), time.perf_counter() - t0


def training_frame_plan(stride: int) -> dict[str, list[int]]:
    """Every ``stride``-th training frame per clip (none of a held-out part: `drivecap eval` encodes those)."""
    store = AssetStore()
    return {
        name: list(range(0, clip.training_end(clip_frame_count(store.clip(name))), stride))
        for name, clip in CLIPS.items()
    }
