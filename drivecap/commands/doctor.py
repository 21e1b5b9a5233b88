"""``drivecap doctor``: one screen on what this machine can do, and the command that fixes what is missing.

Every check is one line: ok / warn / FAIL, what was found, and what to run. Exit 0 when the default ``replay``
can run here (assets fetched, encoder exported, INT8 fresh when INT8 is the precision, default bundle made for
this encoder), 1 otherwise. Jetson users lose hours to exactly these: pip's OpenCV has no GStreamer (so no CSI
camera through nvarguscamerasrc), and engines go stale after a JetPack or TensorRT upgrade.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from drivecap.config import Config

PACKAGES = (
    "numpy",
    "opencv-python-headless",
    "onnx",
    "onnxruntime",
    "openvino",
    "av",
    "pyttsx3",
    "aiohttp",
    "ray",
    "tensorrt",
    "pycuda",
    "torch",
)


@dataclass
class Check:
    area: str
    status: str  # ok | warn | fail | info
    found: str
    fix: str = ""
    needed_for_replay: bool = False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="what this machine can do (GPU, backends, OpenCV build, speech, assets, engines) and how to fix it",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> Check:
    found = [f"python {platform.python_version()}"]
    found += [f"{d} {v}" for d in PACKAGES if (v := _version(d)) is not None]
    return Check("versions", "info", ", ".join(found))


def _gpu() -> list[Check]:
    from drivecap.encoders.factory import gpu_available

    out = []
    smi = shutil.which("nvidia-smi")
    tegra = Path("/etc/nv_tegra_release")
    name = ""
    if smi:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
        name = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""
    if tegra.is_file():
        name = name or "Jetson (" + tegra.read_text(errors="replace").split(",")[0].strip("# \n") + ")"
    trt = _version("tensorrt")
    pycuda = importlib.util.find_spec("pycuda") is not None
    if not name and not Path("/dev/nvidia0").exists() and not tegra.is_file():
        out.append(Check("gpu", "info", "none: the CPU backend will be used"))
        return out
    out.append(Check("gpu", "ok", name or "an NVIDIA device node exists"))
    if trt is None:
        out.append(
            Check(
                "tensorrt",
                "warn",
                "tensorrt is not installed",
                "pip install -e '.[gpu]' (JetPack: use its python3-libnvinfer)",
            )
        )
    elif not trt.startswith("10."):
        out.append(
            Check("tensorrt", "warn", f"tensorrt {trt}: drivecap's backend is written for TensorRT 10")
        )
    if not pycuda:
        out.append(
            Check("pycuda", "warn", "pycuda is not installed", "pip install pycuda (needs the CUDA toolkit)")
        )
    usable = gpu_available()
    out.append(
        Check(
            "gpu backend",
            "ok" if usable else "warn",
            "TensorRT will be used" if usable else "TensorRT cannot run: the CPU backend will be used",
        )
    )
    return out


def _cpu_backends() -> list[Check]:
    out = []
    import onnxruntime as ort

    out.append(Check("onnxruntime", "ok", "providers " + ", ".join(ort.get_available_providers())))
    if importlib.util.find_spec("openvino") is None:
        out.append(
            Check(
                "openvino",
                "info",
                "not installed (ONNX Runtime is used on the CPU)",
                "pip install -e '.[openvino]' for the faster CPU backend",
            )
        )
    else:
        try:
            import openvino as ov

            devices = ov.Core().available_devices
            out.append(Check("openvino", "ok", f"devices {', '.join(devices)}"))
        except Exception as exc:  # a broken install must not break the doctor
            out.append(
                Check(
                    "openvino",
                    "warn",
                    f"installed but does not start ({exc})",
                    "pip install --force-reinstall openvino",
                )
            )
    return out


def _opencv() -> Check:
    import cv2

    info: dict[str, str] = {}
    for line in cv2.getBuildInformation().splitlines():
        key, _, val = line.strip().partition(":")
        if key in ("FFMPEG", "GStreamer", "v4l/v4l2", "GUI"):
            info[key] = val.strip().split()[0] if val.strip() else "NO"
    found = f"OpenCV {cv2.__version__}: " + ", ".join(f"{k} {v}" for k, v in info.items())
    if info.get("GStreamer", "NO").upper() == "NO":
        return Check(
            "opencv",
            "warn",
            found,
            "no GStreamer: Jetson CSI cameras (nvarguscamerasrc) need an OpenCV built with it (JetPack's python3-opencv); USB cameras, files and URLs work",
        )
    return Check("opencv", "ok", found)


def _speech_and_display() -> list[Check]:
    from drivecap.outputs.tts import live_backend, sound_output
    from drivecap.outputs.window import display_available

    out = []
    espeak = shutil.which("espeak-ng")
    out.append(
        Check(
            "espeak-ng",
            "ok" if espeak else "warn",
            espeak or "not installed",
            "" if espeak else "apt-get install espeak-ng",
        )
    )
    aplay = shutil.which("aplay")
    out.append(
        Check(
            "aplay",
            "ok" if aplay else "warn",
            aplay or "not installed",
            "" if aplay else "apt-get install alsa-utils",
        )
    )
    ok, why = sound_output()
    backend, reason = live_backend()
    out.append(
        Check(
            "sound",
            "ok" if ok else "info",
            f"{why}; `drivecap run` speaks with: {backend} ({reason})"
            if ok
            else f"{why}: `drivecap run` will show captions without speaking",
        )
    )
    shown, why = display_available()
    out.append(
        Check(
            "display",
            "ok" if shown else "info",
            why if not shown else f"window through {why}",
            "" if shown else "use `drivecap run --serve 127.0.0.1:8080` and open the page",
        )
    )
    return out


def _assets(cfg: Config) -> list[Check]:
    from drivecap.assets import WHEELS, AssetStore, drivecap_home

    store = AssetStore(drivecap_home(cfg.paths.home))
    missing = [w.name for w in WHEELS.values() if not store.is_fetched(w)]
    if missing:
        return [
            Check(
                "assets",
                "fail",
                f"missing in {store.root}: {', '.join(missing)}",
                "drivecap assets fetch",
                True,
            )
        ]
    return [Check("assets", "ok", f"{len(WHEELS)} pinned packages in {store.root}", needed_for_replay=True)]


def _encoder(cfg: Config) -> list[Check]:
    from drivecap.assets import sha256_file
    from drivecap.decoder.bundle import load_bundle, resolve_bundle_dir
    from drivecap.encoders.calibrate import check_int8_fresh
    from drivecap.encoders.paths import delta_file, encoder_onnx_path, int8_onnx_path
    from drivecap.errors import DrivecapError

    out = []
    try:
        fp32 = encoder_onnx_path(cfg)
    except DrivecapError as exc:  # encoder.delta names no file
        return [Check("encoder", "fail", str(exc).split(";")[0], "fix or empty encoder.delta", True)]
    if (delta := delta_file(cfg)) is not None:
        out.append(Check("delta", "info", f"encoder.delta {delta} (fine-tuned layer) -> {fp32.name}"))
    if not fp32.is_file():
        return [*out, Check("encoder", "fail", f"{fp32} does not exist", "drivecap encoder export", True)]
    sha = sha256_file(fp32)
    out.append(Check("encoder", "ok", f"{fp32} (sha256 {sha[:12]})", needed_for_replay=True))
    int8 = int8_onnx_path(cfg)
    need_int8 = cfg.encoder.precision == "int8"
    try:
        check_int8_fresh(cfg, int8)
        out.append(
            Check(
                "int8",
                "ok",
                f"{int8} fresh (same fp32 model and calibration set)",
                needed_for_replay=need_int8,
            )
        )
    except DrivecapError as exc:
        out.append(
            Check(
                "int8",
                "fail" if need_int8 else "warn",
                str(exc).split(";")[0],
                "drivecap calibrate",
                need_int8,
            )
        )
    folder = resolve_bundle_dir(cfg.decoder.bundle, cfg.base_dir)
    try:
        load_bundle(folder, encoder_sha256=sha)
        out.append(Check("bundle", "ok", f"{folder} made for this encoder", needed_for_replay=True))
    except DrivecapError as exc:
        out.append(
            Check(
                "bundle",
                "fail",
                str(exc),
                "drivecap encoder export (the default weights), or train a bundle for this encoder",
                True,
            )
        )
    engines = sorted(p.name for p in cfg.engines_dir.glob("*.engine"))
    ov_cache = sorted(p.name for p in cfg.engines_dir.glob("openvino*"))
    cached = engines + ov_cache
    out.append(
        Check(
            "engines",
            "info",
            f"cached in {cfg.engines_dir}: {', '.join(cached)}"
            if cached
            else f"no TensorRT/OpenVINO engine cached in {cfg.engines_dir} (built on first use)",
        )
    )
    return out


def checks(cfg: Config) -> list[Check]:
    out = [_versions()]
    out += _gpu()
    out += _cpu_backends()
    out.append(_opencv())
    out += _speech_and_display()
    out += _assets(cfg)
    out += _encoder(cfg)
    return out


MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "info": "    "}


def run(args: argparse.Namespace, cfg: Config) -> int:
    found = checks(cfg)
    ready = not any(c.status == "fail" and c.needed_for_replay for c in found)
    if args.json:
        print(json.dumps({"replay_ready": ready, "checks": [asdict(c) for c in found]}, indent=1))
    else:
        for c in found:
            line = f"{MARK[c.status]} {c.area:<12} {c.found}"
            print(line + (f"\n     {'':<12} -> {c.fix}" if c.fix else ""))
        print(
            "\nready: `drivecap replay` can run here"
            if ready
            else "\nnot ready: run the commands after -> above (or `bash scripts/setup.sh` in a checkout)"
        )
    sys.stdout.flush()
    return 0 if ready else 1
