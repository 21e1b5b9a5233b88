"""Replaying one file into one folder with loaded models: what ``drivecap replay`` and each fleet drive run.

Both call :func:`replay_file`, so a fleet drive's outputs are a single replay's by construction of the code
(and the fleet tests compare the bytes anyway).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivecap.config import Config
from drivecap.outputs.tts import backend_for_job
from drivecap.pipeline.core import Outputs
from drivecap.pipeline.runner import Pipeline, sigint_stops
from drivecap.pipeline.sources import CaptureError, SourceSpec, open_source, parse_source
from drivecap.pipeline.summary import RunSummary
from drivecap.security import write_output_text


def replay_config(cfg: Config) -> None:
    """The settings every replay resolves the same way (in place): ``speech.backend: auto`` is silent."""
    cfg.speech.backend, _ = backend_for_job(cfg.speech.backend, "replay")


def replay_file(
    cfg: Config,
    encoder: Any,
    captioner: Any,
    source_spec: str | SourceSpec,
    out_dir: Path,
    name: str,
    *,
    mode: str = "offline",
    max_frames: int | None = None,
    window: bool = False,
    on_total: Callable[[int | None], object] | None = None,
    on_frame: Callable[[int], object] | None = None,
    handle_signals: bool = True,
    metrics: Any = None,
    live: Any = None,
) -> RunSummary:
    """Replays ``source_spec`` (a file or image folder) into ``out_dir/<name>.*`` (mp4, srt, vtt, jsonl,
    summary.json); returns the run summary. ``on_total`` gets the declared frame count before the run.
    ``handle_signals=False`` where the process is not the user's (a Ray worker): Ctrl-C is the driver's.
    ``metrics`` and ``live`` (a web feed, ``--serve``) are handed to the pipeline as they are."""
    replay_config(cfg)
    spec = parse_source(source_spec) if isinstance(source_spec, str) else source_spec
    if spec.live:
        raise CaptureError(
            f"{source_spec!r} is a live source; replay reads files and folders: use `drivecap run --source`"
        )
    source = open_source(spec, cfg.capture)
    total = None
    try:
        source.open()
        total = source.frame_count
    finally:
        source.close()
    if on_total is not None:
        on_total(None if cfg.capture.loop else total)
    pipe = Pipeline(
        cfg,
        encoder,
        captioner,
        Outputs(out_dir, name, window=window),
        mode=mode,
        max_frames=max_frames,
        on_frame=on_frame,
        metrics=metrics,
        live=live,
    )
    with sigint_stops(pipe) if handle_signals else contextlib.nullcontext():
        summary = pipe.run(source)
    write_output_text(
        out_dir / f"{name}.summary.json", json.dumps(summary.as_dict(), indent=1, default=str) + "\n"
    )
    return summary
