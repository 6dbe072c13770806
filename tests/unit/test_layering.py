"""Layering: formats and metrics import neither torch nor ray (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys


def test_pure_layers_do_not_import_torch_or_ray():
    code = (
        "import sys, giellm_ray.formats, giellm_ray.metrics, giellm_ray.metrics.evaluate, "
        "giellm_ray.cli; giellm_ray.cli.build_parser(); "
        "bad = [m for m in ('torch', 'ray', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
