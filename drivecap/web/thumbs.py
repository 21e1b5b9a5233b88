"""Thumbnails of a recording at a caption's time, made in memory from the MP4 (the server writes nothing).

PyAV seeks to the key frame before the time and decodes up to it; OpenCV scales and JPEG-encodes. Results
are cached in memory by (file, its size and mtime, time, width), so a drive's caption list costs one decode
per caption once. When the fleet index (issue 14) stores thumbnails, those are used instead.
"""

from __future__ import annotations

import functools
from pathlib import Path


class ThumbnailError(Exception):
    pass


def thumbnail(path: Path, t: float, width: int = 192) -> bytes:
    st = path.stat()
    return _cached(str(path), st.st_size, st.st_mtime_ns, round(max(0.0, t), 2), width)


@functools.lru_cache(maxsize=1024)
def _cached(path: str, size: int, mtime_ns: int, t: float, width: int) -> bytes:
    import av
    import cv2

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            tb = float(stream.time_base) if stream.time_base else 1 / 90000
            container.seek(int(t / tb), stream=stream, backward=True, any_frame=False)
            img = None
            for frame in container.decode(stream):
                img = frame.to_ndarray(format="bgr24")
                if frame.pts is None or frame.pts * tb >= t - 0.02:
                    break
    except (av.FFmpegError, IndexError, OSError) as exc:
        raise ThumbnailError(f"{Path(path).name}: {exc}") from None
    if img is None:
        raise ThumbnailError(f"{Path(path).name}: no frame at {t:.2f} s")
    h = max(1, round(img.shape[0] * width / img.shape[1]))
    small = cv2.resize(img, (width, h), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 75])
    if not ok:
        raise ThumbnailError(f"{Path(path).name}: JPEG encoding failed")
    return bytes(buf.tobytes())


def video_codec(path: Path) -> str | None:
    """The video codec's name (``h264``, ``mpeg4`` ...) or None when the file does not open."""
    import av

    try:
        with av.open(str(path)) as container:
            return str(container.streams.video[0].codec_context.name)
    except (av.FFmpegError, IndexError, OSError):
        return None
