"""A small PNG of held-out frames with the decoder's caption (and the teacher's) drawn under each."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass
class SheetItem:
    image: npt.NDArray[np.uint8]  # BGR frame
    title: str  # clip and frame
    caption: str  # the decoder's
    teacher: str


def _text_block(
    lines: list[tuple[str, tuple[int, int, int]]], width: int, line_h: int, scale: float
) -> npt.NDArray[np.uint8]:
    import cv2

    block = np.full((line_h * len(lines) + 6, width, 3), 255, np.uint8)
    for i, (text, colour) in enumerate(lines):
        cv2.putText(
            block, text, (6, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA
        )
    return block


def contact_sheet(
    items: Sequence[SheetItem], path: Path, cols: int = 5, thumb_w: int = 200, levels: int = 24
) -> Path:
    """Tiles the frames (thumb_w wide) with wrapped captions under each; writes a PNG.

    The thumbnails are posterised to ``levels`` grey levels per channel: photos compress badly in PNG, and
    this keeps the sheet small (a few hundred KB less) without making the scenes harder to read."""
    import cv2

    tiles = []
    step = 256 / max(2, levels)
    for it in items:
        h, w = it.image.shape[:2]
        thumb = cv2.resize(it.image, (thumb_w, round(h * thumb_w / w)), interpolation=cv2.INTER_AREA)
        thumb = (np.floor(thumb / step) * step + step / 2).clip(0, 255).astype(np.uint8)
        wrap = max(20, round(thumb_w / 6.6))
        lines: list[tuple[str, tuple[int, int, int]]] = [(it.title, (90, 90, 90))]
        lines += [(t, (0, 0, 0)) for t in textwrap.wrap("LSTM: " + it.caption, wrap)]
        lines += [(t, (40, 110, 40)) for t in textwrap.wrap("teacher: " + it.teacher, wrap)]
        tiles.append((thumb, lines))
    line_h = 14
    scale = 0.34 * thumb_w / 200
    max_lines = max(len(lines) for _, lines in tiles)
    th = max(t.shape[0] for t, _ in tiles)
    cells = []
    for thumb, lines in tiles:
        pad = np.full((th - thumb.shape[0], thumb_w, 3), 255, np.uint8)
        text = _text_block(lines + [("", (0, 0, 0))] * (max_lines - len(lines)), thumb_w, line_h, scale)
        cell = np.vstack([thumb, pad, text])
        cells.append(np.pad(cell, ((4, 4), (4, 4), (0, 0)), constant_values=255))
    while len(cells) % cols:
        cells.append(np.full_like(cells[0], 255))
    rows = [np.hstack(cells[i : i + cols]) for i in range(0, len(cells), cols)]
    sheet = np.vstack(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path
