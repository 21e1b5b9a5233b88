"""Per-stage latency recording for the pipeline: monotonic clocks, counters and percentiles.

Every stage records how long it took (milliseconds, from ``time.perf_counter`` / ``time.monotonic``
differences, never wall-clock time of day). The benchmark builds on :class:`LatencyRecorder` and
:func:`percentile`, so the numbers a summary prints and the numbers a benchmark plots come from one place.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass


def now() -> float:
    """The one clock every stage stamps with (monotonic seconds)."""
    return time.monotonic()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics; NaN when empty."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside 0..100")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(frozen=True)
class StageStats:
    """Summary of one stage's samples (milliseconds)."""

    count: int
    mean: float
    p50: float
    p95: float
    max: float

    def as_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean_ms": self.mean,
            "p50_ms": self.p50,
            "p95_ms": self.p95,
            "max_ms": self.max,
        }


class LatencyRecorder:
    """Thread-safe store of per-stage samples (ms) and event counters.

    Stages are free-form names (``capture``, ``pregate``, ``encode``, ``decode``, ``overlay``, ``write``,
    ``glass_to_caption``, ``glass_to_speech`` ...). Samples are kept whole (a clip gives thousands, not
    millions) so any percentile can be asked for afterwards.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # array('d'): 8 bytes a sample instead of ~32 for a list of floats, so a long live run grows 4x slower.
        self._samples: dict[str, array[float]] = {}
        self._counts: dict[str, int] = {}

    def record(self, stage: str, ms: float) -> None:
        with self._lock:
            self._samples.setdefault(stage, array("d")).append(float(ms))

    def since(self, stage: str, t_start: float) -> float:
        """Records ``now() - t_start`` (both monotonic seconds) as milliseconds; returns it."""
        ms = (now() - t_start) * 1e3
        self.record(stage, ms)
        return ms

    @contextmanager
    def time(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(stage, (time.perf_counter() - t0) * 1e3)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def counter(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def samples(self, stage: str) -> list[float]:
        with self._lock:
            return list(self._samples.get(stage, ()))

    def stages(self) -> list[str]:
        with self._lock:
            return list(self._samples)

    def stats(self, stage: str) -> StageStats | None:
        data = self.samples(stage)
        if not data:
            return None
        return StageStats(
            len(data), sum(data) / len(data), percentile(data, 50), percentile(data, 95), max(data)
        )

    def p50(self, stage: str) -> float:
        return percentile(self.samples(stage), 50)

    def summary(self) -> dict[str, object]:
        """Counters and per-stage statistics as plain data (for JSON and the end-of-run table)."""
        stages: dict[str, dict[str, float]] = {}
        for name in self.stages():
            st = self.stats(name)
            if st is not None:
                stages[name] = st.as_dict()
        with self._lock:
            counts = dict(self._counts)
        return {"counters": counts, "stages": stages}


class RateMeter:
    """Frames per second over a sliding window of the last ``window`` ticks (for the HUD)."""

    def __init__(self, window: int = 30) -> None:
        self._times: list[float] = []
        self._window = window

    def tick(self, t: float | None = None) -> None:
        self._times.append(now() if t is None else t)
        if len(self._times) > self._window:
            del self._times[0]

    @property
    def rate(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0
