"""Scene-change gate: the pixel pre-gate on real frames and the semantic gate's hysteresis, interval and age."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from drivecap.assets import AssetStore
from drivecap.config import GateConfig
from drivecap.pipeline.gate import PixelPreGate, SemanticGate, cosine_distance, grey_thumbnail, thumb_diff


@pytest.fixture(scope="module")
def drive(store: AssetStore) -> list[np.ndarray]:
    """Frames 0, 1 and 100 of a real training drive."""
    cap = cv2.VideoCapture(str(store.clip("project_video02")))
    out = {}
    for i in range(101):
        ok, img = cap.read()
        assert ok
        if i in (0, 1, 100):
            out[i] = img
    cap.release()
    return [out[0], out[1], out[100]]


def test_thumbnail_is_small_grey_and_normalised(drive: list[np.ndarray]) -> None:
    th = grey_thumbnail(drive[0], 32)
    assert th.shape == (32, 32) and th.dtype == np.float32
    assert th.min() >= 0.0 and th.max() <= 1.0 and th.std() > 0.01
    assert thumb_diff(th, th) == 0.0
    white = np.full_like(drive[0], 255)
    black = np.zeros_like(drive[0])
    assert thumb_diff(grey_thumbnail(white, 16), grey_thumbnail(black, 16)) == pytest.approx(1.0)


def test_pixel_pregate_skips_a_repeated_frame_and_passes_a_new_scene(drive: list[np.ndarray]) -> None:
    g = PixelPreGate(32, threshold=0.01)
    moved, s, th = g.check(drive[0])
    assert moved and s == 1.0  # nothing encoded yet
    g.accept(th)
    # the same picture after JPEG re-compression: a camera that did not move
    _ok, buf = cv2.imencode(".jpg", drive[0], [cv2.IMWRITE_JPEG_QUALITY, 70])
    moved, s_same, _ = g.check(np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8))
    assert not moved and s_same < 0.01
    moved, s_far, _ = g.check(drive[2])  # four seconds further down the road
    assert moved and s_far > s_same
    _, s_next, _ = g.check(drive[1])
    assert s_same < s_next < s_far


def test_cosine_distance() -> None:
    a = np.array([1.0, 0.0], np.float32)
    assert cosine_distance(a, a) == pytest.approx(0.0)
    assert cosine_distance(a, np.array([0.0, 2.0], np.float32)) == pytest.approx(1.0)
    assert cosine_distance(a, -a) == pytest.approx(2.0)
    assert cosine_distance(np.zeros(2, np.float32), a) == 1.0


def _vec(angle_deg: float) -> np.ndarray:
    r = np.deg2rad(angle_deg)
    return np.array([np.cos(r), np.sin(r), 0.0], np.float32)


def _dist(angle_deg: float) -> float:
    return 1.0 - float(np.cos(np.deg2rad(angle_deg)))


def test_semantic_gate_opens_on_change_after_min_interval_and_rearms() -> None:
    cfg = GateConfig(open_threshold=_dist(30), close_threshold=_dist(15), min_interval_s=1.0, max_age_s=100)
    g = SemanticGate(cfg)
    d = g.update(_vec(0), 0.0)
    assert d.open and d.reason == "first"
    assert g.update(_vec(10), 0.2).reason == "steady"
    d = g.update(_vec(40), 0.4)  # changed, but only 0.4 s after the last caption
    assert not d.open and d.reason == "interval" and d.state == "pending"
    assert g.update(_vec(20), 0.6).reason == "interval"  # between close and open: still pending
    d = g.update(_vec(40), 1.1)
    assert d.open and d.reason == "change" and d.distance == pytest.approx(_dist(40), abs=1e-5)
    assert g.state == "armed"
    # the reference is now the 40-degree scene
    assert g.update(_vec(45), 3.0).reason == "steady"


def test_semantic_gate_hysteresis_drops_a_blip() -> None:
    cfg = GateConfig(open_threshold=_dist(30), close_threshold=_dist(15), min_interval_s=1.0, max_age_s=100)
    g = SemanticGate(cfg)
    g.update(_vec(0), 0.0)
    assert g.update(_vec(50), 0.3).state == "pending"
    d = g.update(_vec(5), 0.5)  # back below close: it was glare / a car flashing past
    assert not d.open and d.reason == "blip" and d.state == "armed"
    assert g.update(_vec(5), 1.5).reason == "steady"  # no late caption for the blip


def test_semantic_gate_max_age_and_disabled() -> None:
    g = SemanticGate(GateConfig(open_threshold=0.5, close_threshold=0.2, min_interval_s=0.0, max_age_s=2.0))
    g.update(_vec(0), 0.0)
    assert not g.update(_vec(0), 1.9).open
    d = g.update(_vec(0), 2.0)
    assert d.open and d.reason == "age" and d.distance == pytest.approx(0.0, abs=1e-6)
    off = SemanticGate(GateConfig(enabled=False))
    assert [off.update(_vec(0), t * 0.01).open for t in range(3)] == [True, True, True]
