"""INT8 calibration: a frame set sampled from training drives -> a static QDQ ONNX (symmetric, per-channel).

The set's manifest (clip, frame index, clip sha256) is written to ``calibration/``; the QDQ model records the
sha256 of the fp32 model and of the manifest it was made from, so a changed model or set is detected and the
INT8 file is rebuilt instead of used. The QDQ form (symmetric INT8 activations and per-channel weights in 7
bits, zero points 0) is what ONNX Runtime runs on the CPU and what TensorRT's explicit quantization takes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivecap.assets import CLIPS, HELD_OUT_CLIPS, AssetStore, drivecap_home, sha256_file
from drivecap.config import Config
from drivecap.encoders.base import Preprocess
from drivecap.encoders.export import INPUT_NAME, preprocess_from_metadata
from drivecap.encoders.ort_backend import open_onnx_metadata
from drivecap.encoders.paths import encoder_onnx_path, int8_onnx_path
from drivecap.errors import AssetError, ModelError
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST_NAME = "calibration_set.json"
#: Changes whenever the quantization settings below change, so that older INT8 files count as stale.
RECIPE = "qdq-int8-symmetric-act-perchannel-7bit-weights-float-bias-v3"


@dataclass(frozen=True)
class CalibFrame:
    clip: str
    frame: int


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise AssetError(f"{path} cannot be opened as a video")
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def sample_frames(lengths: dict[str, int], n: int, seed: int) -> list[CalibFrame]:
    """``n`` frames spread over the clips in proportion to their length, evenly spaced with a seeded offset.

    Held-out clips and the held-out tail of a partly held-out clip are never sampled.
    """
    usable: dict[str, int] = {}
    for clip, length in lengths.items():
        if clip in HELD_OUT_CLIPS:
            raise ModelError(f"clip {clip} is held out: it can never be used for calibration")
        cut = CLIPS[clip].held_out_from if clip in CLIPS else None
        usable[clip] = min(length, cut) if cut else length
    total = sum(usable.values())
    if total <= 0:
        raise ModelError("the calibration clips have no frames")
    rng = np.random.default_rng(seed)
    out: list[CalibFrame] = []
    names = sorted(usable)
    shares = [max(1, round(n * usable[c] / total)) for c in names]
    while sum(shares) > n:  # rounding can overshoot by a frame or two
        shares[int(np.argmax(shares))] -= 1
    for clip, k in zip(names, shares, strict=True):
        step = usable[clip] / k
        offset = rng.uniform(0, step)
        out += [CalibFrame(clip, min(usable[clip] - 1, int(offset + i * step))) for i in range(k)]
    return out


def read_frames(store: AssetStore, frames: list[CalibFrame]) -> Iterator[tuple[CalibFrame, np.ndarray]]:
    by_clip: dict[str, list[int]] = {}
    for f in frames:
        by_clip.setdefault(f.clip, []).append(f.frame)
    for clip, idxs in by_clip.items():
        wanted = set(idxs)
        cap = cv2.VideoCapture(str(store.clip(clip)))
        try:
            i = 0
            while wanted:
                ok = cap.grab()
                if not ok:
                    raise AssetError(f"clip {clip} ended before frame {min(wanted)}; re-fetch the assets")
                if i in wanted:
                    ok, img = cap.retrieve()
                    if not ok:
                        raise AssetError(f"clip {clip}: frame {i} cannot be decoded")
                    wanted.discard(i)
                    yield CalibFrame(clip, i), img
                i += 1
        finally:
            cap.release()


def write_manifest(cfg: Config, store: AssetStore, frames: list[CalibFrame]) -> tuple[Path, str]:
    """Writes the set to calibration/ and returns (path, sha256 of its canonical content)."""
    body: dict[str, Any] = {
        "frames": [[f.clip, f.frame] for f in frames],
        "clips": {c: sha256_file(store.clip(c))[:16] for c in sorted({f.clip for f in frames})},
        "seed": cfg.calibration.seed,
        "input": [cfg.encoder.input_height, cfg.encoder.input_width],
        "method": cfg.calibration.method,
        "recipe": RECIPE,
        **({"percentile": cfg.calibration.percentile} if cfg.calibration.method == "percentile" else {}),
        **({"float_layers": sorted(cfg.calibration.float_layers)} if cfg.calibration.float_layers else {}),
    }
    text = json.dumps(body, indent=1, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = cfg.calibration_dir / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_bytes(path, text.encode())
    return path, digest


def manifest_sha(cfg: Config) -> str | None:
    path = cfg.calibration_dir / MANIFEST_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_int8_fresh(cfg: Config, int8_path: Path) -> None:
    """Raises a one-line error when the INT8 model is missing or was made from another model or set."""
    if not int8_path.is_file():
        raise ModelError(
            f"INT8 encoder {int8_path} does not exist; run `drivecap calibrate` (or use --set encoder.precision=fp32)"
        )
    meta = open_onnx_metadata(int8_path)
    fp32 = encoder_onnx_path(cfg)
    if fp32.is_file() and meta.get("drivecap.fp32_sha256") != sha256_file(fp32):
        raise ModelError(
            f"INT8 encoder {int8_path} was made from another fp32 model than {fp32}; run `drivecap calibrate`"
        )
    want = manifest_sha(cfg)
    if want is not None and meta.get("drivecap.calibration_sha256") != want:
        raise ModelError(
            f"INT8 encoder {int8_path} was calibrated on another set than {cfg.calibration_dir / MANIFEST_NAME}; "
            "run `drivecap calibrate`"
        )


def check_float_layers(fp32: Path, layers: list[str]) -> None:
    """A one-line error naming the key when a layer to keep in fp32 is not a Conv of the encoder."""
    if not layers:
        return
    import onnx

    convs = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node if n.op_type == "Conv"]
    unknown = [x for x in layers if x not in convs]
    if unknown:
        raise ModelError(
            f"calibration.float_layers: {unknown[0]!r} is not a Conv layer of {fp32.name}; "
            f"choose from {', '.join(convs)}"
        )


class _Reader:
    """ONNX Runtime CalibrationDataReader over preprocessed frames."""

    def __init__(self, tensors: list[np.ndarray]) -> None:
        self._it = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {INPUT_NAME: x}


def _quantize(
    fp32: Path,
    out: Path,
    tensors: list[np.ndarray],
    method_name: str,
    percentile: float = 99.999,
    float_layers: list[str] | None = None,
) -> None:
    """ONNX Runtime static quantization in the QDQ form that both ONNX Runtime and TensorRT run."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method_name]
    root = logging.getLogger()
    level = root.level
    # onnxruntime.quantization warns on the root logger to "consider pre-processing" (shape inference and
    # fusions); this graph has static shapes and nothing to fuse, so keep the console quiet while it runs.
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(fp32),
            str(out),
            _Reader(tensors),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # 7-bit weights (-64..64, still int8 with zero point 0). On an x86 CPU without VNNI (AVX2 only, as
            # here) the int8 convolutions of ONNX Runtime and OpenVINO add the products of u8 activations and s8
            # weights pairwise into int16 with saturation (vpmaddubsw): with 8-bit weights a pair can overflow,
            # and the pooled conv5 features fell to cosine 0.943 against fp32, while the same file run as plain
            # QuantizeLinear/DequantizeLinear + float Conv gave 0.999. With 7 bits no pair can overflow, so one
            # file is right on every CPU (with VNNI the lost bit costs little and no time).
            reduce_range=True,
            calibrate_method=method,
            nodes_to_exclude=list(float_layers or []),
            # Biases stay float: TensorRT's ONNX parser rejects an int32 DequantizeLinear on a bias ("only
            # activation types allowed"), and ONNX Runtime >= 1.21 folds float biases into its int8 kernels.
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                "CalibPercentile": percentile,
                # The histogram estimators otherwise keep every intermediate map of every frame in memory
                # (about 100 MB per 224x224 frame for VGG16) before they count them: fold them in 16 at a time.
                "CalibMaxIntermediateOutputs": 16,
            },
        )
    finally:
        root.setLevel(level)


def calibrate(cfg: Config, force: bool = False, progress: bool = True) -> tuple[Path, bool]:
    """Makes (or confirms) the INT8 QDQ model; returns (path, rebuilt)."""
    from tqdm import tqdm

    fp32 = encoder_onnx_path(cfg)
    meta = open_onnx_metadata(fp32)
    prep: Preprocess = preprocess_from_metadata(meta, fp32, cfg.encoder.input_height, cfg.encoder.input_width)
    store = AssetStore(drivecap_home(cfg.paths.home))
    lengths = {c: count_frames(store.clip(c)) for c in cfg.calibration.clips}
    check_float_layers(fp32, cfg.calibration.float_layers)
    frames = sample_frames(lengths, cfg.calibration.frames, cfg.calibration.seed)
    manifest, set_sha = write_manifest(cfg, store, frames)
    out = int8_onnx_path(cfg)
    fp32_sha = sha256_file(fp32)
    if not force and out.is_file():
        old = open_onnx_metadata(out)
        if old.get("drivecap.fp32_sha256") == fp32_sha and old.get("drivecap.calibration_sha256") == set_sha:
            log.info("INT8 model %s is up to date (model and calibration set unchanged)", out)
            return out, False
    t0 = time.perf_counter()
    tensors = [
        prep(img)
        for _, img in tqdm(
            read_frames(store, frames),
            total=len(frames),
            desc="calibration frames",
            disable=not progress or None,
            leave=False,
        )
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".calib-", dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        log.info(
            "calibrating on %d frames (%s), this runs the fp32 model over each frame",
            len(tensors),
            cfg.calibration.method,
        )
        _quantize(
            fp32,
            tmp_out,
            tensors,
            cfg.calibration.method,
            cfg.calibration.percentile,
            cfg.calibration.float_layers,
        )
        import onnx

        model = onnx.load(str(tmp_out))
        del model.metadata_props[:]
        tags = dict(meta)
        tags.update(
            {
                "drivecap.precision": "int8",
                "drivecap.fp32_sha256": fp32_sha,
                "drivecap.calibration_sha256": set_sha,
                "drivecap.calibration_manifest": manifest.name,
                "drivecap.calibration_frames": str(len(frames)),
                "drivecap.quantization": "static QDQ, symmetric int8 activations, per-channel symmetric 7-bit weights, "
                + cfg.calibration.method
                + (
                    f", fp32 layers {','.join(cfg.calibration.float_layers)}"
                    if cfg.calibration.float_layers
                    else ""
                ),
            }
        )
        for k, v in tags.items():
            e = model.metadata_props.add()
            e.key, e.value = k, v
        from drivecap.encoders.export import save_atomic

        save_atomic(model, out)
    log.info("wrote %s in %.0f s", out, time.perf_counter() - t0)
    return out, True
