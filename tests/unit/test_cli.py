"""The ``giellm`` command's plumbing, run as a user runs it (a fresh interpreter): verbosity flags,
the dependency check before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from giellm_ray.configs import config_path
from giellm_ray.sample import sample_path

ROOT = Path(__file__).resolve().parents[2]


def _giellm(*args: str, cwd: str | None = None, prelude: str = "pass") -> subprocess.CompletedProcess:
    """``giellm ARGS`` in a fresh interpreter (``prelude`` runs first, e.g. to hide a module)."""
    code = (f"import sys; {prelude}; from giellm_ray.cli import main; rc = main({list(args)!r}); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY', file=sys.stderr); "
            "sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GIELLM_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_quiet_flag_drops_progress_lines(tmp_path):
    args = ["data", "mix", "--input", sample_path("train"), "--sizes", "SCNM=5"]
    loud = _giellm(*args, "--output", str(tmp_path / "a"))
    quiet = _giellm("-q", *args, "--output", str(tmp_path / "b"))
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "rows/s" in loud.stderr  # the progress line people rely on, by default
    assert "rows/s" not in quiet.stderr and " INFO " not in quiet.stderr
    assert json.loads(quiet.stdout)["train_rows"] == json.loads(loud.stdout)["train_rows"]


def test_missing_extra_is_one_line_before_ray_starts(tmp_path):
    proc = _giellm("train", "--config", config_path("train", "tiny-cpu.yaml"),
                   "--set", f"storage_path={tmp_path}", cwd=str(tmp_path),
                   prelude="sys.modules['deepspeed'] = None")  # as if DeepSpeed were absent
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("giellm: error:")]
    assert len(errors) == 1 and "deepspeed" in errors[0] and "extra" in errors[0]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("NO_RAY")  # Ray was never imported, let alone started
    assert not any(tmp_path.iterdir())
