"""Reading still images and image folders with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from drivecap.errors import DrivecapError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_image(path: str | Path) -> npt.NDArray[np.uint8]:
    """A BGR uint8 image; a one-line error for a missing, unreadable or non-image file."""
    p = Path(path)
    if not p.exists():
        raise DrivecapError(f"image {p} does not exist")
    if p.is_dir():
        raise DrivecapError(f"{p} is a folder, not an image; pass the image files (e.g. {p}/*.jpg)")
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except OSError as exc:
        raise DrivecapError(f"image {p} cannot be read ({exc.strerror})") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DrivecapError(f"{p} is not an image OpenCV can decode (jpg, png, bmp, webp, tiff)")
    return np.asarray(img, dtype=np.uint8)


def expand_images(paths: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); an empty folder is an error."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DrivecapError(f"folder {p} has no images ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(p)
    return out
