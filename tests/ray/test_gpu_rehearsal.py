"""``python -m benchmarks.gpu_rehearsal``: ``--smoke`` runs every phase on CPU with a tiny model (slow,
~4 min on 2 cores); the real rehearsal (~1.1B model, one GPU) runs only where CUDA is.

The script starts its own local Ray per phase (a private ``RAY_TMPDIR``), so neither test uses the
shared ``ray_cluster`` fixture. Nothing here asserts times: the summary's budget check is printed
for people, not tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHASES = [
    "device",
    "setup",
    "train_zero3",
    "train_zero2_kill",
    "resume_zero2",
    "export",
    "score_hf",
    "score_vllm",
    "serve",
    "summary",
]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_rehearsal(
    args: list[str], workdir: Path, timeout: float
) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_rehearsal", *args, "--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return proc, {x["phase"]: x for x in lines}


def check_phases(proc: subprocess.CompletedProcess, phases: dict[str, dict], steps: int) -> None:
    assert list(phases) == PHASES, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in PHASES[1:-1]:
        status = phases[name]["status"]
        assert status == "ok" or status.startswith("skipped: "), phases[name]
    assert phases["train_zero3"]["status"] == "ok" and phases["train_zero3"]["steps"] == steps
    assert phases["train_zero3"]["tokens_per_s"] > 0
    kill = phases["train_zero2_kill"]
    assert kill["status"] == "ok" and len(kill["checkpoints_at_kill"]) >= 2
    assert 0 < kill["steps"] < steps  # killed mid-run
    resume = phases["resume_zero2"]
    assert resume["status"] == "ok" and resume["resumed_from"] == kill["checkpoints_at_kill"][0]
    assert resume["resumed_at_step"] == 10 and resume["steps"] == steps
    assert phases["export"]["tensors_changed_by_training"] > 0
    assert phases["score_hf"]["status"] == "ok"
    assert phases["serve"]["status"] == "ok"
    assert phases["summary"]["failed_phases"] == 0 and proc.returncode == 0, proc.stderr[-3000:]
    check_disk(phases)


def check_disk(phases: dict[str, dict]) -> None:
    """Free disk checked before each phase, its peak reported; the killed run's staging removed."""
    for name in PHASES[1:-1]:
        assert phases[name]["disk_free_gb"] > phases[name]["disk_need_gb"] > 0, phases[name]
    peaks = [phases[n]["peak_disk_gb"] for n in PHASES[1:-1] if "peak_disk_gb" in phases[n]]
    assert phases["summary"]["peak_disk_gb"] == max(peaks) > 0
    kill = phases["train_zero2_kill"]
    # At the kill: checkpoint 1 stored, checkpoint 2 staged or stored (or both, mid-upload).
    assert kill["disk_at_kill_bytes"] >= 2 * kill["checkpoint_bytes"] > 0, kill
    assert kill["disk_after_cleanup_bytes"] <= kill["disk_at_kill_bytes"] - kill["checkpoint_bytes"]
    assert phases["train_zero2_kill"]["peak_disk_gb"] * 1e9 >= kill["disk_at_kill_bytes"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_runs_every_phase_on_cpu(tmp_path):
    proc, phases = run_rehearsal(["--smoke"], tmp_path, timeout=1400)
    check_phases(proc, phases, steps=30)
    assert phases["device"]["device"] == "cpu"
    assert phases["score_hf"]["rows"] == 100
    assert phases["score_vllm"]["status"].startswith("skipped: ")  # no vLLM engine on CPU
    assert phases["serve"]["status_200"] == phases["serve"]["requests"] == 20
    assert not (tmp_path / "staging" / "giellm-zero2").exists()  # the killed run's staging
    assert [p.name for p in (tmp_path / "staging").iterdir()] == []  # every run's staging


def test_a_phase_that_would_not_fit_the_disk_is_refused_before_it_starts(tmp_path):
    proc, phases = run_rehearsal(["--smoke", "--disk-reserve-gb", "1e9"], tmp_path, timeout=300)
    assert list(phases) == ["device", "setup", "summary"], proc.stdout + proc.stderr[-2000:]
    setup = phases["setup"]
    assert setup["status"] == "error" and "not enough disk" in setup["error"], setup
    assert setup["disk_free_gb"] < 1e9 and setup["disk_need_gb"] > 0
    assert phases["summary"]["failed_phases"] == 1 and proc.returncode == 1
    assert not (tmp_path / "base-model").exists()  # nothing was built


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not _cuda(), reason="needs CUDA (torch.cuda.is_available() is False)")
def test_rehearsal_on_one_gpu(tmp_path):
    proc, phases = run_rehearsal([], tmp_path, timeout=1400)
    check_phases(proc, phases, steps=30)
    assert phases["setup"]["params_b"] > 1.0
    assert phases["score_hf"]["rows"] == 2000
    assert phases["serve"]["status_200"] == 200
    for name in ("train_zero3", "resume_zero2", "score_hf", "serve"):
        assert phases[name]["peak_gpu_mem_gb"] > 0
