"""One small JPEG per caption (``<name>.thumbs/00001.jpg``...): what a search hit or the drive browser shows.

Written at caption time from the frame the caption was made from (before the overlay is drawn on it), so a
thumbnail shows the scene, not the caption. A failed write is logged and the run goes on: a thumbnail is a
convenience, the captions themselves are in the subtitles and the event log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from drivecap.outputs.base import Sink

log = logging.getLogger(__name__)

THUMBS_SUFFIX = ".thumbs"
WIDTH = 320  # wide enough to recognise a scene in a result list; about 10-20 kB a JPEG
QUALITY = 80


def thumbnail_path(folder: Path, name: str, number: int) -> Path:
    """Where the thumbnail of caption ``number`` (its id in the event log) of output ``name`` goes."""
    return folder / f"{name}{THUMBS_SUFFIX}" / f"{number:05d}.jpg"


class ThumbnailSink(Sink):
    def __init__(self, folder: Path, name: str, width: int = WIDTH) -> None:
        self.folder = folder
        self.name = name
        self.width = width
        self.written = 0
        self._warned = False

    def write(self, number: int, image: np.ndarray) -> Path | None:
        import cv2

        h, w = image.shape[:2]
        small = (
            image
            if w <= self.width
            else cv2.resize(
                image, (self.width, max(1, round(h * self.width / w))), interpolation=cv2.INTER_AREA
            )
        )
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
        path = thumbnail_path(self.folder, self.name, number)
        try:
            if not ok:
                raise OSError("JPEG encoding failed")
            # Renamed into place (never a half JPEG) but not fsynced: a thumbnail lost in a power cut is
            # cheap, while an fsync per caption measured ~15 ms on the output thread.
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, path)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write caption thumbnail %s (%s); going on without thumbnails", path, exc)
                self._warned = True
            return None
        self.written += 1
        return path
