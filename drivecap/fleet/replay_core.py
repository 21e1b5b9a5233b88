"""Replaying one file into one folder with loaded models: what ``drivecap replay`` and each fleet drive run.

Both call :func:`replay_file`, so a fleet drive's outputs are the same as a single replay's by construction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivecap.config import Config


def replay_file(
    cfg: Config,
    encoder: Any,
    captioner: Any,
    source_spec: str,
    out_dir: Path,
    name: str,
    *,
    mode: str = "offline",
    max_frames: int | None = None,
    window: bool = False,
    on_total: Callable[[int | None], object] | None = None,
    on_frame: Callable[[int], object] | None = None,
    handle_signals: bool = True,
) -> Any:
    """Replays ``source_spec`` (a file or image folder) into ``out_dir/<name>.*`` (mp4, srt, vtt, jsonl,
    summary.json); returns the run summary. ``on_total`` gets the declared frame count before the run."""
    import contextlib

    from drivecap.capture import CaptureError, open_source, parse_source
    from drivecap.pipeline import Outputs, Pipeline, sigint_stops
    from drivecap.security import write_output_text

    spec = parse_source(source_spec)
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
    )
    with sigint_stops(pipe) if handle_signals else contextlib.nullcontext():
        summary = pipe.run(source)
    write_output_text(
        out_dir / f"{name}.summary.json", json.dumps(summary.as_dict(), indent=1, default=str) + "\n"
    )
    return summary
