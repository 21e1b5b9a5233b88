"""What every output has: a close() that is always called (context manager) and one error type."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Self, TextIO

import numpy as np

from drivecap.errors import DrivecapError


class SinkError(DrivecapError):
    """An output file cannot be written."""


class Sink:
    """Base: context manager that closes on every exit path."""

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def drop_file(f: TextIO) -> None:
    """Closes a file that can no longer be written (its buffered tail is lost, the descriptor is not)."""
    with contextlib.suppress(OSError):
        f.close()


def json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
