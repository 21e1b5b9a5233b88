"""A fine-tuned encoder conv layer shipped as a small low-rank delta file, merged into the encoder ONNX.

The delta of one conv layer is ``ΔW[o, i, kh, kw] = Σ_k up[o, k] · down[k, i, kh, kw]`` plus a bias delta, trained
against one set of VGG16 weights. The file is an ``.npz`` (read with ``allow_pickle=False``) of the arrays ``down``,
``up``, ``bias`` and ``meta``, a 0-d unicode array holding JSON: format, version, layer, rank, the sha256 of the
base weights, the sha256 of the arrays (corruption inside a valid zip is caught too) and free provenance.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from drivecap.assets import is_sha256_hex
from drivecap.errors import ModelError
from drivecap.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]

FORMAT = "drivecap.encoder_delta"
VERSION = 1
#: The arrays of a delta file, in the order their bytes are hashed for ``arrays_sha256``.
ARRAYS = ("down", "up", "bias")
HEADER_KEYS = ("format", "version", "layer", "rank", "base_weights_sha256", "arrays_sha256", "meta")
AGAIN = "fetch or train it again"


@dataclass(frozen=True)
class EncoderDelta:
    layer: str  # conv layer (node) name in the exported graph, e.g. "block5_conv3"
    down: Array  # (rank, C_in, kh, kw)
    up: Array  # (C_out, rank)
    bias: Array  # (C_out,), added to the layer's bias
    base_weights_sha256: str  # "drivecap.weights_sha256" of the encoder ONNX the delta was trained on
    meta: dict[str, Any]  # free provenance (training command, folds, input size ...), JSON-serialisable

    def weight_delta(self) -> Array:
        """ΔW (C_out, C_in, kh, kw), summed in float64 so the merge does not depend on the summation order."""
        dw = np.einsum("ok,kihw->oihw", self.up.astype(np.float64), self.down.astype(np.float64))
        return dw.astype(np.float32)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def arrays_sha256(down: np.ndarray, up: np.ndarray, bias: np.ndarray) -> str:
    """sha256 over name, shape and little-endian float32 bytes of down, up and bias, in that order."""
    h = hashlib.sha256()
    for name, a in zip(ARRAYS, (down, up, bias), strict=True):
        h.update(f"{name}{tuple(a.shape)}".encode())
        h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
    return h.hexdigest()


def _check_arrays(where: str, down: np.ndarray, up: np.ndarray, bias: np.ndarray, rank: int) -> None:
    """Dtypes, dimensions, the rank and C_out agreeing between the arrays, and finite values."""
    for name, a, ndim in (("down", down, 4), ("up", up, 2), ("bias", bias, 1)):
        if a.dtype != np.float32 or a.ndim != ndim:
            raise ModelError(
                f"{where}: array {name} is {a.dtype} of shape {a.shape}, expected float32 with {ndim} "
                f"dimensions; {AGAIN}"
            )
    if not (down.shape[0] == up.shape[1] == rank) or rank < 1:
        raise ModelError(
            f"{where}: the rank does not agree (header {rank}, down {down.shape}, up {up.shape}); {AGAIN}"
        )
    if bias.shape[0] != up.shape[0]:
        raise ModelError(
            f"{where}: bias has {bias.shape[0]} values but up has C_out={up.shape[0]} rows; {AGAIN}"
        )
    for name, a in (("down", down), ("up", up), ("bias", bias)):
        if not np.isfinite(a).all():
            raise ModelError(f"{where}: array {name} has non-finite values (NaN or inf); {AGAIN}")


def save_delta(path: Path, delta: EncoderDelta) -> str:
    """Writes the delta file atomically (checked first, like :func:`load_delta` would); returns its sha256."""
    where = f"encoder delta {path}"
    if not delta.layer or not isinstance(delta.meta, dict):
        raise ModelError(f"{where}: the delta needs a layer name and a dict of meta")
    if not is_sha256_hex(delta.base_weights_sha256):
        raise ModelError(
            f"{where}: base_weights_sha256 {delta.base_weights_sha256!r} is not a sha256 hex digest"
        )
    _check_arrays(where, delta.down, delta.up, delta.bias, delta.rank)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "layer": delta.layer,
        "rank": delta.rank,
        "base_weights_sha256": delta.base_weights_sha256,
        "arrays_sha256": arrays_sha256(delta.down, delta.up, delta.bias),
        "meta": delta.meta,
    }
    try:
        text = json.dumps(header, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: meta is not JSON-serialisable ({exc})") from None
    buf = io.BytesIO()
    np.savez(buf, down=delta.down, up=delta.up, bias=delta.bias, meta=np.array(text))
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    sha = hashlib.sha256(data).hexdigest()
    log.info("wrote encoder delta %s (%s, rank %d, sha256 %s)", path, delta.layer, delta.rank, sha[:12])
    return sha


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of the file; a bad zip, CRC, npy header or truncated member all mean 'corrupted'."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":  # np.load would try a non-zip file as .npy or pickle
                raise ValueError("not a zip archive")
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with z:
            return {name: z[name] for name in z.files}
    except Exception as exc:  # BadZipFile, zlib.error, ValueError, EOFError, OSError ...
        detail = str(exc).split("\n")[0][:120]
        raise ModelError(
            f"encoder delta {path} is corrupted or not a delta file ({type(exc).__name__}: {detail}); {AGAIN}"
        ) from None


def load_delta(path: Path) -> EncoderDelta:
    """Reads and checks a delta file; every failure is a one-line :class:`ModelError` naming the file."""
    where = f"encoder delta {path}"
    if not path.is_file():
        raise ModelError(
            f"{where} does not exist (or is not a file); fix encoder.delta / --delta, or {AGAIN}"
        )
    arrays = _read_npz(path)
    missing = [n for n in (*ARRAYS, "meta") if n not in arrays]
    if missing:
        raise ModelError(f"{where} has no array {missing[0]!r}: it is not a complete delta file; {AGAIN}")
    raw = arrays["meta"]
    try:
        if raw.ndim != 0 or raw.dtype.kind != "U":
            raise ValueError(f"meta is {raw.dtype} of shape {raw.shape}, not a JSON string")
        header = json.loads(str(raw[()]))
        if not isinstance(header, dict):
            raise ValueError("meta is not a JSON object")
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}; {AGAIN}") from None
    if header.get("format") != FORMAT:
        raise ModelError(
            f"{where} is not a drivecap encoder delta (format {header.get('format')!r}, expected {FORMAT!r})"
        )
    if header.get("version") != VERSION:
        raise ModelError(
            f"{where} is format version {header.get('version')!r}; this drivecap reads version {VERSION}: "
            "use the drivecap that wrote it, or train the delta again"
        )
    absent = [k for k in HEADER_KEYS if k not in header]
    if absent:
        raise ModelError(f"{where}: its meta has no key {absent[0]!r}; {AGAIN}")
    layer, rank = header["layer"], header["rank"]
    base, sums = header["base_weights_sha256"], header["arrays_sha256"]
    if not isinstance(layer, str) or not layer or not isinstance(rank, int) or isinstance(rank, bool):
        raise ModelError(
            f"{where}: layer {layer!r} / rank {rank!r} in its meta are not a name and an integer; {AGAIN}"
        )
    if not is_sha256_hex(base) or not isinstance(header["meta"], dict):
        raise ModelError(f"{where}: base_weights_sha256 / meta in its meta are malformed; {AGAIN}")
    down, up, bias = (arrays[n] for n in ARRAYS)
    if arrays_sha256(down, up, bias) != sums:
        raise ModelError(
            f"{where} is corrupted: its arrays do not match the arrays_sha256 in its meta; {AGAIN}"
        )
    _check_arrays(where, down, up, bias, rank)
    return EncoderDelta(layer, down, up, bias, base, header["meta"])


def _conv_names(graph: onnx.GraphProto) -> list[str]:
    return [n.name for n in graph.node if n.op_type == "Conv"]


def merge_delta(model: onnx.ModelProto, delta: EncoderDelta, source: Path | None = None) -> onnx.ModelProto:
    """A new model with the layer's W + ΔW and b + Δb; the input model is left as it was.

    Metadata added: ``drivecap.delta_layer`` and ``drivecap.delta_sha256`` (the sha256 of ``source``, the delta
    file; without a file, :func:`arrays_sha256` of the delta).
    """
    from drivecap.assets import sha256_file
    from drivecap.encoders.export import read_metadata

    name = f"delta {source.name}" if source is not None else f"the delta for {delta.layer}"
    meta = read_metadata(model)
    built_from = meta.get("drivecap.weights_sha256", "")
    if not built_from:
        raise ModelError(
            f"{name}: this ONNX has no drivecap.weights_sha256 metadata, it was not exported by "
            "`drivecap encoder export`; export the encoder with it and merge again"
        )
    if built_from != delta.base_weights_sha256:
        raise ModelError(
            f"{name} was trained on encoder weights {delta.base_weights_sha256[:12]}, this ONNX is built from "
            f"{built_from[:12]}: export the encoder from the weights it was trained on, or train the delta again"
        )
    if meta.get("drivecap.delta_sha256"):
        raise ModelError(
            f"{name}: this ONNX already has delta {meta['drivecap.delta_sha256'][:12]} merged in; merge into a "
            "plain `drivecap encoder export` model"
        )
    node = next((n for n in model.graph.node if n.op_type == "Conv" and n.name == delta.layer), None)
    if node is None or len(node.input) < 3:
        convs = _conv_names(model.graph)
        raise ModelError(
            f"{name} is for layer {delta.layer!r}, but this ONNX has no Conv layer (with a bias) of that name; "
            f"its Conv layers: {', '.join(convs) or 'none'}"
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    w_t, b_t = inits.get(node.input[1]), inits.get(node.input[2])
    if w_t is None or b_t is None:
        raise ModelError(f"{name}: layer {delta.layer!r} of this ONNX takes its weights from no initializer")
    w, b = numpy_helper.to_array(w_t), numpy_helper.to_array(b_t)
    want = (delta.up.shape[0], delta.down.shape[1], *delta.down.shape[2:])
    if w.shape != want or b.shape != (want[0],):
        raise ModelError(
            f"{name} changes a {delta.layer} kernel of shape {want}, but this ONNX's is {w.shape}: it was made "
            "for another encoder; train the delta again"
        )
    new_w = (w.astype(np.float64) + delta.weight_delta()).astype(np.float32)
    new_b = (b.astype(np.float64) + delta.bias).astype(np.float32)
    w_t.CopyFrom(numpy_helper.from_array(new_w, w_t.name))
    b_t.CopyFrom(numpy_helper.from_array(new_b, b_t.name))
    sha = sha256_file(source) if source is not None else arrays_sha256(delta.down, delta.up, delta.bias)
    for key, value in (("drivecap.delta_sha256", sha), ("drivecap.delta_layer", delta.layer)):
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    out.doc_string += f" {delta.layer} fine-tuned by a rank-{delta.rank} delta (sha256 {sha[:12]})."
    rel = float(np.abs(new_w - w).max() / max(float(np.abs(w).max()), math.ulp(1.0)))
    log.info("merged %s into %s (rank %d, largest |ΔW| / max |W| = %.3g)", name, delta.layer, delta.rank, rel)
    onnx.checker.check_model(out)
    return out
