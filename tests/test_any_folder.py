"""drivecap works from any folder: with no config.yaml in the working directory, built artifacts resolve to the
artifacts home (this source checkout), never to the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivecap.assets import AssetStore
from drivecap.config import artifacts_home, load_config
from tests.conftest import REPO, run_cli


def test_without_a_config_file_artifacts_live_in_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert artifacts_home() == REPO
    assert cfg.engines_dir == REPO / "engines" and cfg.calibration_dir == REPO / "calibration"
    # An absolute override still wins, and a config file's folder is the base for its own relative paths.
    assert load_config(None, [f"paths.engines_dir={tmp_path / 'e'}"]).engines_dir == tmp_path / "e"
    (tmp_path / "c.yaml").write_text("paths:\n  engines_dir: built\n")
    assert load_config(tmp_path / "c.yaml").engines_dir == tmp_path / "built"


@pytest.fixture
def elsewhere(tmp_path: Path, store: AssetStore) -> tuple[Path, dict[str, str]]:
    """An empty working folder and a private DRIVECAP_HOME that shares the fetched assets (labels go there)."""
    work = tmp_path / "somewhere"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "assets").symlink_to(store.root)
    return work, {"DRIVECAP_HOME": str(home)}


@pytest.mark.slow
def test_replay_caption_encoder_bench_and_eval_from_another_folder(
    elsewhere: tuple[Path, dict[str, str]], store: AssetStore
) -> None:
    work, env = elsewhere
    assert not (work / "config.yaml").exists()
    replay = run_cli(
        "-q", "replay", "project_video01", "--out", "x", "--stride", "20", "--max-frames", "40", "--no-progress",
        cwd=work, env=env,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert {p.suffix for p in (work / "x").iterdir()} >= {".mp4", ".srt", ".vtt", ".jsonl"}

    image = str(store.test_images()[0])
    caption = run_cli("-q", "caption", image, cwd=work, env=env)
    assert caption.returncode == 0, caption.stderr[-2000:]
    assert os.path.basename(image) in caption.stdout

    bench = run_cli(
        "-q",
        "encoder",
        "bench",
        "--json",
        "--frames",
        "4",
        "--runs",
        "20",
        "--no-backends",
        cwd=work,
        env=env,
    )
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert '"speedup"' in bench.stdout

    label = run_cli("-q", "label", "--clips", "project_video01", "--stride", "55", cwd=work, env=env)
    assert label.returncode == 0, label.stderr[-2000:]
    ev = run_cli("-q", "eval", "--clips", "project_video01", "--no-baseline", "--json", cwd=work, env=env)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert '"fact_f1"' in ev.stdout
    assert not (work / "engines").exists()  # nothing was looked for or built in the working folder
