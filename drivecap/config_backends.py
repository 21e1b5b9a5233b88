"""The GPU and accelerator backend knobs: ``tensorrt:`` and ``openvino:``.

Kept beside :mod:`drivecap.config` (which holds them in :class:`~drivecap.config.Config`) so that neither
module passes the size limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivecap.knobs import knob


@dataclass
class TensorRTConfig:
    device: int = knob(0, "CUDA device index", min=0, max=64)
    workspace_mb: int = knob(1024, "Builder workspace memory pool limit (MiB)", min=64, max=65536)
    timing_cache: bool = knob(True, "Keep a timing cache in paths.engines_dir to speed up rebuilds")
    max_height: int = knob(
        0, "Largest input height the engine accepts; 0 = encoder.input_height", min=0, max=4096
    )
    max_width: int = knob(
        0, "Largest input width the engine accepts; 0 = encoder.input_width", min=0, max=4096
    )


@dataclass
class OpenVINOConfig:
    device: str = knob(
        "auto", "OpenVINO device: auto = an Intel GPU when present, else CPU; or CPU, GPU, GPU.1 ..."
    )
