"""A captured frame and the source interface the capture thread and replay read from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass
class Frame:
    """One frame with where and when it came from.

    ``t_capture`` is ``time.monotonic()`` when the frame was read (glass time for live sources);
    ``t_source`` is its position in the source in seconds (file timestamp, or seconds since start for live).
    """

    index: int
    image: npt.NDArray[np.uint8]
    t_capture: float
    t_source: float
    stamps: dict[str, float] = field(default_factory=dict)  # stage name -> monotonic time, filled downstream
