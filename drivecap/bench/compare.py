"""The comparisons `drivecap bench --compare` runs: which two sides (loop, precision, gate, hold, backend) and how they are set up and closed."""

from __future__ import annotations

import copy
from typing import Any

from drivecap.bench.figures import Side
from drivecap.config import Config
from drivecap.errors import BackendUnavailable, DrivecapError

COMPARES = ("loop", "precision", "gate", "hold", "backend")


def make_sides(cfg: Config, compare: str | None) -> list[Side]:
    """Loads the models each side needs (once per distinct encoder) and builds the sides."""
    from drivecap.decoder.captioner import Captioner
    from drivecap.encoders.factory import gpu_available, make_encoder, openvino_available

    backends = [
        b for b, present in (("tensorrt", gpu_available()), ("openvino", openvino_available())) if present
    ] + ["onnxruntime"]
    if compare == "backend" and len(backends) < 2:
        raise BackendUnavailable(
            "--compare backend needs a second backend beside onnxruntime: pip install 'drivecap[openvino]' "
            "(CPU), or TensorRT on an NVIDIA GPU"
        )
    variants: list[tuple[str, str, Config]] = []
    if compare in (None, "loop"):
        variants.append(("drivecap pipeline", "pipeline", cfg))
        if compare == "loop":
            variants.append(("naive loop", "naive", cfg))
    elif compare == "precision":
        from drivecap.encoders.factory import resolve_backend

        # On TensorRT the precision a car would otherwise run is fp16, not fp32.
        other = "fp16" if resolve_backend(cfg) == "tensorrt" else "fp32"
        for prec in ("int8", other):
            c = copy.deepcopy(cfg)
            c.encoder.precision = prec
            variants.append((f"pipeline {prec}", "pipeline", c))
    elif compare == "gate":
        for on in (True, False):
            c = copy.deepcopy(cfg)
            c.gate.enabled = on
            variants.append((f"gate {'on' if on else 'off'}", "pipeline", c))
    elif compare == "hold":
        for on in (True, False):
            c = copy.deepcopy(cfg)
            c.hold.enabled = on
            variants.append((f"hold {'on' if on else 'off'}", "pipeline", c))
    elif compare == "backend":
        for backend in backends:
            c = copy.deepcopy(cfg)
            c.encoder.backend = backend
            if backend != "tensorrt" and c.encoder.precision == "fp16":
                c.encoder.precision = "fp32"
            variants.append((f"{backend} {c.encoder.precision}", "pipeline", c))
    else:
        raise DrivecapError(f"--compare {compare!r} is not known; use one of {', '.join(COMPARES)}")
    encoders: dict[tuple[str, str], Any] = {}
    sides: list[Side] = []
    captioner = None
    try:
        for label, kind, c in variants:
            key = (c.encoder.backend, c.encoder.precision)
            if key not in encoders:
                encoders[key] = make_encoder(c)
            enc = encoders[key]
            if captioner is None:
                captioner = Captioner.load(c, encoder_sha256=enc.onnx_sha256)
            sides.append(Side(label, kind, c, enc, captioner))
    except BaseException:
        for e in encoders.values():
            e.close()
        raise
    return sides


def close_sides(sides: list[Side]) -> None:
    seen: set[int] = set()
    for s in sides:
        if id(s.encoder) not in seen:
            seen.add(id(s.encoder))
            s.encoder.close()
