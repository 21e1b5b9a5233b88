"""Config section for how captions are held on screen (:mod:`drivecap.captions.hold`)."""

from __future__ import annotations

from dataclasses import dataclass

from drivecap.knobs import knob


@dataclass
class HoldConfig:
    enabled: bool = knob(
        True,
        "Hold facts, not text: a fact enters or leaves the caption only after the decoder has said so for a "
        "while, so the caption does not flip within a second (false = show every decoded caption as it is)",
    )
    enter_s: float = knob(
        1.5,
        "A new fact (or a car turning close) is shown once seen on every caption this long",
        min=0.0,
        max=60.0,
    )
    leave_s: float = knob(3.0, "A shown fact goes once missing this long", min=0.0, max=60.0)
    urgent_enter_s: float = knob(
        0.0, "Enter time of a road user close ahead or a red light ahead (0 = at once)", min=0.0, max=60.0
    )
    confirm: bool = knob(
        False,
        "While a change is pending, caption again when it could be decided (one extra caption) instead of "
        "waiting for the scene to move or for gate.max_age_s",
    )
