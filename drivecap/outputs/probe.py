"""Reading a recording back with PyAV: what a player would get out of it, also when it was cut by a crash."""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass

from drivecap.outputs.recorder import RecorderError, av_error_types, why

log = logging.getLogger(__name__)


@dataclass
class Probe:
    """What a recording holds when read back with PyAV (used by the tests and the crash checks)."""

    video_frames: int
    last_video_s: float
    audio_s: float
    subtitle_texts: list[str]
    streams: list[str]
    width: int = 0
    height: int = 0


def probe(path: str | os.PathLike[str], decode: bool = True) -> Probe:
    """Demuxes (and decodes the video of) ``path``; stops quietly at the first damaged packet, as a player
    would, so a killed recording reports what is playable in it. Raises RecorderError if nothing is."""
    import av

    frames, last, audio_s = 0, 0.0, 0.0
    subs: list[str] = []
    try:
        c = av.open(str(path))
    except av_error_types() as exc:
        raise RecorderError(f"{path} does not open as a video ({why(exc)})") from None
    with c:
        streams = [f"{s.type}:{s.codec_context.name}" for s in c.streams]
        vs = c.streams.video[0] if c.streams.video else None
        width, height = (vs.codec_context.width, vs.codec_context.height) if vs is not None else (0, 0)
        try:
            for pkt in c.demux():
                st = pkt.stream
                if st.type == "video" and decode:
                    for f in pkt.decode():
                        frames += 1
                        ft = getattr(f, "time", None)
                        if ft is not None:
                            last = max(last, float(ft))
                elif st.type == "video" and pkt.size and pkt.pts is not None and pkt.time_base:
                    frames += 1
                    last = max(last, float(pkt.pts * pkt.time_base))
                elif st.type == "audio" and pkt.pts is not None and pkt.time_base and pkt.duration:
                    audio_s = max(audio_s, float((pkt.pts + pkt.duration) * pkt.time_base))
                elif st.type == "subtitle" and pkt.size > 2:
                    raw = bytes(pkt)
                    (n,) = struct.unpack(">H", raw[:2])
                    text = raw[2 : 2 + n].decode("utf-8", "replace").strip()
                    if text:
                        subs.append(text)
            if decode and vs is not None:
                for f in vs.codec_context.decode(None):
                    frames += 1
                    if f.time is not None:
                        last = max(last, float(f.time))
        except av.EOFError:
            pass
        except av_error_types() as exc:
            log.info("%s: reading stopped at a damaged packet (%s)", path, why(exc))
    if frames == 0:
        raise RecorderError(f"{path} holds no decodable video frame")
    return Probe(frames, last, audio_s, subs, streams, width, height)
