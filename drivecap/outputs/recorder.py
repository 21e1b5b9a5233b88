"""The dashcam recorder: H.264 in fragmented MP4 through PyAV, with spoken captions (AAC) and subtitles
(mov_text) inside the file.

Why fragmented: a plain MP4 writes its index (moov) when it is closed, so a power cut or SIGKILL leaves an
unreadable file. With ``frag_keyframe+empty_moov+default_base_moof`` every keyframe starts a fragment that
carries its own index; a killed recording decodes up to its last complete fragment. The keyframe interval
(``keyint_s``) is therefore the amount of video a crash may lose, and what it costs in file size.

The three tracks are fed in step so that FFmpeg's interleaver never holds much in memory (it waits for a
packet of every stream before it writes): audio is encoded in blocks a fixed ``audio_lag_s`` behind the
video, and the subtitle track gets a sample every ``piece_s`` (a blank one when no caption is shown). Two mov_text samples must never touch: FFmpeg 8's MP4 muxer aborts the whole process (an
assertion in movenc.c) on a cue that starts exactly where the previous one ended while fragmenting, so
every piece ends ``_SUB_GAP_MS`` before the next one starts (the muxer fills the gap with an empty sample).

Requires PyAV (``pip install 'drivecap[record]'``): its wheels bundle FFmpeg with libx264 (GPL) and the
native AAC and mov_text encoders.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from drivecap.outputs.audio import AudioTimeline
from drivecap.outputs.base import SinkError

log = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]

CODECS = ("h264", "mp4v")
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
_SUB_TB = Fraction(1, 1000)
_SUB_GAP_MS = 1
_AAC_BLOCK = 1024  # samples per AAC frame

# A minimal ASS header: FFmpeg's mov_text encoder refuses to open without one (it parses styles from it).
_ASS_HEADER = (
    b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\n"
    b"Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, "
    b"Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, "
    b"MarginL, MarginR, MarginV, Encoding\n"
    b"Style: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,100,0,0,1,1,0,2,10,10,10,0\n\n"
    b"[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n"
)


class RecorderError(SinkError):
    """The recording cannot be written (disk full, folder gone, PyAV missing)."""


def pyav_available() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class H264Settings:
    """x264 knobs. ``threads`` 0 lets x264 choose; frame threads add a frame of delay each."""

    preset: str = "superfast"
    crf: int = 23
    keyint_s: float = 1.0
    threads: int = 0
    zerolatency: bool = False


def av_error_types() -> tuple[type[BaseException], ...]:
    import av

    return (av.FFmpegError, OSError)


class Recorder:
    """One fragmented MP4: H.264 video, optional AAC speech track, optional mov_text subtitle track.

    ``write``/``write_at`` as the mp4v ``VideoSink`` (every frame, repeats to fill live gaps; opened on the
    first frame, whose size decides the video's); ``show(text, t)`` is the caption current at ``t``
    (seconds on the video's timeline); ``audio`` (when enabled) is the timeline utterances are placed on.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        settings: H264Settings | None = None,
        *,
        audio: bool = False,
        audio_rate: int = 22050,
        audio_lag_s: float = 0.2,
        piece_s: float = 0.2,
        subtitles: bool = True,
        strict: bool = True,
    ) -> None:
        if not pyav_available():
            raise RecorderError(
                "video.codec=h264 needs PyAV: pip install 'drivecap[record]' (or set video.codec=mp4v)"
            )
        self.path = Path(path)
        self.fps = fps if fps > 0 else 25.0
        self.settings = settings or H264Settings()
        if self.settings.preset not in PRESETS:
            raise RecorderError(f"x264 preset {self.settings.preset!r} not in {', '.join(PRESETS)}")
        self.audio = AudioTimeline(audio_rate) if audio else None
        self.audio_lag_s = audio_lag_s
        self._piece_frames = max(1, round(piece_s * self.fps))
        self.subtitles = subtitles
        self.strict = strict
        self.frames = 0
        self.filled = 0
        self.sub_samples = 0  # mov_text samples with text
        self.failed: str | None = None  # why writing stopped (disk full ...), or None
        self._out: Any = None
        self._v: Any = None
        self._a: Any = None
        self._s: Any = None
        self._size: tuple[int, int] | None = None
        self.keyint = 1
        self._rate = Fraction(self.fps).limit_denominator(1001)
        self._piece: tuple[str, int] | None = None  # (text, start ms) of the open subtitle piece
        self._sub_end_ms = -_SUB_GAP_MS  # where the last written piece ended

    # ------------------------------------------------------------------------------------------ open

    def _open(self, w: int, h: int) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        s = self.settings
        keyint = max(1, round(s.keyint_s * self.fps))
        self.keyint = keyint
        try:
            out = av.open(
                str(self.path),
                "w",
                format="mp4",
                # Interleaving holds packets until every stream has one; cap it so a quiet track cannot
                # make the muxer sit on more than a fragment or two of video (what a crash would lose).
                options={"movflags": MOVFLAGS, "max_interleave_delta": "1500000", "flush_packets": "1"},
            )
            opts = {"preset": s.preset, "crf": str(s.crf), "sc_threshold": "0"}
            if s.zerolatency:
                opts["tune"] = "zerolatency"
            v = out.add_stream("libx264", rate=self._rate, options=opts)
            v.width, v.height, v.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            v.codec_context.gop_size = keyint
            v.codec_context.thread_count = s.threads
            if self.audio is not None:
                self._a = out.add_stream("aac", rate=self.audio.rate, layout="mono")
                self._a.codec_context.bit_rate = 48_000
            if self.subtitles:
                self._s = out.add_stream("mov_text")
                self._s.codec_context.subtitle_header = _ASS_HEADER
                self._s.codec_context.time_base = _SUB_TB
        except av_error_types() as exc:
            raise RecorderError(
                f"cannot write video {self.path} ({why(exc)}); is the folder writable?"
            ) from None
        self._out, self._v = out, v
        self._size = (w, h)

    # ------------------------------------------------------------------------------------------ video

    def write(self, frame: Image) -> None:
        """Appends ``frame`` (BGR) as the next picture."""
        yuv = self._to_yuv(frame)
        if yuv is not None:
            self._write_yuv(yuv)

    def _to_yuv(self, frame: Image) -> npt.NDArray[np.uint8] | None:
        """The frame as I420 (opening the file on the first one); None once writing has failed."""
        if self.failed is not None:
            return None
        import cv2

        h, w = frame.shape[:2]
        if self._size is None:
            self._open(w, h)
            if self.failed is not None:
                return None
        elif (w, h) != self._size:
            # A stream that changes size mid-way (a reconnect to another resolution) is scaled to the first.
            assert self._size is not None
            frame = np.asarray(cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
            h, w = frame.shape[:2]
        if w % 2 or h % 2:  # 4:2:0 needs even sizes: repeat the last row / column
            frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        # OpenCV's BGR->I420 is limited-range BT.601 like swscale's default, and ~10x cheaper here.
        return np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420))

    def _write_yuv(self, yuv: npt.NDArray[np.uint8]) -> None:
        import av

        vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        vf.pts = self.frames
        vf.time_base = 1 / self._rate
        if self._s is not None:
            self._tick_subtitles(self.frames)
            if self.failed is not None:
                return
        try:
            self._mux(self._v.encode(vf))
            self.frames += 1
            self._feed_side_tracks(self.frames / self.fps)
        except av_error_types() as exc:
            self._fail(exc)

    def write_at(self, frame: Image, t: float) -> int:
        """Writes ``frame`` as the picture at ``t`` (s from the start), repeated to fill dropped live frames
        so the video stays in step with the subtitles. Returns frames written."""
        target = max(self.frames + 1, round(t * self.fps) + 1)
        yuv = self._to_yuv(frame)  # once: the repeats are the same picture
        n = 0
        while yuv is not None and self.frames < target and self.failed is None:
            self._write_yuv(yuv)
            n += 1
        self.filled += max(0, n - 1)
        return n

    @property
    def t_video(self) -> float:
        """Seconds of video written so far."""
        return self.frames / self.fps

    def _mux(self, packets: Any) -> None:
        for p in packets:
            self._out.mux(p)

    def _fail(self, exc: BaseException) -> None:
        """Writing failed (disk full, device gone): stop this file, keep what is written (its fragments
        decode). ``strict`` (one file per drive) raises the one-line error; otherwise ``failed`` says why
        and the caller (the segment recorder) warns and goes on with the next segment."""
        self.failed = why(exc)
        out, self._out = self._out, None
        self._close_quietly(out)
        if self.strict:
            raise RecorderError(f"cannot write video {self.path} ({self.failed})")
        log.info("recording %s stopped: %s", self.path, self.failed)  # the segment recorder warns

    def _close_quietly(self, out: Any) -> None:
        if out is not None:
            try:
                out.close()
            except Exception:  # the same full disk: what was written before stays decodable (fragments)
                log.debug("closing %s after a write error failed too", self.path, exc_info=True)

    # ------------------------------------------------------------------------------------------ audio

    def _feed_side_tracks(self, t: float) -> None:
        if self._a is not None and self.audio is not None:
            target = int((t - self.audio_lag_s) * self.audio.rate)
            while self.audio.written + _AAC_BLOCK <= target:
                self._encode_audio(self.audio.render(_AAC_BLOCK))

    def _encode_audio(self, pcm: npt.NDArray[np.float32]) -> None:
        import av

        assert self.audio is not None
        af = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="fltp", layout="mono")
        af.sample_rate = self.audio.rate
        af.pts = self.audio.written - len(pcm)
        af.time_base = Fraction(1, self.audio.rate)
        self._mux(self._a.encode(af))

    # ------------------------------------------------------------------------------------------ subtitles

    def show(self, text: str | None, t: float) -> None:
        """The caption on screen at ``t`` (s on the video's timeline); None or "" for none."""
        if not self.subtitles:
            return
        text = " ".join((text or "").split())  # one line: mov_text has no cue syntax to break
        # Never past the video written so far: a live caller shows the caption at the time it is about to
        # fill up to, and a piece ending beyond the next keyframe would span two fragments (the abort).
        t_ms = min(round(t * 1000), round(self.frames * 1000 / self.fps))
        cur = self._piece[0] if self._piece else None
        if self._piece is None or text != cur:
            self._end_piece(t_ms)
            self._piece = (text, max(t_ms, self._sub_end_ms + _SUB_GAP_MS))

    def _tick_subtitles(self, n: int) -> None:
        """Before video frame ``n``: the open piece is cut at every keyframe, so no subtitle sample spans
        two fragments (FFmpeg's fragmenting MP4 muxer miscounts such a sample's duration and can abort), and
        every ``piece_s`` within a fragment, because a piece reaches the interleaver only when it ends and
        the interleaver holds the video back until it has (what a crash would lose)."""
        if n % self.keyint and (n % self.keyint) % self._piece_frames:
            return
        k_ms = math.ceil(n * 1000 / self.fps)  # not before the keyframe itself: the piece must start in it
        text = self._piece[0] if self._piece else ""
        self._end_piece(k_ms)
        self._piece = (text, max(k_ms, self._sub_end_ms + _SUB_GAP_MS))

    def _end_piece(self, t_ms: int) -> None:
        if self._piece is None or self._s is None or self._out is None:
            return
        import av

        text, start = self._piece
        end = t_ms - _SUB_GAP_MS
        self._piece = None
        if end <= start:
            return
        # "No caption" is a one-space sample, not none: the interleaver waits for a packet of every stream
        # before writing any, so a silent subtitle track would hold back the video (what a crash loses); and
        # an empty (length 0) sample of our own trips the same movenc assertion as touching cues.
        data = (text or " ").encode("utf-8")[:65535]
        pkt = av.Packet(struct.pack(">H", len(data)) + data)
        pkt.stream = self._s
        pkt.time_base = _SUB_TB
        pkt.pts = pkt.dts = start
        pkt.duration = end - start
        try:
            self._out.mux(pkt)
        except av_error_types() as exc:
            self._fail(exc)
            return
        self._sub_end_ms = end
        if text:
            self.sub_samples += 1

    # ------------------------------------------------------------------------------------------ close

    def close(self) -> None:
        """Flushes the encoders and closes the file; raises RecorderError if it cannot be completed."""
        out = self._out
        if out is None:
            return
        try:
            if self.audio is not None and self._a is not None:
                # Audio up to the end of the video (and no further: a player would show a frozen picture).
                end = int(self.t_video * self.audio.rate)
                while self.audio.written < end:
                    self._encode_audio(self.audio.render(min(_AAC_BLOCK, end - self.audio.written)))
                self._mux(self._a.encode(None))
            if self._s is not None:
                self._end_piece(round(self.t_video * 1000))
            self._mux(self._v.encode(None))
            if self._out is not None:
                self._out = None
                out.close()
        except av_error_types() as exc:
            self._fail(exc)
        self._out = None
        if self.failed is not None:
            raise RecorderError(f"video {self.path} could not be completed ({self.failed})")
        log.info("wrote %s (%d frames)", self.path, self.frames)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def why(exc: BaseException) -> str:
    err = getattr(exc, "errno", None)
    if isinstance(err, int) and err > 0:
        return os.strerror(err)
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
