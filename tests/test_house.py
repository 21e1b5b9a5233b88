"""The house stays standing: layers import only downwards, sub-packages form no cycle, modules stay readable,
and the runtime imports neither torch nor the training code nor the optional servers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "drivecap"

#: The layout of docs/layout.md, bottom first: a module may import from its own layer or the ones below.
LAYERS: dict[str, int] = {
    "foundation": 0,
    "captions": 1,
    "encoders": 1,
    "decoder": 1,
    "outputs": 2,
    "pipeline": 3,
    "web": 4,
    "fleet": 4,
    "bench": 4,
    "commands": 5,
    "training": 6,  # may use everything; only commands reach it, lazily
}
TOP_LEVEL_COMMANDS = {"cli", "__main__"}
MAX_LINES = 450


def area(module: str) -> str:
    """drivecap.pipeline.gate -> pipeline; drivecap.config -> foundation; drivecap.cli -> commands."""
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"
    if parts[1] in TOP_LEVEL_COMMANDS:
        return "commands"
    return parts[1] if parts[1] in LAYERS and (PACKAGE / parts[1]).is_dir() else "foundation"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def drivecap_imports(path: Path, lazy: bool = True) -> list[tuple[int, str]]:
    """Every drivecap module imported in the file; with ``lazy``, inside functions too (lazy imports count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not lazy and getattr(node, "col_offset", 0) > 0:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "drivecap":
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "drivecap"]
    return found


def all_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_subpackage_has_a_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "models"}
    assert subpackages <= set(LAYERS), f"add {sorted(subpackages - set(LAYERS))} to LAYERS and docs/layout.md"


def test_no_module_imports_from_a_layer_above() -> None:
    wrong = []
    for path in all_modules():
        src = area(module_name(path))
        top_level = set(drivecap_imports(path, lazy=False))
        for line, target in drivecap_imports(path):
            dst = area(target)
            # The train/eval/label commands reach the training wing, but only inside the command's function,
            # so that importing the CLI never loads it.
            if dst == "training" and src == "commands" and (line, target) not in top_level:
                continue
            if LAYERS[dst] > LAYERS[src]:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({src}) imports {target} ({dst})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_areas() -> None:
    edges: dict[str, set[str]] = {}
    for path in all_modules():
        src = area(module_name(path))
        for _, target in drivecap_imports(path):
            dst = area(target)
            if dst != src:
                edges.setdefault(src, set()).add(dst)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    cycles = sorted(f"{a} <-> {b}" for a, outs in edges.items() for b in outs if reaches(b, a, {b}))
    assert not cycles, cycles


def test_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an outputs module importing the pipeline is flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from drivecap.pipeline.runner import Pipeline\n")
    [(line, target)] = drivecap_imports(bad)
    assert line == 2 and LAYERS[area(target)] > LAYERS[area("drivecap.outputs.overlay")]


def test_no_module_over_the_size_limit() -> None:
    big = [
        f"{p.relative_to(REPO)}: {n} lines"
        for p in all_modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    ]
    assert not big, big


RUNTIME = (
    "drivecap.pipeline.runner",
    "drivecap.encoders.factory",
    "drivecap.decoder.captioner",
    "drivecap.commands.run",
    "drivecap.commands.replay",
    "drivecap.cli",
)
NEVER_AT_RUN_TIME = (
    "torch",
    "drivecap.training",
    "drivecap.training.teacher",
    "ray",
    "aiohttp",
    "matplotlib",
)


@pytest.mark.parametrize("module", RUNTIME)
def test_runtime_import_pulls_no_training_torch_or_servers(module: str) -> None:
    code = (
        f"import sys, importlib\nimportlib.import_module({module!r})\n"
        f"print(','.join(m for m in {NEVER_AT_RUN_TIME!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.strip() == "", f"importing {module} imported {proc.stdout.strip()}"
