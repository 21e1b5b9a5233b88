"""An independent numpy VGG16 forward pass (im2col convolutions), used to check the exported ONNX graphs."""

from __future__ import annotations

import numpy as np

BLOCKS = (2, 2, 3, 3, 3)


def conv3x3_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (C, H, W), w (O, C, 3, 3): same-padded 3x3 convolution (cross-correlation) + bias, then ReLU."""
    c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    cols = np.empty((c, 3, 3, h, wd), dtype=np.float64)
    for dy in range(3):
        for dx in range(3):
            cols[:, dy, dx] = xp[:, dy : dy + h, dx : dx + wd]
    out = np.tensordot(w.astype(np.float64), cols, axes=([1, 2, 3], [0, 1, 2])) + b[:, None, None]
    return np.maximum(out, 0.0)


def maxpool2(x: np.ndarray) -> np.ndarray:
    c, h, w = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def vgg_conv5(x: np.ndarray, convs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """convs: the 13 (OIHW kernel, bias) pairs in order; x (3, H, W) preprocessed."""
    i = 0
    for n in BLOCKS:
        for _ in range(n):
            x = conv3x3_relu(x, *convs[i])
            i += 1
        x = maxpool2(x)
    return x


def vgg_fc2_nchw(
    x: np.ndarray,
    convs: list[tuple[np.ndarray, np.ndarray]],
    fc1: tuple[np.ndarray, np.ndarray],
    fc2: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """fc weights as (out, in) over the NCHW-flattened conv5 map (torchvision's convention)."""
    f = vgg_conv5(x, convs).reshape(-1)
    h = np.maximum(fc1[0] @ f + fc1[1], 0.0)
    return np.maximum(fc2[0] @ h + fc2[1], 0.0)
