"""``knob()``: a config field with its documentation and allowed values (shared by the config modules)."""

from __future__ import annotations

import typing
from dataclasses import field
from typing import Any


def knob(
    default: Any,
    doc: str,
    *,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Any:
    """A config field with its documentation and allowed values."""
    meta = {"doc": doc, "choices": choices, "min": min, "max": max}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata=meta)
    return field(default=default, metadata=meta)
