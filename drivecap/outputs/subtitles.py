"""SRT and WebVTT subtitle files: one cue per caption, written as the caption ends."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from drivecap.outputs.base import Sink, SinkError, drop_file
from drivecap.security import subtitle_text

# --------------------------------------------------------------------------------------------- subtitles


def srt_time(t: float) -> str:
    ms = max(0, round(t * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def vtt_time(t: float) -> str:
    return srt_time(t).replace(",", ".")


class SubtitleSink(Sink):
    """SRT or WebVTT: one cue per caption, from when it was first shown until the next one replaced it.

    A cue is written and flushed as soon as it ends, so the file is complete up to the last finished
    caption even if the process is killed; ``close`` ends the open cue at the last frame's time.
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str | None = None) -> None:
        self.path = Path(path)
        self.fmt = fmt or self.path.suffix.lstrip(".").lower()
        if self.fmt not in ("srt", "vtt"):
            raise SinkError(f"subtitle file {self.path}: format must be srt or vtt")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._f: TextIO | None = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        except OSError as exc:
            raise SinkError(f"cannot write subtitles {self.path} ({exc.strerror})") from None
        if self.fmt == "vtt":
            self._f.write("WEBVTT\n\n")
        self.cues = 0
        self._open: tuple[str, float] | None = None
        self._t_last = 0.0

    def show(self, text: str | None, t: float) -> None:
        """The caption on screen at time ``t`` (seconds from the start of the output)."""
        text = subtitle_text(text)  # one safe line: a blank line or "-->" would end or fake a cue
        self._t_last = max(self._t_last, t)
        cur = self._open[0] if self._open else None
        if text == cur:
            return
        if self._open is not None:
            self._write_cue(self._open[0], self._open[1], t)
        self._open = (text, t) if text else None

    def _write_cue(self, text: str, start: float, end: float) -> None:
        if self._f is None:
            return
        end = max(end, start + 0.001)
        self.cues += 1
        if self.fmt == "srt":
            block = f"{self.cues}\n{srt_time(start)} --> {srt_time(end)}\n{text}\n\n"
        else:
            safe = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            block = f"{self.cues}\n{vtt_time(start)} --> {vtt_time(end)}\n{safe}\n\n"
        try:
            self._f.write(block)
            self._f.flush()
        except OSError as exc:  # disk full, device gone: one line, and the other sinks still close
            drop_file(self._f)
            self._f = None
            raise SinkError(f"cannot write subtitles {self.path} ({exc.strerror or exc})") from None

    def close(self, t_end: float | None = None) -> None:
        if self._f is None:
            return
        if self._open is not None:
            self._write_cue(self._open[0], self._open[1], self._t_last if t_end is None else t_end)
            self._open = None
        if self._f is not None:
            f, self._f = self._f, None
            try:
                f.close()
            except OSError as exc:
                raise SinkError(f"cannot write subtitles {self.path} ({exc.strerror or exc})") from None

    def finish(self, t_end: float) -> None:
        """Closes with the open cue ending at ``t_end`` (end of the last frame)."""
        self.close(t_end)


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """Parses SRT text strictly: (start, end, text) per cue. Raises ValueError on any malformed block."""
    import re

    def secs(s: str) -> float:
        m = re.fullmatch(r"(\d\d):(\d\d):(\d\d),(\d\d\d)", s)
        if not m:
            raise ValueError(f"bad SRT time {s!r}")
        h, mi, se, ms = map(int, m.groups())
        return h * 3600 + mi * 60 + se + ms / 1000

    cues = []
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    for n, block in enumerate(blocks, 1):
        lines = block.strip("\n").split("\n")
        if len(lines) < 3 or lines[0] != str(n) or " --> " not in lines[1]:
            raise ValueError(f"SRT block {n} malformed: {block!r}")
        a, b = lines[1].split(" --> ")
        start, end = secs(a), secs(b)
        if end <= start:
            raise ValueError(f"SRT block {n} ends before it starts")
        cues.append((start, end, "\n".join(lines[2:])))
    if not text.endswith("\n\n") and blocks:
        raise ValueError("SRT does not end with a blank line (truncated?)")
    return cues
