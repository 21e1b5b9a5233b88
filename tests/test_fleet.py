"""``drivecap fleet`` on a real local Ray: real short clips, a corrupt file, a worker killed mid-drive."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray  # the fleet extra: scripts/setup.sh installs it, so CI runs these tests

from drivecap.assets import AssetStore
from drivecap.cli import main
from drivecap.config import Config
from drivecap.fleet.drives import find_drives, make_tasks, remove_temp_folders
from drivecap.fleet.runner import FleetRunner, actor_plan, worker_config
from drivecap.fleet.search import list_drives, search_captions
from tests.conftest import assert_one_line_error, run_cli, write_short_clip

# (file name, real clip, frame step): three short drives cut from real clips with different scenes.
DRIVES = (("highway", "project_video02", 4), ("overpass", "challenge02", 5), ("street", "street", 9))
N_FRAMES = 24
FPS = 10.0
SETTINGS = ["--set", "encoder.threads=1"]  # what the fleet's workers and the single replays both run


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """One real local Ray for the whole test run (start-up costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory, store: AssetStore) -> Path:
    folder = tmp_path_factory.mktemp("drives")
    for name, clip, step in DRIVES:
        write_short_clip(store, folder / f"{name}.mp4", N_FRAMES, step, FPS, clip=clip)
    (folder / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(20000))
    return folder


@pytest.fixture(scope="module")
def singles(drives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each clip replayed on its own by `drivecap replay` (the reference)."""
    out = tmp_path_factory.mktemp("singles")
    for name, _, _ in DRIVES:
        assert (
            main([*SETTINGS, "-q", "replay", str(drives / f"{name}.mp4"), "--out", str(out), "--no-progress"])
            == 0
        )
    return out


@pytest.fixture(scope="module")
def fleet_out(local_ray: None, drives: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet") / "out"
    rc = main([*SETTINGS, "-q", "fleet", str(drives), "--out", str(out), "--workers", "2", "--no-progress"])
    assert rc == 1  # one drive failed: the exit code says so
    return out


def _same_files(a: Path, b: Path, name: str) -> None:
    for ext in ("srt", "vtt", "jsonl"):
        assert (a / f"{name}.{ext}").read_bytes() == (b / f"{name}.{ext}").read_bytes(), (name, ext)
    assert (a / f"{name}.mp4").stat().st_size > 0
    # One thumbnail per caption, named by the caption's id, in both.
    ids = [json.loads(ln)["id"] for ln in (a / f"{name}.jsonl").open() if '"event":"caption"' in ln]
    thumbs = sorted(p.name for p in (a / f"{name}.thumbs").iterdir())
    assert ids and thumbs == [f"{i:05d}.jpg" for i in ids]
    assert thumbs == sorted(p.name for p in (b / f"{name}.thumbs").iterdir())


@pytest.mark.slow
def test_fleet_outputs_are_byte_identical_to_single_replays(fleet_out: Path, singles: Path) -> None:
    for name, _, _ in DRIVES:
        _same_files(fleet_out / name, singles, name)
        files = sorted(p.name for p in (fleet_out / name).iterdir())
        assert files == sorted(
            [
                ".drive.json",
                *(f"{name}.{e}" for e in ("jsonl", "mp4", "srt", "summary.json", "thumbs", "vtt")),
            ]
        )
    assert not list(fleet_out.glob(".tmp-*"))
    assert not (fleet_out / "corrupt").exists()
    hits = search_captions(fleet_out, limit=1000)
    assert hits and all(
        h["thumbnail"] and (fleet_out / h["thumbnail"]).is_file() for h in hits
    )  # a failed drive leaves no folder


@pytest.mark.slow
def test_the_corrupt_drive_is_one_failed_row_with_its_reason(fleet_out: Path) -> None:
    rows = {d["name"]: d for d in list_drives(fleet_out)}
    assert set(rows) == {"corrupt", *(n for n, _, _ in DRIVES)}
    assert rows["corrupt"]["status"] == "failed"
    assert "corrupt.mp4" in rows["corrupt"]["reason"] and "\n" not in rows["corrupt"]["reason"]
    assert all(rows[n]["status"] == "ok" and rows[n]["frames"] == N_FRAMES for n, _, _ in DRIVES)


@pytest.mark.slow
def test_the_index_finds_a_fact_the_teacher_labels_on_these_clips(fleet_out: Path, drives: Path) -> None:
    import cv2

    from drivecap.training.geometry import geometry_for
    from drivecap.training.teacher import Teacher, facts_from_boxes

    teacher = Teacher.from_assets()
    hits = search_captions(fleet_out, limit=1000)
    assert hits
    labelled: dict[str, set[tuple[str, int]]] = {}
    for name, clip, _ in DRIVES:
        cap = cv2.VideoCapture(str(drives / f"{name}.mp4"))
        frames = sorted({h["frame"] for h in hits if h["drive"] == name})
        for i in frames:
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, img = cap.read()
            assert ok
            for key in facts_from_boxes(teacher.label(img, geometry_for(clip))).keys:
                labelled.setdefault(key, set()).add((name, i))
        cap.release()
    # Some fact the teacher sees at a caption's frame is found by searching for it, at such a frame.
    found = {
        key
        for key, where in labelled.items()
        if {(h["drive"], h["frame"]) for h in search_captions(fleet_out, fact=key, limit=1000)} & where
    }
    assert found, labelled


@pytest.mark.slow
def test_a_second_run_skips_what_is_done(fleet_out: Path, drives: Path) -> None:
    before = {n: (fleet_out / n / f"{n}.jsonl").stat().st_mtime_ns for n, _, _ in DRIVES}
    proc_rc = main(
        [*SETTINGS, "-q", "fleet", str(drives), "--out", str(fleet_out), "--workers", "2", "--no-progress"]
    )
    assert proc_rc == 1  # the corrupt drive is tried again and fails again
    after = {n: (fleet_out / n / f"{n}.jsonl").stat().st_mtime_ns for n, _, _ in DRIVES}
    assert before == after
    summary = json.loads((fleet_out / "fleet.summary.json").read_text())
    assert (summary["skipped"], summary["failed"], summary["ok"]) == (3, 1, 0)


@pytest.mark.slow
def test_a_worker_killed_mid_drive_is_retried_and_the_drive_is_complete(
    local_ray: None, store: AssetStore, real_cfg: Config, tmp_path: Path
) -> None:
    # A drive of its own, long enough that a fast CPU (OpenVINO INT8 on AMX: ~8 ms a frame) is still inside it
    # at the next poll; the runner polls every 50 ms here.
    n_frames = 72
    name, clip, _ = DRIVES[0]
    src = tmp_path / "drives"
    src.mkdir()
    write_short_clip(store, src / f"{name}.mp4", n_frames, 2, FPS, clip=clip)
    single = tmp_path / "single"
    args = [*SETTINGS, "-q", "replay", str(src / f"{name}.mp4"), "--out", str(single), "--no-progress"]
    assert main(args) == 0
    cfg = copy.deepcopy(real_cfg)
    cfg.encoder.threads = 1
    out = tmp_path / "out"
    out.mkdir()
    killed: list[int] = []

    def kill_mid_drive(runner: FleetRunner) -> None:
        done, _total, pid = runner.board_state().get(name, (0, None, 0))
        if not killed and pid and 10 <= done < n_frames:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    runner = FleetRunner(cfg, out, workers=1, progress=False, on_poll=kill_mid_drive, poll_s=0.05)
    report = runner.run(make_tasks(find_drives([str(src / f"{name}.mp4")])))
    assert killed, "the drive ended before the worker could be killed"
    (res,) = report.results
    assert res.status == "ok" and res.frames == n_frames, res
    assert res.pid != killed[0]  # done by the restarted worker process
    assert list(out.glob(".tmp-*"))  # the killed attempt's half-written folder, never published...
    remove_temp_folders(out)  # ...which the command removes at the end
    _same_files(out / name, single, name)


def test_actor_plan_uses_gpus_when_the_cluster_has_them(real_cfg: Config) -> None:
    assert actor_plan({"CPU": 8.0}, None) == (8, {"num_cpus": 1})
    assert actor_plan({"CPU": 8.0}, 3) == (3, {"num_cpus": 1})
    assert actor_plan({"CPU": 16.0, "GPU": 2.0}, None) == (2, {"num_cpus": 1, "num_gpus": 1})
    assert actor_plan({"CPU": 16.0, "GPU": 4.0}, 3) == (3, {"num_cpus": 1, "num_gpus": 1})
    assert actor_plan({"CPU": 16.0, "GPU": 2.0}, 5) == (2, {"num_cpus": 1, "num_gpus": 1})
    assert worker_config(real_cfg, gpu=True).encoder.backend == "tensorrt"
    assert worker_config(real_cfg, gpu=False).encoder.backend == real_cfg.encoder.backend


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_bad_fleet_inputs_are_one_line_errors(tmp_path: Path, drives: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(
        run_cli("fleet", str(tmp_path / "nope*.mp4"), "--out", str(tmp_path / "o")), "nope*.mp4"
    )
    assert_one_line_error(run_cli("fleet", str(drives), "--out", str(a_file)), str(a_file), "is a file")
    port = _closed_port()
    proc = run_cli(
        "fleet", str(drives), "--out", str(tmp_path / "o"), "--address", f"127.0.0.1:{port}", timeout=60
    )
    assert_one_line_error(proc, f"127.0.0.1:{port}", "no Ray cluster")
    assert not (tmp_path / "o").exists()
