"""``python -m benchmarks.gpu_score`` off the GPU: without CUDA it stops at once with a message
saying what to run (its ~1B shape and roofline arithmetic are tested in test_perf.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_it_exits_with_a_clear_message():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_score"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "gpu_score.py needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
