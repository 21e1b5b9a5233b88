"""Security basics: no unsafe deserialisation in the package, YAML only through safe_load, credentials in a
source URL never reach a log or event line, and output files cannot leave the output folder whatever the
source is called."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivecap.assets import AssetStore
from drivecap.pipeline.capture import wait_until
from drivecap.pipeline.runner import safe_name
from drivecap.pipeline.sources import parse_source
from drivecap.security import contained_path, mask_url, subtitle_text

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, assert_one_line_error, run_cli
from mjpeg_server import MjpegServer, jpeg_frames_from_video

SECRET = "s3cr3tPassw0rd"

# --------------------------------------------------------------------------------------------- source scan


def _python_files() -> list[Path]:
    files = sorted((REPO / "drivecap").rglob("*.py")) + sorted((REPO / "scripts").rglob("*.py"))
    assert len(files) > 20, "the scan must see the package"
    return files


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def unsafe_uses(source: str) -> list[str]:
    """Unsafe deserialisation and code execution in one module's source (empty list: none)."""
    bad: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            for n in [mod or "", *names]:
                if n.split(".")[0] in (
                    "pickle",
                    "cPickle",
                    "dill",
                    "shelve",
                    "marshal",
                    "joblib",
                    "cloudpickle",
                ):
                    bad.append(f"line {node.lineno}: imports {n}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"line {node.lineno}: {name}("
        if name in ("torch.load", "torch.jit.load"):
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                bad.append(where + " without weights_only=True")
        elif name in ("np.load", "numpy.load"):
            ap = _kw(node, "allow_pickle")
            if not (isinstance(ap, ast.Constant) and ap.value is False):
                bad.append(where + " without an explicit allow_pickle=False")
        elif name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader")
            if not (loader is not None and _dotted(loader) in ("yaml.SafeLoader", "yaml.CSafeLoader")):
                bad.append(where + " without SafeLoader (use yaml.safe_load)")
        elif (
            name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all")
            or (
                name.split(".")[-1] in ("loads", "load")
                and name.split(".")[0] in ("pickle", "dill", "marshal")
            )
            or name in ("eval", "exec")
        ):
            bad.append(where)
        elif name.startswith("subprocess.") or name == "os.system":
            shell = _kw(node, "shell")
            if name == "os.system" or (isinstance(shell, ast.Constant) and shell.value is True):
                bad.append(where + " through a shell")
    return bad


def test_the_scanner_catches_each_unsafe_form() -> None:
    samples = {
        "import torch\ntorch.load('w.pt')\n": "weights_only",
        "import torch\ntorch.load('w.pt', weights_only=False)\n": "weights_only",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)\n": "allow_pickle",
        "import numpy as np\nnp.load('a.npy')\n": "allow_pickle",
        "import yaml\nyaml.load(open('c.yaml'))\n": "SafeLoader",
        "import yaml\nyaml.load(s, Loader=yaml.Loader)\n": "SafeLoader",
        "import yaml\nyaml.unsafe_load(s)\n": "unsafe_load",
        "import pickle\n": "imports pickle",
        "from pickle import loads\n": "imports pickle",
        "eval(s)\n": "eval(",
        "import subprocess\nsubprocess.run(cmd, shell=True)\n": "shell",
    }
    for src, needle in samples.items():
        found = unsafe_uses(src)
        assert found and needle in found[0], (src, found)
    safe = (
        "import torch, numpy as np, yaml\ntorch.load(p, map_location='cpu', weights_only=True)\n"
        "np.load(p, allow_pickle=False)\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    )
    assert unsafe_uses(safe) == []


def test_package_loads_no_pickle_and_yaml_only_safely() -> None:
    found = {}
    n_loads = 0
    for f in _python_files():
        src = f.read_text(encoding="utf-8")
        n_loads += src.count("torch.load(") + src.count("np.load(") + src.count("yaml.safe_load(")
        bad = unsafe_uses(src)
        if bad:
            found[str(f.relative_to(REPO))] = bad
    assert found == {}
    assert n_loads >= 4, "the scan sees the package's real loads (weights, features, bundles, config)"


def test_runtime_never_imports_torch() -> None:
    code = (
        "import sys, drivecap.cli, drivecap.pipeline.runner, drivecap.pipeline.sources, drivecap.outputs.video, drivecap.outputs.speech, "
        "drivecap.security, drivecap.decoder.captioner, drivecap.bench.soak\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("rtsp://admin:hunter2@10.0.0.2:554/live", "rtsp://***:***@10.0.0.2:554/live"),
        ("http://user@cam.local/video.mjpg", "http://***@cam.local/video.mjpg"),
        ("rtsp://a:b:c@h/x?token=1", "rtsp://***:***@h/x?token=1"),
        ("rtsp://u:p%40ss@host/stream", "rtsp://***:***@host/stream"),
        (
            "cannot open stream rtsp://u:pw@h/s (is the camera up?)",
            "cannot open stream rtsp://***:***@h/s (is the camera up?)",
        ),
        ("rtsp://10.0.0.2/live", "rtsp://10.0.0.2/live"),
        ("http://h/a@b", "http://h/a@b"),  # an '@' in the path is not user-info
        ("no url here", "no url here"),
    ],
)
def test_mask_url(raw: str, masked: str) -> None:
    assert mask_url(raw) == masked


@given(
    user=st.text("abcXYZ019._-~", min_size=1, max_size=12),
    pw=st.text("abcXYZ019!$&'()*+,;=._-~%", min_size=1, max_size=20),
)
@settings(max_examples=100, deadline=None)
def test_mask_url_never_leaves_the_password(user: str, pw: str) -> None:
    url = f"rtsp://{user}:{pw}@192.168.1.9:554/h264?ch=1"
    m = mask_url(f"error opening {url}: timeout")
    assert f":{pw}@" not in m and "192.168.1.9:554/h264?ch=1" in m


def test_source_name_has_no_credentials() -> None:
    spec = parse_source(f"rtsp://admin:{SECRET}@10.1.2.3:554/live/main")
    assert SECRET not in spec.name and "admin" not in spec.name and "10.1.2.3" in spec.name


def _leaks(folder: Path, *texts: str) -> list[str]:
    where = [f"output text #{i}" for i, t in enumerate(texts) if SECRET in t]
    for f in folder.rglob("*"):
        if SECRET in f.name:
            where.append(f"file name {f}")
        if f.is_file() and SECRET.encode() in f.read_bytes():
            where.append(str(f))
    return where


@pytest.mark.slow
def test_credentials_in_a_real_stream_url_never_reach_logs_or_events(
    store: AssetStore, tmp_path: Path
) -> None:
    from drivecap.decoder.bundle import write_random_bundle

    bundle = write_random_bundle(tmp_path / "bundle", seed=2)
    frames = jpeg_frames_from_video(store.clip("project_video03"), limit=20, step=3, width=320)
    server = MjpegServer(frames, fps=15).start()
    url = f"http://viewer:{SECRET}@127.0.0.1:{server.port}/stream"
    out = tmp_path / "out"
    sets = [
        "encoder.precision=int8",
        "encoder.threads=1",
        "encoder.warmup_runs=0",
        f"decoder.bundle={bundle}",
        "gate.min_interval_s=0",
        "gate.max_age_s=0.5",
        "capture.read_timeout_s=1.0",
        "capture.reconnect_initial_s=0.1",
        "capture.reconnect_max_s=0.3",
    ]
    args = [sys.executable, "-m", "drivecap", "-vv", "--config", str(REPO / "config.yaml")]
    args += [a for s in sets for a in ("--set", s)]
    args += ["run", "--source", url, "--out", str(out), "--speech", "wav"]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    name = safe_name(f"127.0.0.1:{server.port}_stream")
    log = out / f"{name}.jsonl"
    try:
        assert wait_until(lambda: log.is_file() and '"event":"caption"' in log.read_text(), 120)
        # The camera drops: failed reconnects log their errors (which quote the URL) before it is back.
        server.stop()
        assert wait_until(lambda: '"event":"source_lost"' in log.read_text(), 30)
        time.sleep(1.0)  # a few reconnect attempts fail meanwhile
        server.start()
        assert wait_until(lambda: '"event":"source_back"' in log.read_text(), 30)
        proc.send_signal(2)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    assert proc.returncode == 130, stderr[-2000:]
    assert "reconnect attempt" in stderr and "***:***@127.0.0.1" in stderr, (
        "the failed reconnects were logged"
    )
    assert _leaks(out, stdout, stderr) == []
    assert list(out.glob("*.jsonl")) and list(out.glob("*.speech*.wav")), "events and speech were written"


def test_credentials_in_an_unreachable_url_are_masked_in_the_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_cli(
        "--config",
        str(REPO / "config.yaml"),
        "--set",
        "capture.read_timeout_s=1.0",
        "--set",
        "speech.backend=none",
        "--set",
        "encoder.precision=int8",
        "run",
        "--source",
        f"rtsp://admin:{SECRET}@127.0.0.1:{port}/live",
        "--out",
        str(tmp_path),
    )
    assert_one_line_error(proc, "***:***@127.0.0.1")
    assert _leaks(tmp_path, proc.stdout, proc.stderr) == []


def test_credentials_in_an_unsupported_scheme_are_masked(tmp_path: Path) -> None:
    proc = run_cli("run", "--source", f"ftp://me:{SECRET}@127.0.0.1/cam")
    assert_one_line_error(proc, "ftp://***:***@127.0.0.1")
    assert SECRET not in proc.stderr + proc.stdout


# --------------------------------------------------------------------------------------------- output paths

CRAFTED = [
    "../../x",
    "../../../../etc/passwd",
    "/etc/passwd",
    "/",
    "..",
    ".",
    "",
    "a\x00b",
    "\x00",
    "x" * 5000,
    "~/.ssh/authorized_keys",
    "..\\..\\windows\\system32",
    "C:\\Windows\\evil",
    "name\n../../injected",
    "ĉapo/../..//ŝtelo",
    ".hidden",
    "-rf",
    "con.mp4",
]


@pytest.mark.parametrize("raw", CRAFTED, ids=[repr(c)[:30] for c in CRAFTED])
def test_crafted_source_names_stay_inside_the_output_folder(raw: str, tmp_path: Path) -> None:
    name = safe_name(raw)
    assert name and len(name) <= 80 and "/" not in name and "\x00" not in name and not name.startswith(".")
    for ext in ("mp4", "srt", "vtt", "jsonl", "summary.json", "speech0001.wav"):
        p = contained_path(tmp_path, f"{name}.{ext}")
        assert p.resolve().parent == tmp_path.resolve()


@pytest.mark.parametrize(
    "spec",
    [
        "http://127.0.0.1:9/../../../etc/passwd",
        "rtsp://u:p@127.0.0.1/..%2F..%2Fetc%2Fshadow",
        "http://..%2F..%2Ftmp/x",
        "rtsp://127.0.0.1//absolute/path/cam",
        "http://127.0.0.1/" + "a" * 3000,
    ],
)
def test_crafted_urls_give_contained_output_names(spec: str, tmp_path: Path) -> None:
    name = safe_name(parse_source(spec).name)
    assert contained_path(tmp_path, f"{name}.mp4").resolve().parent == tmp_path.resolve()
    assert "p@" not in name


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_name_is_contained(raw: str) -> None:
    base = Path("/srv/out")
    name = safe_name(raw)
    p = contained_path(base, f"{name}.mp4")
    assert p.parent == base and (base / f"{name}.mp4").resolve().parent == base.resolve()


def test_contained_path_refuses_escapes(tmp_path: Path) -> None:
    for bad in ("../x", "/etc/passwd", "a/b", "..", "", "a\x00b"):
        with pytest.raises(ValueError):
            contained_path(tmp_path, bad)


@pytest.mark.slow
def test_replay_of_a_crafted_file_name_writes_only_inside_out(store: AssetStore, tmp_path: Path) -> None:
    import cv2

    from drivecap.decoder.bundle import write_random_bundle

    bundle = write_random_bundle(tmp_path / "bundle", seed=4)
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    crafted = src_dir / "..; rm -rf ~ $(id) ..mp4"
    cap = cv2.VideoCapture(str(store.clip("project_video02")))
    w = cv2.VideoWriter(str(crafted), cv2.VideoWriter.fourcc(*"mp4v"), 25.0, (320, 180))
    for _ in range(5):
        ok, img = cap.read()
        assert ok
        w.write(cv2.resize(img, (320, 180)))
    w.release()
    cap.release()
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    proc = run_cli(
        "--config",
        str(REPO / "config.yaml"),
        "--set",
        "encoder.precision=int8",
        "--set",
        "encoder.warmup_runs=0",
        "--set",
        f"decoder.bundle={bundle}",
        "replay",
        str(crafted),
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = {p for p in tmp_path.rglob("*")} - before
    # Everything is in out/, the caption thumbnails in their one sub-folder there (output.thumbnails).
    thumbs = out / "rm_-rf_id.thumbs"
    assert new and all(p in (out.parent, out) or p.parent in (out, thumbs) for p in new), sorted(new)
    assert {p.suffix for p in new if p.is_file()} >= {".mp4", ".srt", ".vtt", ".jsonl"}


def test_subtitle_text_is_one_safe_line() -> None:
    assert subtitle_text("car\n\nahead --> now\x85\u2028x\ud800y\ufeff") == "car ahead -> now x y"
    assert subtitle_text("--->") == "->" and subtitle_text("\n \t") == "" and subtitle_text(None) == ""
