"""The recording knobs: the video writer (``video:``) and loop recording (``record:``).

Kept beside :mod:`drivecap.config` (which holds them in :class:`~drivecap.config.Config`) so that neither
module passes the size limit; every comment here says what a value costs, as MediaMTX's do.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivecap.knobs import knob


@dataclass
class VideoConfig:
    codec: str = knob(
        "h264",
        "h264 = PyAV/libx264 in fragmented MP4: plays in browsers and phones, and a power cut or kill -9 "
        "loses only the last fragment (x264 is GPL); mp4v = OpenCV MPEG-4 Part 2: no browser plays it and a "
        "killed run leaves no readable file",
        choices=("h264", "mp4v"),
    )
    preset: str = knob(
        "ultrafast",
        "x264 preset: slower presets give smaller files for the same quality but cost CPU the encoder needs "
        "(see docs/recording.md for the measured trade-off on 2 cores)",
        choices=(
            "ultrafast",
            "superfast",
            "veryfast",
            "faster",
            "fast",
            "medium",
            "slow",
            "slower",
            "veryslow",
        ),
    )
    crf: int = knob(21, "x264 constant rate factor: lower = better quality, bigger files", min=0, max=51)
    keyint_s: float = knob(
        1.0,
        "Seconds between keyframes = fragment length: what a crash may lose (plus ~0.2 s); shorter costs size",
        min=0.2,
        max=10.0,
    )
    threads: int = knob(
        0, "x264 threads; 0 = x264 chooses (each frame thread adds a frame of delay)", min=0, max=64
    )
    audio: bool = knob(True, "h264: mux the spoken captions as an AAC track when speech is on")
    subtitles: bool = knob(True, "h264: mux the captions as a mov_text subtitle track (besides .srt/.vtt)")


@dataclass
class RecordConfig:
    loop: bool = knob(
        True,
        "Live sources with --out: loop recording in segments under <out>/<name>.segments/ (replay always "
        "writes one file per drive)",
    )
    segment_s: float = knob(
        60.0, "Segment length (s); segments are named by their UTC start time", min=1.0, max=3600.0
    )
    max_bytes: int = knob(
        4_000_000_000,
        "Quota for the segments: the oldest unlocked one is deleted to stay under it (locked ones never are)",
        min=1_000_000,
    )
    min_free_bytes: int = knob(
        500_000_000, "Keep at least this much disk free (deleting old unlocked segments for it)", min=0
    )
    lock_before: int = knob(
        1,
        "An urgent caption locks its segment and this many before it (the lead-up to the event)",
        min=0,
        max=10,
    )
