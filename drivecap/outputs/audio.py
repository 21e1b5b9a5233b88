"""Where spoken captions go in the recording's audio track: utterance PCM placed on the video's timeline.

The recorder pulls audio block by block a little behind the video (``AudioTimeline.render``); each
utterance is mixed in at the sample where it started, silence everywhere else, so any player speaks the
drive in step with the picture.

Two ways utterances arrive:

* offline replay decides an utterance on file time (``reserve``) before its WAV exists, and the speech
  thread renders the file later (``fill``). ``render`` waits for every reserved utterance that starts
  inside the block it is asked for, so the same input gives the same samples whatever the threads' timing.
* live runs only learn of an utterance once it was synthesised (``add``); one that would start in audio
  already written is moved to the first sample not yet written (and counted), never dropped.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Pcm = npt.NDArray[np.float32]

DEFAULT_RATE = 22050  # espeak-ng's own output rate: no resampling for the common case


def read_wav(path: Path, rate: int) -> Pcm:
    """A mono float32 signal in [-1, 1] at ``rate`` Hz from a 8/16/32-bit PCM WAV (channels averaged).

    The stdlib ``wave`` module covers what espeak-ng and pyttsx3 write; resampling is linear, which is
    plenty for speech at these rates and keeps it exact and deterministic (no library needed for it).
    """
    with wave.open(str(path)) as w:
        width, channels, src_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV is not supported")
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    if src_rate != rate and len(x) > 1:
        n_out = max(1, round(len(x) * rate / src_rate))
        x = np.interp(np.arange(n_out) * (src_rate / rate), np.arange(len(x)), x).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def synthesize(text: str, rate_wpm: int, rate: int) -> Pcm | None:
    """``text`` spoken by espeak-ng into samples at ``rate`` (None when espeak-ng is not installed).

    The recording's track for the ``espeak`` and ``pyttsx3`` backends, which play sound but write none:
    both speak through espeak-ng on Linux, so the track has the same voice the driver heard.
    """
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="drivecap-tts-") as tmp:
        path = Path(tmp) / "utt.wav"
        proc = subprocess.run(
            [exe, "-s", str(rate_wpm), "-w", str(path), "--", text],
            capture_output=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0 or not path.is_file():
            return None
        return read_wav(path, rate)


@dataclass
class _Placed:
    start: int  # sample index on the timeline
    pcm: Pcm | None  # None while reserved and not yet rendered
    dropped: bool = False  # the rendering failed: the slot is silence


class AudioTimeline:
    """Mixes utterances onto a silent timeline; ``render`` hands out consecutive blocks of it."""

    def __init__(self, rate: int = DEFAULT_RATE, wait_timeout_s: float = 30.0) -> None:
        self.rate = rate
        self.wait_timeout_s = wait_timeout_s
        self.written = 0  # samples handed out so far
        self.placed = 0
        self.moved_late = 0  # live utterances that arrived after their start had been written
        self._items: dict[int, _Placed] = {}
        self._next_key = 0
        self._cond = threading.Condition()

    def reserve(self, t_start: float) -> int:
        """Reserves an utterance starting at ``t_start`` (s on the video's timeline); returns its key."""
        with self._cond:
            return self._put(_Placed(self._sample(t_start), None))

    def _put(self, item: _Placed) -> int:
        key = self._next_key
        self._next_key += 1
        self._items[key] = item
        return key

    def fill(self, key: int, pcm: Pcm | None) -> None:
        """The rendered samples of a reserved utterance (None: rendering failed, leave silence)."""
        with self._cond:
            item = self._items.get(key)
            if item is None:  # already given up on (render timed out): nothing to place
                return
            item.pcm = pcm
            item.dropped = pcm is None
            if pcm is not None:
                self.placed += 1
            self._cond.notify_all()

    def add(self, pcm: Pcm, t_start: float) -> None:
        """An utterance already rendered (live): placed at ``t_start`` or, if that was written, right after."""
        with self._cond:
            start = self._sample(t_start)
            if start < self.written:
                self.moved_late += 1
                log.debug(
                    "utterance at %.2f s arrived late; placed at %.2f s", t_start, self.written / self.rate
                )
                start = self.written
            self._put(_Placed(start, pcm))
            self.placed += 1

    def _sample(self, t: float) -> int:
        return max(0, round(t * self.rate))

    def render(self, n: int) -> Pcm:
        """The next ``n`` samples of the timeline. Waits (up to ``wait_timeout_s``) for reserved utterances
        that start inside them; one still missing then is left silent with a warning."""
        with self._cond:
            start, end = self.written, self.written + n
            waiting = [
                it for it in self._items.values() if it.pcm is None and not it.dropped and it.start < end
            ]
            if waiting and not self._cond.wait_for(
                lambda: all(it.pcm is not None or it.dropped for it in waiting), self.wait_timeout_s
            ):
                for it in waiting:
                    if it.pcm is None:
                        it.dropped = True
                log.warning("speech audio not rendered within %.0f s: left silent", self.wait_timeout_s)
            out = np.zeros(n, dtype=np.float32)
            done = []
            for key, it in self._items.items():
                pcm = it.pcm
                if pcm is not None:
                    a, b = max(start, it.start), min(end, it.start + len(pcm))
                    if a < b:
                        out[a - start : b - start] += pcm[a - it.start : b - it.start]
                    if it.start + len(pcm) <= end:
                        done.append(key)
                elif it.dropped:
                    done.append(key)
            for key in done:  # finished utterances leave; a late fill() for one of them is ignored
                del self._items[key]
            self.written = end
            np.clip(out, -1.0, 1.0, out=out)  # overlapping utterances must not wrap around in the encoder
            return out

    def pending_until(self) -> int:
        """The sample where the last known utterance ends (the recorder flushes up to it at the end)."""
        with self._cond:
            ends = [it.start + len(it.pcm) for it in self._items.values() if it.pcm is not None]
            return max(ends, default=0)
