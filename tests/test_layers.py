"""The layer rule (docs/architecture.md): imports only go downwards,
``flows -> tasks -> sqflow (engine) -> data_contracts``, and the engine never imports Prefect."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: layer -> top-level names its modules must not import
FORBIDDEN = {
    "data_contracts": {"sqflow", "tasks", "flows", "prefect"},
    "sqflow": {"tasks", "flows", "prefect"},
    "tasks": {"flows"},
}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (relative imports: its own package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_only_go_downwards(layer):
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no modules under {layer}/"
    bad = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & FORBIDDEN[layer])
        for p in files
        if _imports(p) & FORBIDDEN[layer]
    }
    assert bad == {}, f"{layer}/ imports a layer above it: {bad}"


def test_the_checker_sees_a_violation(tmp_path):
    """The rule above can fail: a module importing upwards (also inside a function) is caught."""
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from prefect import task\n    import flows.cli\n")
    assert _imports(p) == {"prefect", "flows"}


def test_the_engine_runs_without_prefect():
    """Importing every engine module (stages included) loads no Prefect module."""
    mods = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "sqflow").rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'tasks', 'flows'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
