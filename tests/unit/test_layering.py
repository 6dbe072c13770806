"""Layering, as the README's layout promises: ``formats``, ``metrics`` and ``decoding`` import
neither torch, transformers nor ray; ``generation`` imports no ray; ``score``, ``serve`` and
``train`` never import each other. Imports are checked in a fresh interpreter (every module of
the package imported), the stage boundaries in the source (every import statement)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "giellm_ray"


def _imported_after(packages: list[str], extra: str = "") -> list[str]:
    """Heavy modules in ``sys.modules`` after importing every module of ``packages``."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"for name in {packages!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(f'{name}.{m.name}')\n"
        f"{extra}\n"
        "print('HEAVY:' + ','.join(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("HEAVY:")][-1]
    return [m for m in line[len("HEAVY:") :].split(",") if m]


def test_pure_layers_do_not_import_torch_or_ray():
    extra = "import giellm_ray.cli; giellm_ray.cli.build_parser()"  # giellm --help stays light
    assert (
        _imported_after(["giellm_ray.formats", "giellm_ray.metrics", "giellm_ray.decoding"], extra)
        == []
    )


def test_generation_is_ray_free():
    assert "ray" not in _imported_after(["giellm_ray.generation"])


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


@pytest.mark.parametrize("stage", ["score", "serve", "train"])
def test_stages_never_import_each_other(stage):
    others = {"score", "serve", "train"} - {stage}
    bad = sorted(
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in (PACKAGE / stage).glob("*.py")
        for name in _imports(path)
        if name.split(".")[:2] in (["giellm_ray", o] for o in others)
    )
    assert bad == []
