"""Loop recording for live runs: fixed-length segments, a disk quota, event locks and an index on disk.

Like a dashcam: the recording is cut into segments of ``segment_s`` named by their UTC start time; before a
segment starts (and at every fragment while it grows) the oldest unlocked segments are deleted until the
folder is under ``max_bytes`` and the disk keeps ``min_free_bytes`` free. An urgent caption locks the
segment it falls in and the one before it (the lead-up to the event); the loop never deletes a locked
segment. When nothing unlocked is left to delete, recording pauses (one warning) rather than go over quota.

``index.json`` lists the segments. It is rewritten atomically before a file is created and before one is
deleted, so at any moment it differs from the files by at most the one file being created or deleted; a
restart (``SegmentRecorder.recover``) repairs that: entries without a file are dropped, MP4 files missing
from the index (orphans) are probed and adopted when they decode, removed when they do not, and a segment
a killed run left ``recording`` is probed for what it really holds (the fragmented MP4 decodes up to its
last fragment), as Frigate probes every segment before it counts as recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from drivecap.outputs.probe import probe
from drivecap.outputs.recorder import H264Settings, Recorder, RecorderError
from drivecap.outputs.segment_index import (
    RecoveryReport,
    Segment,
    SegmentIndex,
    file_size,
    utc_from_name,
)

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]


class SegmentRecorder:
    """Writes a live run as segment files in ``folder``; same ``write_at``/``show`` calls as a Recorder,
    with ``t`` on the run's timeline. ``lock(t)`` is the event lock; ``add_speech(pcm, t)`` the audio."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        fps: float,
        settings: H264Settings | None = None,
        *,
        segment_s: float = 60.0,
        max_bytes: int = 4 << 30,
        min_free_bytes: int = 512 << 20,
        lock_before: int = 1,
        audio: bool = False,
        audio_rate: int = 22050,
        subtitles: bool = True,
        run: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = Path(folder)
        self.fps = fps if fps > 0 else 25.0
        self.settings = settings or H264Settings()
        self.segment_s = segment_s
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.lock_before = lock_before
        self.audio = audio
        self.audio_rate = audio_rate
        self.subtitles = subtitles
        self.run = run
        self.clock = clock
        self.index = SegmentIndex(self.folder)
        self.current: Recorder | None = None
        self.seg: Segment | None = None
        self.deleted: list[str] = []
        self.failures = 0
        self.paused = False
        self.frames = 0  # frames written over all segments (write_at semantics on the run's timeline)
        self.filled = 0
        self._warned_pause = False
        self._retry_at = float("-inf")
        self._warned_fail = False
        self._text: str | None = None
        self._recent_speech: list[tuple[float, npt.NDArray[np.float32]]] = []
        self._bytes_per_s: float | None = None
        self.report = self.recover()

    # ------------------------------------------------------------------------------------------ restart

    def recover(self) -> RecoveryReport:
        """Makes the index and the files agree (see the module docstring); returns what was repaired."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.index.load()
        rep = RecoveryReport()
        kept: list[Segment] = []
        for s in self.index.segments:
            p = self.folder / s.file
            if not p.is_file():
                rep.dropped_entries.append(s.file)
                continue
            if s.state == "recording":
                if not self._probe_into(s, p):
                    rep.removed.append(s.file)
                    continue
                s.state = "recovered"
                rep.recovered.append(s.file)
            s.bytes = file_size(p)
            kept.append(s)
        known = {s.file for s in kept}
        for p in sorted(self.folder.glob("*.mp4")):
            if p.name in known or not p.is_file():  # only regular files are recordings
                continue
            s = Segment(p.name, utc_from_name(p.name), 0.0, state="recovered", run="?")
            if self._probe_into(s, p):
                s.bytes = file_size(p)
                kept.append(s)
                rep.adopted.append(p.name)
            else:
                rep.removed.append(p.name)
        kept.sort(key=lambda s: s.file)
        self.index.segments = kept
        self.index.save()
        for line in rep.lines():
            log.warning("segments in %s: %s", self.folder, line)
        return rep

    def _probe_into(self, s: Segment, p: Path) -> bool:
        try:
            pr = probe(p, decode=False)
        except RecorderError as exc:
            log.info("segment %s does not decode (%s): removed", p, exc)
            p.unlink(missing_ok=True)
            return False
        s.duration_s = round(pr.last_video_s + 1.0 / self.fps, 3)
        return True

    # ------------------------------------------------------------------------------------------ quota

    def _disk_free(self) -> int:
        try:
            return shutil.disk_usage(self.folder).free
        except OSError:
            return 1 << 62

    def used_bytes(self) -> int:
        """Bytes of all indexed segments, the growing one measured on disk."""
        total = 0
        for s in self.index.segments:
            total += file_size(self.folder / s.file) if s is self.seg else s.bytes
        return total

    def _make_room(self, need: int) -> bool:
        """Deletes the oldest unlocked segments until ``need`` more bytes fit; False if they cannot."""
        while self.used_bytes() + need > self.max_bytes or self._disk_free() - need < self.min_free_bytes:
            victim = next((s for s in self.index.segments if not s.locked and s is not self.seg), None)
            if victim is None:
                return False
            self.index.segments.remove(victim)
            self.index.save()  # the index first: a crash now leaves an orphan, found at restart
            (self.folder / victim.file).unlink(missing_ok=True)
            self.deleted.append(victim.file)
            log.info("loop recording: deleted %s (%d bytes) for space", victim.file, victim.bytes)
        return True

    def _estimate(self) -> int:
        """The size the next segment will reach, from this run's measured bytes per second."""
        if self._bytes_per_s is None:  # nothing measured yet: the per-fragment check guards the first one
            return 0
        return int(self._bytes_per_s * self.segment_s * 1.1)

    # ------------------------------------------------------------------------------------------ segments

    def _new_name(self) -> tuple[str, str]:
        now = dt.datetime.fromtimestamp(self.clock(), tz=dt.UTC)
        stem = now.strftime("%Y%m%dT%H%M%SZ")
        name, n = f"{stem}.mp4", 1
        # A name taken by a regular file or the index is skipped; anything else there (a device, a dangling
        # link) is where the user pointed the file, and a write error then tells them.
        while (self.folder / name).is_file() or self.index.get(name) is not None:
            name, n = f"{stem}-{n}.mp4", n + 1
        return name, now.isoformat(timespec="milliseconds")

    def _start(self, t: float) -> bool:
        need = self._estimate()
        if not self._make_room(need):
            if not self._warned_pause:
                log.warning(
                    "loop recording paused: no room for a %.1f MB segment in %s (record.max_bytes=%d, "
                    "%d MB locked, %d MB free on disk, record.min_free_bytes=%d); unlock or move segments, "
                    "or raise the quota",
                    need / 1e6,
                    self.folder,
                    self.max_bytes,
                    sum(x.bytes for x in self.index.segments if x.locked) // 1_000_000,
                    self._disk_free() // 1_000_000,
                    self.min_free_bytes,
                )
                self._warned_pause = True
            self.paused = True
            return False
        self.paused = False
        name, utc = self._new_name()
        self.seg = Segment(name, utc, round(t, 3), run=self.run)
        self.index.segments.append(self.seg)
        self.index.save()  # before the file exists: a crash now leaves an entry without a file, dropped later
        self.current = Recorder(
            self.folder / name,
            self.fps,
            self.settings,
            audio=self.audio,
            audio_rate=self.audio_rate,
            subtitles=self.subtitles,
            strict=False,
        )
        if self._text:
            self.current.show(self._text, 0.0)
        self._carry_speech(t)
        log.info("loop recording: segment %s", name)
        return True

    def _carry_speech(self, t: float) -> None:
        """An utterance that started in the previous segment goes on in this one."""
        rec = self.current
        if rec is None or rec.audio is None:
            return
        self._recent_speech = [(ts, p) for ts, p in self._recent_speech if ts + len(p) / self.audio_rate > t]
        for ts, pcm in self._recent_speech:
            skip = max(0, round((t - ts) * self.audio_rate))
            if skip < len(pcm):
                rec.audio.add(pcm[skip:], max(0.0, ts - t))

    def _finish(self, t_end: float) -> None:
        rec, seg = self.current, self.seg
        self.current = None
        if rec is None or seg is None:
            return
        try:
            rec.close()
            if rec.failed is None:
                seg.state = "complete"
            elif seg.state != "cut":
                seg.state = "cut"
                self._segment_failed(seg, rec.failed)
        except RecorderError as exc:
            if seg.state != "cut":
                seg.state = "cut"
                self._segment_failed(seg, str(exc))
        seg.duration_s = round(rec.t_video, 3)
        p = self.folder / seg.file
        seg.bytes = file_size(p)
        if seg.duration_s > 0 and seg.bytes > 0:
            self._bytes_per_s = seg.bytes / seg.duration_s
        if rec.frames == 0:  # nothing was written at all: no segment
            self.index.segments.remove(seg)
            self.index.save()
            p.unlink(missing_ok=True)
        else:
            self.index.save()
        self.seg = None

    def _segment_failed(self, seg: Segment, why: str) -> None:
        self.failures += 1
        if not self._warned_fail:
            log.warning("segment %s stopped: %s; earlier segments are kept", seg.file, why)
            self._warned_fail = True

    # ------------------------------------------------------------------------------------------ input

    def write_at(self, frame: Image, t: float) -> int:
        """``frame`` is the picture at run time ``t`` (s). Starts, rotates and trims segments as needed."""
        if self.seg is not None and t - self.seg.t_start >= self.segment_s:
            self._finish(t)
        if self.current is not None and self.current.failed is not None:
            # Disk full (or the file vanished) mid-segment: close what was written, try again next segment.
            assert self.seg is not None
            if self.seg.state != "cut":
                self.seg.state = "cut"
                self._segment_failed(self.seg, self.current.failed)
                self.index.save()
            seg_end = self.seg.t_start + self.segment_s
            if t < seg_end:
                return 0
            self._finish(t)
        if self.current is None and (t < self._retry_at or not self._start(t)):
            if self.paused and t >= self._retry_at:
                self._retry_at = t + min(self.segment_s, 5.0)  # quota full: look again in a while
            return 0
        rec, seg = self.current, self.seg
        assert rec is not None and seg is not None
        before = rec.frames
        n = rec.write_at(frame, t - seg.t_start)
        self.frames += n
        self.filled += max(0, n - 1)
        # Once per fragment: the growing segment counts against the quota too.
        new_fragment = rec.frames // rec.keyint != before // rec.keyint
        if rec.failed is None and new_fragment and not self._make_room(0):
            self._finish(t)
            self.paused = True
            self._retry_at = t + min(self.segment_s, 5.0)
        return n

    def write(self, frame: Image) -> None:
        self.write_at(frame, self.frames / self.fps)

    def show(self, text: str | None, t: float) -> None:
        self._text = text
        if self.current is not None and self.seg is not None:
            self.current.show(text, max(0.0, t - self.seg.t_start))

    def add_speech(self, pcm: npt.NDArray[np.float32], t: float) -> None:
        """A rendered utterance that started at run time ``t``."""
        if not self.audio:
            return
        self._recent_speech.append((t, pcm))
        if self.current is not None and self.current.audio is not None and self.seg is not None:
            self.current.audio.add(pcm, max(0.0, t - self.seg.t_start))

    def lock(self, t: float) -> list[str]:
        """Locks the segment holding run time ``t`` and the ``lock_before`` ones before it."""
        i = next(
            (
                k
                for k, s in reversed(list(enumerate(self.index.segments)))
                if s.t_start <= t and s.run == self.run
            ),
            None,
        )
        if i is None:
            return []
        mine = [k for k, s in enumerate(self.index.segments) if s.run == self.run and k <= i]
        locked = []
        for k in mine[-(self.lock_before + 1) :]:
            s = self.index.segments[k]
            if not s.locked:
                s.locked = True
                locked.append(s.file)
        if locked:
            self.index.save()
            log.info("event lock: %s", ", ".join(locked))
        return locked

    def close(self) -> None:
        self._finish(self.frames / self.fps)

    def summary(self) -> dict[str, Any]:
        return {
            "segments": len(self.index.segments),
            "locked": sum(s.locked for s in self.index.segments),
            "bytes": self.used_bytes(),
            "deleted": len(self.deleted),
            "failures": self.failures,
        }

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
