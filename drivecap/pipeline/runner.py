"""The real-time captioning pipeline: capture -> gate -> encoder -> decoder -> overlay, outputs and speech.

Live and ``realtime`` replay (threads, newest frame wins)::

    capture thread --> inference slot --> inference worker: pixel pre-gate, encode, semantic gate,
          |                                                 decode on gate open -> current caption
          +--------> output slot ----> output loop (this thread): overlay the current caption + HUD,
                                        window / video / SRT+VTT / JSONL; speech worker gets new captions

The output loop runs at the source's rate whatever the encoder costs; frames it could not take in time are
overwritten in its slot and counted as dropped. Frames the inference worker never saw are counted as
``not_encoded`` (they still reach the output).

``offline`` replay runs the same stages in one thread on every frame (the encoder on every ``stride``-th),
with file timestamps as the only clock, so the same input, model and config give byte-identical SRT and
JSONL: wall-clock figures go only to the ``wall`` fields of events, which the event log leaves out there,
and to the summary.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from drivecap.metrics import now
from drivecap.pipeline.offline import OfflineLoop
from drivecap.pipeline.sources import Source
from drivecap.pipeline.summary import RunSummary
from drivecap.pipeline.threaded import ThreadedLoop

log = logging.getLogger(__name__)



class Pipeline(OfflineLoop, ThreadedLoop):
    """Runs a source through the stages to the sinks; ``stop()`` (a SIGINT handler) ends it cleanly."""

    def run(self, source: Source) -> RunSummary:
        """Runs to the end of the source, ``stop()``, or the limits; every sink is closed on every path."""
        t_wall0 = now()
        summary = RunSummary(self.outputs.name, self.mode, 0.0)
        with contextlib.ExitStack() as stack:
            if self.mode == "offline":
                self._run_offline(source, stack, summary)
            else:
                self._run_threaded(source, stack, summary)
        summary.wall_s = now() - t_wall0
        summary.interrupted = self.interrupted
        summary.stages = {k: v for k, v in self.metrics.summary()["stages"].items()}  # type: ignore[attr-defined]
        if self.outputs.folder is not None:
            summary.outputs = {
                k: str(self.outputs.folder / f"{self.outputs.name}.{ext}")
                for k, ext in (("video", "mp4"), ("srt", "srt"), ("vtt", "vtt"), ("events", "jsonl"))
                if getattr(self.cfg.output, k)
            }
        if self._error is not None:
            raise self._error
        return summary

# --------------------------------------------------------------------------------------------- helpers


def safe_name(name: str, fallback: str = "capture") -> str:
    """A file-name stem that cannot leave its folder: letters, digits, ``._-`` only, no leading dots."""
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")
    return stem[:80] or fallback


@contextlib.contextmanager
def sigint_stops(pipeline: Pipeline) -> Any:
    """While inside: the first Ctrl-C (SIGINT) asks the pipeline to stop cleanly (sinks closed, files
    complete); a second one interrupts at once. The previous handler is restored on the way out."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # SIGTERM (systemd, docker stop, kill) gets the same orderly stop: dying at once would leave an mp4
    # without its index, which no player opens.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if pipeline.stopping:
            raise KeyboardInterrupt
        log.warning(
            "interrupted (%s): finishing the outputs (Ctrl-C again to abort)", signal.Signals(signum).name
        )
        pipeline.stop()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
