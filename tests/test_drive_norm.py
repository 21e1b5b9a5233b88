"""Per-drive feature normalisation: causal, rate-free running statistics shrunk towards the training set's."""

from __future__ import annotations

import numpy as np
import pytest

from drivecap.training.drive_norm import DriveNorm, DriveNormSettings, flip_cells, normalise

ROWS, COLS, C = 2, 3, 4


def _norm(mode: str = "center", tau: float = 10.0, prior: float = 2.0) -> DriveNorm:
    return DriveNorm(
        DriveNormSettings(mode, tau_s=tau, prior_s=prior), np.zeros((6, C)), np.ones((6, C)), ROWS, COLS
    )


def test_flip_cells_reverses_the_columns_of_each_row() -> None:
    cells = np.arange(6 * C, dtype=np.float32).reshape(6, C)
    out = flip_cells(cells, ROWS, COLS)
    assert np.array_equal(out[0], cells[2]) and np.array_equal(out[1], cells[1])
    assert np.array_equal(out[3], cells[5]) and np.array_equal(out[5], cells[3])
    assert np.array_equal(flip_cells(out, ROWS, COLS), cells)


def test_first_frame_is_read_against_the_prior_and_a_steady_drive_against_itself() -> None:
    n = _norm(prior=2.0)
    x = np.full((6, C), 4.0, np.float32)
    n.update(x, 0.0)  # first frame weighs max_gap_s = 1 s against 2 s of prior (mean 0)
    mean, _ = n.stats()
    assert np.allclose(mean, 4.0 / 3.0, atol=1e-5)
    for i in range(1, 300):
        n.update(x, i * 0.1)
    mean, std = n.stats()
    # 30 s of frames at tau 10 s: the prior's 2 s are a small share of the ~10 s effective weight
    assert np.all(mean > 3.0) and np.all(mean < 4.0)
    assert np.allclose(n.apply(x), x - mean)
    # the variance is the mixture's: W seconds of 4.0 (none of their own) and 2 s of the prior N(0, 1)
    w = 2.0 * mean / (4.0 - mean)
    assert np.allclose(std**2, (16.0 * w + 2.0) / (w + 2.0) - mean**2, rtol=1e-4)


def test_statistics_do_not_depend_on_the_frame_rate() -> None:
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(600, 6, C)).cumsum(axis=0) * 0.05  # a slowly drifting drive, 20 s at 30 fps
    fast, slow = _norm(), _norm()
    for i, x in enumerate(signal):
        fast.update(x, i / 30)
        if i % 3 == 0:
            slow.update(x, i / 30)
    mf, _ = fast.stats()
    ms, _ = slow.stats()
    assert np.abs(mf - ms).max() < 0.05 * np.abs(mf).max()


def test_a_long_gap_counts_at_most_max_gap_seconds() -> None:
    a, b = _norm(), _norm()
    x0, x1 = np.zeros((6, C)), np.ones((6, C))
    a.update(x0, 0.0)
    b.update(x0, 0.0)
    a.update(x1, 1.0)
    b.update(x1, 100.0)  # 99 s of skipped static frames: as if 1 s had passed
    assert np.allclose(a.stats()[0], b.stats()[0])


def test_reset_starts_a_new_drive_from_the_prior() -> None:
    n = _norm()
    n.update(np.full((6, C), 9.0), 0.0)
    n.reset()
    assert np.allclose(n.stats()[0], 0.0) and np.allclose(n.stats()[1], 1.0)


def test_modes() -> None:
    x = np.arange(6 * C, dtype=np.float32).reshape(6, C)
    mean = np.ones((6, C), np.float32) * np.arange(6)[:, None]
    std = np.full((6, C), 2.0, np.float32)
    assert np.array_equal(normalise(x, mean, std, "off", ROWS, COLS), x)
    assert np.allclose(normalise(x, mean, std, "center", ROWS, COLS), x - mean)
    assert np.allclose(
        normalise(x, mean, std, "center", ROWS, COLS, mirrored=True), x - flip_cells(mean, 2, 3)
    )
    assert np.allclose(normalise(x, mean, std, "standardise", ROWS, COLS), (x - mean) / 2.0)
    cat = normalise(x, mean, std, "concat", ROWS, COLS)
    assert cat.shape == (6, 2 * C) and np.array_equal(cat[:, :C], x)


@pytest.mark.parametrize("kw", [{"mode": "median"}, {"tau_s": 0.0}, {"prior_s": -1.0}])
def test_bad_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="drive normalisation"):
        DriveNormSettings(**kw)  # type: ignore[arg-type]
