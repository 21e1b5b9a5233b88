"""The encoder interface every backend implements, and the frame -> tensor preprocessing they share."""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

import cv2
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: Keras "caffe" mode: BGR order, ImageNet mean subtracted per channel, no scaling.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
#: torchvision mode: RGB, /255, then (x - mean) / std per channel.
TORCH_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
TORCH_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PreprocessMode = Literal["caffe", "torch"]


@dataclass(frozen=True)
class Preprocess:
    """How a BGR uint8 frame of any size becomes the encoder's NCHW float32 input."""

    mode: PreprocessMode = "caffe"
    height: int = 224
    width: int = 224

    def __call__(self, frame_bgr: npt.NDArray[np.uint8], out: FloatArray | None = None) -> FloatArray:
        """One frame (H, W, 3) BGR uint8 -> (1, 3, height, width) float32, written into ``out`` if given."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR frame, got shape {frame_bgr.shape}")
        h, w = frame_bgr.shape[:2]
        if (h, w) != (self.height, self.width):
            # INTER_AREA averages when shrinking (no aliasing on 720p -> 224); linear when enlarging.
            interp = cv2.INTER_AREA if h > self.height and w > self.width else cv2.INTER_LINEAR
            frame_bgr = np.asarray(
                cv2.resize(frame_bgr, (self.width, self.height), interpolation=interp), dtype=np.uint8
            )
        img = frame_bgr.astype(np.float32)
        if self.mode == "caffe":
            img -= CAFFE_MEAN_BGR
        else:
            img = img[:, :, ::-1] / np.float32(255.0)
            img = (img - TORCH_MEAN_RGB) / TORCH_STD_RGB
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        if out is None:
            return chw[None].astype(np.float32, copy=False)
        out[0] = chw
        return out


@dataclass
class EncodeResult:
    """Features of one frame and where the time went (ms, monotonic clock)."""

    features: FloatArray  # (C, h, w) conv5 map, or (D,) for fc2 encoders
    preprocess_ms: float
    infer_ms: float


class Encoder(abc.ABC):
    """A VGG16 image encoder: BGR frame in, conv5 feature map out.

    Backends implement :meth:`infer` on a ready NCHW tensor; preprocessing and timing live here so that every
    backend treats frames the same way. Use as a context manager, or call :meth:`close`.
    """

    backend: str = "?"
    precision: str = "fp32"
    #: :meth:`encode_pair` as one batch-2 call (True) or two calls. Per backend, what measured faster
    #: (docs/cpu-backends.md); ``encoder.mirror_batch`` overrides it.
    batch_mirror: bool = False

    def __init__(self, preprocess: Preprocess, onnx_sha256: str = "") -> None:
        self.preprocess = preprocess
        self.onnx_sha256 = onnx_sha256
        self._buf: FloatArray = np.empty((1, 3, preprocess.height, preprocess.width), np.float32)

    @abc.abstractmethod
    def infer(self, tensor: FloatArray) -> FloatArray:
        """(N, 3, H, W) float32 preprocessed -> (N, C, h, w) float32 features (or (N, D) for fc2)."""

    def encode(self, frame_bgr: npt.NDArray[np.uint8]) -> EncodeResult:
        t0 = time.perf_counter()
        x = self.preprocess(frame_bgr, out=self._buf)
        t1 = time.perf_counter()
        y = self.infer(x)
        t2 = time.perf_counter()
        return EncodeResult(y[0], (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def encode_pair(self, frame_bgr: npt.NDArray[np.uint8]) -> tuple[EncodeResult, EncodeResult]:
        """The frame and its horizontal mirror (the mirror view): one batch of 2 when :attr:`batch_mirror`,
        else two calls. A batch's times are split evenly between the two results."""
        mirrored = np.ascontiguousarray(cv2.flip(frame_bgr, 1), dtype=np.uint8)
        if not self.batch_mirror:
            return self.encode(frame_bgr), self.encode(mirrored)
        t0 = time.perf_counter()
        x = np.concatenate([self.preprocess(frame_bgr), self.preprocess(mirrored)])
        t1 = time.perf_counter()
        y = self.infer(x)
        t2 = time.perf_counter()
        pre, inf = (t1 - t0) * 5e2, (t2 - t1) * 5e2
        return EncodeResult(y[0], pre, inf), EncodeResult(y[1], pre, inf)

    def warmup(self, runs: int) -> None:
        x = np.zeros_like(self._buf)
        for _ in range(runs):
            self.infer(x)

    def describe(self) -> str:
        return f"{self.backend}/{self.precision} {self.preprocess.height}x{self.preprocess.width}"

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release backend resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def grid_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``parts`` cells along an axis of ``size``, split as evenly as possible."""
    b = np.linspace(0, size, parts + 1).round().astype(int)
    return [(int(b[k]), int(b[k + 1])) for k in range(parts)]


def pool_grid(fmap: FloatArray, rows: int = 1, cols: int = 3) -> FloatArray:
    """Average-pool a (C, h, w) map over a rows x cols grid -> (rows * cols * C,), cell-major (row, col, C).

    Cells split h and w as evenly as possible; a 7-wide map with 3 columns gives widths 2, 3, 2.
    """
    _, h, w = fmap.shape
    col_bounds = grid_bounds(w, cols)
    cells = [
        fmap[:, r0:r1, c0:c1].mean(axis=(1, 2)) for r0, r1 in grid_bounds(h, rows) for c0, c1 in col_bounds
    ]
    return np.concatenate(cells).astype(np.float32)


def global_pool(fmap: FloatArray) -> FloatArray:
    """Mean over the spatial axes: (C, h, w) -> (C,). Identity for an already flat feature."""
    return fmap if fmap.ndim == 1 else fmap.mean(axis=(1, 2)).astype(np.float32)


def cosine(a: FloatArray, b: FloatArray) -> float:
    a = a.ravel()
    b = b.ravel()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 0.0
