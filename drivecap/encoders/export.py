"""Writes the canonical encoder ONNX: NCHW float input, dynamic height/width, conv5 map (or fc2) output.

The graph is built from :class:`VGGWeights` with onnx.helper, so every weight source gives the same graph and the
preprocessing it expects is written into the model's metadata (``drivecap.preprocess``), where the encoders read it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from drivecap.encoders.base import Preprocess
from drivecap.encoders.weights import BLOCKS, VGGWeights
from drivecap.errors import ModelError
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "features"
OPSET = 17

PREPROCESS_DOC = {
    "caffe": "BGR uint8 frame resized to the input size, float32, minus mean [103.939, 116.779, 123.68] (B, G, R), "
    "no scaling, NCHW (Keras 'caffe' mode)",
    "torch": "BGR frame resized, converted to RGB, /255, minus mean [0.485, 0.456, 0.406], divided by std "
    "[0.229, 0.224, 0.225], NCHW (torchvision mode)",
}


def build_model(weights: VGGWeights, features: str = "conv5", source_sha256: str = "") -> onnx.ModelProto:
    """The encoder graph. ``features='fc2'`` needs the fc layers and fixes the input to 224x224."""
    weights.check()
    if features == "fc2" and not weights.fc:
        raise ModelError(
            f"{weights.source} has no classifier layers (fc1/fc2): --features fc2 needs a full VGG16 file, "
            "not the notop / conv-only weights"
        )
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = INPUT_NAME
    i = 0
    for block, n in enumerate(BLOCKS, start=1):
        for _ in range(n):
            name, w, b = weights.convs[i]
            i += 1
            inits += [numpy_helper.from_array(w, f"{name}/W"), numpy_helper.from_array(b, f"{name}/b")]
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, f"{name}/W", f"{name}/b"],
                    [f"{name}/conv"],
                    name=name,
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                    strides=[1, 1],
                )
            )
            nodes.append(helper.make_node("Relu", [f"{name}/conv"], [f"{name}/relu"], name=f"{name}_relu"))
            x = f"{name}/relu"
        pool_out = OUTPUT_NAME if features == "conv5" and block == 5 else f"block{block}_pool"
        nodes.append(
            helper.make_node(
                "MaxPool", [x], [pool_out], name=f"block{block}_pool", kernel_shape=[2, 2], strides=[2, 2]
            )
        )
        x = pool_out
    c5 = weights.convs[-1][1].shape[0]
    if features == "fc2":
        nodes.append(helper.make_node("Flatten", [x], ["flatten"], axis=1, name="flatten"))
        x = "flatten"
        for j, (name, w, b) in enumerate(weights.fc):
            inits += [numpy_helper.from_array(w, f"{name}/W"), numpy_helper.from_array(b, f"{name}/b")]
            nodes.append(
                helper.make_node("Gemm", [x, f"{name}/W", f"{name}/b"], [f"{name}/gemm"], transB=1, name=name)
            )
            out = OUTPUT_NAME if j == len(weights.fc) - 1 else f"{name}/relu"
            nodes.append(helper.make_node("Relu", [f"{name}/gemm"], [out], name=f"{name}_relu"))
            x = out
        in_shape: list[int | str] = ["batch", 3, 224, 224]
        out_shape: list[int | str] = ["batch", weights.fc[-1][1].shape[0]]
    elif features == "conv5":
        in_shape = ["batch", 3, "height", "width"]
        out_shape = ["batch", c5, "height_32", "width_32"]
    else:
        raise ModelError(f"--features {features!r} is not known; use conv5 or fc2")
    graph = helper.make_graph(
        nodes,
        f"vgg16_{features}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="drivecap")
    model.ir_version = 8  # readable by ONNX Runtime >= 1.14 and TensorRT 10's parser
    model.doc_string = (
        f"VGG16 {features} encoder from {weights.source}. Input: {PREPROCESS_DOC[weights.preprocess]}."
    )
    meta = {
        "drivecap.preprocess": weights.preprocess,
        "drivecap.preprocess_doc": PREPROCESS_DOC[weights.preprocess],
        "drivecap.features": features,
        "drivecap.weights_source": weights.source,
        "drivecap.weights_sha256": source_sha256,
    }
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    return model


def save_atomic(model: onnx.ModelProto, path: Path) -> None:
    """Write next to the target, fsync, then rename: a reader never sees half a file."""
    atomic_write_bytes(path, model.SerializeToString())


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def preprocess_from_metadata(meta: dict[str, str], path: Path, height: int, width: int) -> Preprocess:
    mode = meta.get("drivecap.preprocess")
    if mode not in ("caffe", "torch"):
        raise ModelError(
            f"{path} has no drivecap preprocessing metadata; export it with `drivecap encoder export`"
        )
    if meta.get("drivecap.features") == "fc2":
        height, width = 224, 224
    return Preprocess(mode, height, width)  # type: ignore[arg-type]


def reference_check(model: onnx.ModelProto, weights: VGGWeights) -> float:
    """Largest |difference| of the exported block1_conv1 bias against the source (a cheap integrity check)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(np.abs(inits["block1_conv1/b"] - weights.convs[0][2]).max())
