"""The JSONL event log: one JSON object per line, flushed as written."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, TextIO

from drivecap.outputs.base import Sink, SinkError, drop_file, json_default

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- events


class EventLog(Sink):
    """JSON Lines, one event per line, flushed per line.

    Events may carry a ``wall`` sub-object (wall-clock latencies, monotonic stamps). With
    ``deterministic=True`` (offline replay) it is left out, so the same input, model and config give a
    byte-identical file.
    """

    def __init__(self, path: str | os.PathLike[str], deterministic: bool = False) -> None:
        self.path = Path(path)
        self.deterministic = deterministic
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f: TextIO | None = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as exc:
            raise SinkError(f"cannot write events {self.path} ({exc.strerror})") from None
        self.count = 0
        self._lock = threading.Lock()  # the inference, output and speech threads all log events

    def write(self, event: dict[str, Any]) -> None:
        if self.deterministic and "wall" in event:
            event = {k: v for k, v in event.items() if k != "wall"}
        # ASCII-only: a raw U+2028/U+0085 in a caption would split the line for many JSONL readers, and a
        # lone surrogate cannot be written as UTF-8 at all; escaped, both round-trip through json.loads.
        line = json.dumps(event, ensure_ascii=True, separators=(",", ":"), default=json_default) + "\n"
        with self._lock:
            if self._f is None:
                return
            try:
                self._f.write(line)
                self._f.flush()
            except OSError as exc:  # disk full, device gone: one line, and the other sinks still close
                drop_file(self._f)
                self._f = None
                raise SinkError(f"cannot write events {self.path} ({exc.strerror or exc})") from None
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                f, self._f = self._f, None
                try:
                    f.close()
                except OSError as exc:
                    raise SinkError(f"cannot write events {self.path} ({exc.strerror or exc})") from None
