"""ONNX Runtime encoder backend (CPU): fp32, or INT8 static QDQ made by ``drivecap calibrate``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from drivecap.assets import sha256_file
from drivecap.encoders.base import Encoder, FloatArray
from drivecap.encoders.export import INPUT_NAME, preprocess_from_metadata
from drivecap.errors import ModelError

log = logging.getLogger(__name__)


def open_onnx_metadata(path: Path) -> dict[str, str]:
    """Metadata of an encoder ONNX without loading its weights; a one-line error for a missing/corrupt file."""
    import onnx

    if not path.is_file():
        raise ModelError(f"encoder ONNX {path} does not exist; run `drivecap encoder export`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(
            f"encoder ONNX {path} is corrupt or truncated ({type(exc).__name__}); delete it and run "
            "`drivecap encoder export`"
        ) from None
    return {p.key: p.value for p in model.metadata_props}


class OrtEncoder(Encoder):
    backend = "onnxruntime"

    def __init__(
        self, path: Path, threads: int = 0, precision: str = "fp32", input_hw: tuple[int, int] = (224, 224)
    ) -> None:
        import onnxruntime as ort

        meta = open_onnx_metadata(path)
        super().__init__(
            preprocess_from_metadata(meta, path, *input_hw),
            # An INT8 model carries the sha256 of the fp32 model it was made from: that is the encoder's identity.
            meta.get("drivecap.fp32_sha256") or sha256_file(path),
        )
        self.path = path
        self.precision = precision
        # The mirror view as one batch of 2 where it measured faster than two calls, in three idle runs of
        # `drivecap encoder bench` (median batch 2 / two calls): INT8 0.963, fp32 1.022 (docs/cpu-backends.md).
        self.batch_mirror = precision == "int8"
        self.metadata = meta
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # ONNX Runtime's pool threads spin-wait after every run by default; on a small CPU shared with the
        # capture, overlay and video-writer threads (and, in a bench, other backends) that spinning takes
        # their time. An inference is ~100+ ms, so the wake-up a sleeping pool pays is lost in the noise.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(
                f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:160]}); delete it and re-export"
            ) from None
        inp = self.session.get_inputs()[0]
        if inp.name != INPUT_NAME or len(inp.shape) != 4:
            raise ModelError(f"{path} input is {inp.name} {inp.shape}, expected '{INPUT_NAME}' [N, 3, H, W]")
        self.threads = threads

    def infer(self, tensor: FloatArray) -> FloatArray:
        out = self.session.run(None, {INPUT_NAME: tensor})[0]
        return np.asarray(out, dtype=np.float32)

    def describe(self) -> str:
        return f"{super().describe()} {self.path.name} threads={self.threads or 'auto'}"
