"""Partial fine-tuning of VGG16's last conv layer (``block5_conv3``) as a low-rank delta, from cached maps.

Fine-tuning the whole of block 5 from cached block-4 maps costs about 2.4 GMAC per 224x384 view and step on
these 2 cores (hours per leave-one-clip-out run), so only the last layer is trained, and as a LoRA-style
low-rank delta: ``conv5_3'(x) = conv5_3(x) + up(down(x)) + bias``, ``down`` a 3x3 conv to ``rank`` channels
and ``up`` a 1x1 conv back to 512 (initialised to 0, so training starts from the ImageNet features). The
frozen part ``conv5_3(x)`` does not change, so both its input ``x`` (block5_conv2's ReLU output) and its
pre-activation ``z`` are cached once per view; a training step then costs only the delta (~25 MMAC per view at
rank 16), and the decoder is trained jointly on ``pool5(relu(z + delta(x)))`` pooled into the decoder's cells.

The merged layer is exactly ``W + up @ down`` (a 1x1 conv after a 3x3 conv is one 3x3 conv), which is how the
delta ships (:mod:`drivecap.encoders.delta`).

Cache: ``$DRIVECAP_HOME/features/<sha12>-<h>x<w>-block5/<clip>.npz`` with ``frames``, ``x``, ``z``,
``x_mirror``, ``z_mirror`` ((N, 512, h/16, w/16) float16), keyed like the conv5 cache.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from drivecap.assets import AssetStore
from drivecap.encoders.base import Preprocess
from drivecap.errors import AssetError

log = logging.getLogger(__name__)

X_NAME = "block5_conv2/relu"  # the layer's input
Z_NAME = "block5_conv3/conv"  # its pre-activation


def block5_dir(home: Path, encoder_sha256: str, height: int, width: int) -> Path:
    return home / "features" / f"{encoder_sha256[:12]}-{height}x{width}-block5"


# ------------------------------------------------------------------------------------------ extraction


def split_model_bytes(fp32_onnx: Path) -> bytes:
    """The encoder ONNX with the last conv layer's input and pre-activation as outputs instead of pool5."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32_onnx))
    names = {o for n in model.graph.node for o in n.output}
    for want in (X_NAME, Z_NAME):
        if want not in names:
            raise AssetError(f"{fp32_onnx} has no tensor {want!r}; export it with `drivecap encoder export`")
    del model.graph.output[:]
    for name in (X_NAME, Z_NAME):
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return cast(bytes, model.SerializeToString())


class SplitEncoder:
    """OpenVINO fp32 (CPU) run of :func:`split_model_bytes` at a fixed input size: (x, z) of one frame."""

    def __init__(self, fp32_onnx: Path, prep: Preprocess, threads: int, scratch: Path) -> None:
        import openvino as ov

        self.prep = prep
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = scratch / f".split-{os.getpid()}.onnx"
        tmp.write_bytes(split_model_bytes(fp32_onnx))
        try:
            core = ov.Core()
            model = core.read_model(str(tmp))
            model.reshape([1, 3, prep.height, prep.width])
            self.compiled = core.compile_model(
                model,
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": threads,
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "f32",
                },
            )
        finally:
            tmp.unlink(missing_ok=True)
        self.request = self.compiled.create_infer_request()
        self.ox, self.oz = self.compiled.output(X_NAME), self.compiled.output(Z_NAME)

    def __call__(
        self, frame: npt.NDArray[np.uint8]
    ) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float16]]:
        res = self.request.infer({0: self.prep(frame)})
        return res[self.ox][0].astype(np.float16), res[self.oz][0].astype(np.float16)


def _save_npz(path: Path, **arrays: npt.NDArray[Any]) -> None:
    """Written beside the target and renamed: an interrupted extraction never leaves half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def extract_block5(
    enc: SplitEncoder,
    store: AssetStore,
    folder: Path,
    clip: str,
    frames: Sequence[int],
    meta: dict[str, Any],
    progress: Callable[[int], object] | None = None,
) -> tuple[int, float]:
    """Caches (x, z) of the wanted frames and of their mirrored images; returns (frames encoded, seconds)."""
    import cv2

    from drivecap.training.features import iter_video

    path = folder / f"{clip}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if set(z["frames"].tolist()) >= set(frames):
                return 0, 0.0
    t0 = time.perf_counter()
    cols: dict[str, list[npt.NDArray[np.float16]]] = {"x": [], "z": [], "x_mirror": [], "z_mirror": []}
    idx: list[int] = []
    for i, img in iter_video(store.clip(clip), set(frames)):
        x, zz = enc(img)
        xm, zm = enc(cast(npt.NDArray[np.uint8], cv2.flip(img, 1)))
        for k, v in (("x", x), ("z", zz), ("x_mirror", xm), ("z_mirror", zm)):
            cols[k].append(v)
        idx.append(i)
        if progress is not None:
            progress(1)
    _save_npz(
        path,
        frames=np.array(idx, np.int64),
        meta=np.array(json.dumps({**meta, "clip": clip})),
        **{k: np.stack(v) for k, v in cols.items()},
    )
    return len(idx), time.perf_counter() - t0


def extract_block5_augmented(
    enc: SplitEncoder,
    store: AssetStore,
    folder: Path,
    clip: str,
    records: dict[tuple[int, bool], dict[str, Any]],
    frames: Sequence[int],
    k: int,
    meta: dict[str, Any],
    progress: Callable[[int], object] | None = None,
) -> tuple[int, float]:
    """Caches (x, z) of one image-space augmented view per frame (`drivecap.training.photometric`) in
    ``<clip>.aug<k>.npz``: of the frame itself or of its mirror, alternately (every other frame of the plan), so
    both sides are augmented at the cost of one encode per frame; its caption is that view's teacher caption."""
    import cv2

    from drivecap.captions.facts import Facts
    from drivecap.training.features import iter_video
    from drivecap.training.photometric import augment_image, facts_need_colour, view_seed

    path = folder / f"{clip}.aug{k}.npz"
    wanted = [f for f in frames if (f, False) in records and (f, True) in records]
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if set(z["frames"].tolist()) >= set(wanted):
                return 0, 0.0
    t0 = time.perf_counter()
    xs: list[npt.NDArray[np.float16]] = []
    zs: list[npt.NDArray[np.float16]] = []
    idx: list[int] = []
    mirrored: list[bool] = []
    ops: list[str] = []
    for n, (i, img) in enumerate(iter_video(store.clip(clip), set(wanted))):
        m = n % 2 == 1
        rec = records[(i, m)]
        w = img.shape[1]
        x0, x1 = records[(i, False)].get("picture_x") or (0, w)
        view = cast(npt.NDArray[np.uint8], cv2.flip(img, 1)) if m else img
        px = (w - int(x1), w - int(x0)) if m else (int(x0), int(x1))
        keep = facts_need_colour(Facts.from_json(rec.get("facts", {})))
        aug, record = augment_image(view, view_seed(clip, i, k), picture_x=px, keep_colour=keep)
        x, zz = enc(aug)
        xs.append(x)
        zs.append(zz)
        idx.append(i)
        mirrored.append(m)
        ops.append(json.dumps(record["ops"]))
        if progress is not None:
            progress(1)
    _save_npz(
        path,
        frames=np.array(idx, np.int64),
        mirrored=np.array(mirrored, bool),
        x=np.stack(xs),
        z=np.stack(zs),
        ops=np.array(ops),
        meta=np.array(json.dumps({**meta, "clip": clip, "k": k})),
    )
    return len(idx), time.perf_counter() - t0


def label_records(home: Path, clip: str) -> dict[tuple[int, bool], dict[str, Any]]:
    """The teacher's records of a training clip by (frame, mirrored); copy-paste augmented ones left out."""
    from drivecap.training.data import labels_dir, read_labels

    return {
        (int(r["frame"]), bool(r.get("mirrored", False))): r
        for r in read_labels(labels_dir(home) / f"{clip}.jsonl")
        if not r.get("augmented")
    }


def load_augmented_views(
    folder: Path, home: Path, clips: Sequence[str], k: int = 0
) -> tuple[list[Any], Block5Maps]:
    """The augmented views cached by :func:`extract_block5_augmented`: Samples (``augmented=True``) and maps."""
    from drivecap.training.data import Sample

    samples: list[Any] = []
    xs, zs = [], []
    for clip in clips:
        path = folder / f"{clip}.aug{k}.npz"
        if not path.is_file():
            raise AssetError(f"no augmented block-5 maps {path}; run the extraction with --augment first")
        recs = label_records(home, clip)
        with np.load(path, allow_pickle=False) as z:
            for f, m in zip(z["frames"].tolist(), z["mirrored"].tolist(), strict=True):
                r = recs[(int(f), bool(m))]
                samples.append(
                    Sample(clip, int(f), bool(m), str(r["caption"]), r.get("facts", {}), "train", True)
                )
            xs.append(z["x"])
            zs.append(z["z"])
    return samples, Block5Maps(np.concatenate(xs), np.concatenate(zs))


@dataclass
class Block5Maps:
    """(x, z) of every view of a Split, in the Split's sample order (float16, (N, 512, h, w))."""

    x: npt.NDArray[np.float16]
    z: npt.NDArray[np.float16]


def maps_for_samples(folder: Path, samples: Sequence[Any]) -> Block5Maps:
    """Gathers the cached (x, z) of each sample (``clip``, ``frame``, ``mirrored``)."""
    by_clip: dict[str, dict[str, Any]] = {}
    for clip in sorted({s.clip for s in samples}):
        path = folder / f"{clip}.npz"
        if not path.is_file():
            raise AssetError(f"no block-5 maps for {clip} in {folder}; run the extraction first")
        with np.load(path, allow_pickle=False) as z:
            by_clip[clip] = {k: z[k] for k in ("frames", "x", "z", "x_mirror", "z_mirror")}
            by_clip[clip]["index"] = {int(f): i for i, f in enumerate(by_clip[clip]["frames"])}
    first = next(iter(by_clip.values()))
    shape = first["x"].shape[1:]
    xs = np.empty((len(samples), *shape), np.float16)
    zs = np.empty((len(samples), *shape), np.float16)
    for n, s in enumerate(samples):
        c = by_clip[s.clip]
        i = c["index"].get(int(s.frame))
        if i is None:
            raise AssetError(f"frame {s.frame} of {s.clip} has no block-5 maps in {folder}; extract it first")
        suffix = "_mirror" if s.mirrored else ""
        xs[n] = c["x" + suffix][i]
        zs[n] = c["z" + suffix][i]
    return Block5Maps(xs, zs)


__all__ = [
    "Block5Maps",
    "SplitEncoder",
    "block5_dir",
    "extract_block5",
    "extract_block5_augmented",
    "label_records",
    "load_augmented_views",
    "maps_for_samples",
    "split_model_bytes",
]
