"""Overlay: word wrap, the caption box and its fade, the HUD toggle, and that drawing is deterministic."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.config import OverlayConfig
from drivecap.outputs.overlay import HudInfo, Overlay, wrap_caption

TEXT = "car close ahead in your lane , truck on the right , road curves left"


@pytest.fixture(scope="module")
def frame720(store: AssetStore) -> np.ndarray:
    img = cv2.imread(str(store.test_images()[0]))
    assert img is not None
    return cv2.resize(img, (1280, 720))


def test_wrap_caption_respects_width_and_keeps_words() -> None:
    lines = wrap_caption(TEXT, 24)
    assert all(len(line) <= 24 for line in lines) and len(lines) >= 3
    assert " ".join(lines).split() == TEXT.split()
    assert wrap_caption("", 10) == [""]


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.nonzero(np.any(a != b, axis=(1, 2)))[0]


def test_caption_box_sits_at_the_bottom_and_hud_at_the_top(frame720: np.ndarray) -> None:
    ov = Overlay(OverlayConfig(fade_s=0.0))
    ov.set_caption(TEXT, False, 0.0)
    out = frame720.copy()
    ov.draw(out, 0.0, HudInfo(25.0, 120.0, 9.0, "armed d=0.031"))
    rows = _changed_rows(out, frame720)
    assert rows.size > 0
    top, bottom = rows[rows < 100], rows[rows >= 100]
    assert top.size > 0, "HUD drawn"
    assert bottom.min() > 720 // 2, "caption box in the lower half"
    ov.hud_visible = False
    no_hud = frame720.copy()
    ov.draw(no_hud, 0.0, HudInfo(25.0, 120.0, 9.0, "armed"))
    assert _changed_rows(no_hud, frame720).min() > 720 // 2
    again = frame720.copy()
    ov.draw(again, 0.0, HudInfo(25.0, 120.0, 9.0, "armed"))
    assert np.array_equal(again, no_hud), "same inputs draw the same pixels"


def test_fade_between_captions(frame720: np.ndarray) -> None:
    ov = Overlay(OverlayConfig(fade_s=0.4, hud=False))
    ov.set_caption("clear road ahead", False, 0.0)
    ov.set_caption(TEXT, True, 10.0)

    def strength(t: float) -> float:
        out = frame720.copy()
        ov.draw(out, t)
        return float(np.abs(out.astype(int) - frame720.astype(int)).sum())

    mid_out, at_swap, fading_in, full = strength(10.1), strength(10.2), strength(10.3), strength(10.4)
    assert strength(10.0) > mid_out > at_swap  # the old caption fades out
    assert at_swap < fading_in < full  # then the new one fades in
    assert strength(11.0) == full
    urgent = frame720.copy()
    ov.draw(urgent, 11.0)
    calm = Overlay(OverlayConfig(fade_s=0.0, hud=False))
    calm.set_caption(TEXT, False, 0.0)
    normal = frame720.copy()
    calm.draw(normal, 0.0)
    rows = _changed_rows(normal, frame720)
    assert urgent[rows, :, 2].mean() > normal[rows, :, 2].mean(), "urgent caption box is red"
