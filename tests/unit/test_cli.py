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


def _giellm(
    *args: str, cwd: str | None = None, prelude: str = "pass"
) -> subprocess.CompletedProcess:
    """``giellm ARGS`` in a fresh interpreter (``prelude`` runs first, e.g. to hide a module)."""
    code = (
        f"import sys; {prelude}; from giellm_ray.cli import main; rc = main({list(args)!r}); "
        "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY', file=sys.stderr); "
        "sys.exit(rc)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GIELLM_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_quiet_flag_drops_progress_lines(tmp_path):
    args = ["data", "mix", "--input", sample_path("train"), "--sizes", "SCNM=5"]
    loud = _giellm(*args, "--output", str(tmp_path / "a"))
    quiet = _giellm("-q", *args, "--output", str(tmp_path / "b"))
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "rows/s" in loud.stderr  # the progress line people rely on, by default
    assert "rows/s" not in quiet.stderr and " INFO " not in quiet.stderr
    assert json.loads(quiet.stdout)["train_rows"] == json.loads(loud.stdout)["train_rows"]


def test_missing_extra_is_one_line_before_ray_starts(tmp_path):
    proc = _giellm(
        "train",
        "--config",
        config_path("train", "tiny-cpu.yaml"),
        "--set",
        f"storage_path={tmp_path}",
        cwd=str(tmp_path),
        prelude="sys.modules['deepspeed'] = None",
    )  # as if DeepSpeed were absent
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("giellm: error:")]
    assert len(errors) == 1 and "deepspeed" in errors[0] and "extra" in errors[0]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("NO_RAY")  # Ray was never imported, let alone started
    assert not any(tmp_path.iterdir())


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    import pytest

    from giellm_ray.cli import main
    from giellm_ray.data import mix

    mix_args = ["data", "mix", "--input", sample_path("train"), "--output", str(tmp_path / "m")]
    # the user's fault (a malformed option, a missing file): one line, exit 2, no traceback hint
    assert main([*mix_args, "--sizes", "SCNM"]) == 2
    err = capsys.readouterr().err
    assert "giellm: error: size 'SCNM' is not NAME=COUNT" in err
    assert "traceback" not in err.lower()
    assert main(["eval", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "e")]) == 2
    assert "giellm: error:" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(mix, "build_mix", broken)
    # a plain ValueError is not marked as the user's: said so, and -v shows the traceback
    assert main(mix_args) == 2
    err = capsys.readouterr().err
    assert "an internal invariant failed (ValueError; if this looks like a bug, giellm -v" in err
    with pytest.raises(ValueError, match="internal invariant"):
        main(["-v", *mix_args])

    def crash(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mix, "build_mix", crash)
    with pytest.raises(RuntimeError, match="a bug"):  # anything else: never swallowed
        main(mix_args)
