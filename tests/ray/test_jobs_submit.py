"""``ray job submit`` runs the ``jobs/`` entry points against a cluster started by ``ray start --head``.

The cluster here is separate from the session ``ray_cluster`` fixture and from anything else on
the machine: its own free ports and its own short ``--temp-dir`` (so its address file never
becomes the default that a bare ``ray.init()`` elsewhere would join). It is started with
``--block`` in a new process group and stopped by signalling that group: ``ray stop`` would kill
every Ray process on the machine, other test sessions' clusters included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from giellm_ray.ray_session import RAYLET_ENV
from giellm_ray.sample import sample_path

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in the entrypoint = this venv
        # Ray 2.60's `ray start` turns token auth on (token in ~/.ray/auth_token) while the job
        # CLI defaults to no auth: say "token" on both sides or every request gets a 401.
        RAY_AUTH_MODE="token",
        RAY_USAGE_STATS_ENABLED="0",
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(RAYLET_ENV)  # as the README's `ray start`: the raylet reaps dead workers' children
    return env


@pytest.fixture(scope="module")
def head_node():
    """``ray start --head --block`` on free ports; yields the dashboard URL; stops only itself."""
    gcs, dash, client, agent = _free_ports(4)
    temp_dir = tempfile.mkdtemp(prefix="gjs", dir="/tmp")  # short: Unix socket paths <= 107
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--disable-usage-stats",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--temp-dir={temp_dir}",
    ]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 (closed in the finaliser)
    proc = subprocess.Popen(
        cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited: {(Path(temp_dir) / 'ray-start.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # the dashboard answers (401 without a token): it is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not come up within 120 s")
            time.sleep(1)
        yield url
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _job_status(url: str, job_id: str, wait_s: float = 60) -> str:
    """The job's final status (SUCCEEDED, FAILED, STOPPED) as ``ray job status`` prints it."""
    words = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}
    deadline = time.monotonic() + wait_s
    while True:
        out = _ray_job(url, "status", job_id, timeout=60)
        text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
        final = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text)
        if final:
            return words[final.group(1)]
        current = re.search(rf"Status for job '{re.escape(job_id)}': (\w+)", text)
        if time.monotonic() > deadline:
            return current.group(1) if current else text
        time.sleep(2)


def _ray_job(url: str, command: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``ray job COMMAND --address URL ARGS...`` from the repository root (the working dir)."""
    return subprocess.run(
        [str(BIN / "ray"), "job", command, "--address", url, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(300)
def test_score_job_submitted_with_working_dir_succeeds(head_node, tiny_model_dir, tmp_path):
    rows = pq.read_table(sample_path("test")).slice(0, 6)
    pq.write_table(rows, tmp_path / "rows.parquet")
    out = tmp_path / "scored"
    job_id = f"giellm-test-score-{os.getpid()}"
    submit = _ray_job(
        head_node,
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/score.py",
        "--config",
        "jobs/configs/score/cpu.yaml",
        "--model",
        tiny_model_dir,
        "--input",
        str(tmp_path / "rows.parquet"),
        "--output",
        str(out),
        "--set",
        "num_actors=1",
        "--set",
        "generation.batch_size=8",
        timeout=150,
    )
    status = _job_status(head_node, job_id)
    assert status == "SUCCEEDED", (status, submit.stdout[-3000:], submit.stderr[-3000:])
    assert submit.returncode == 0
    assert (out / "_SUCCESS").exists()
    scored = pq.read_table(str(out)).to_pylist()
    assert sorted(r["id"] for r in scored) == sorted(rows.column("id").to_pylist())
    assert all(isinstance(r["prediction"], str) or r["error"] for r in scored)


@pytest.mark.timeout(120)
def test_failing_job_is_reported_failed(head_node, tmp_path):
    job_id = f"giellm-test-bad-{os.getpid()}"
    submit = _ray_job(
        head_node,
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/score.py",
        "--input",
        str(tmp_path / "missing.parquet"),
        "--output",
        str(tmp_path / "out"),
        "--model",
        "tiny",
        timeout=90,
    )
    status = _job_status(head_node, job_id)
    assert status == "FAILED", (status, submit.stdout[-3000:], submit.stderr[-3000:])
    assert submit.returncode == 1  # `ray job submit` exits 1 when the job failed
    assert "no such file or directory" in submit.stdout


@pytest.mark.timeout(600)
def test_mre_job_submitted_with_working_dir_succeeds(head_node, tmp_path):
    out = tmp_path / "mre"
    job_id = f"giellm-test-mre-{os.getpid()}"
    submit = _ray_job(
        head_node,
        "submit",
        "--submission-id",
        job_id,
        "--working-dir",
        ".",
        "--",
        "python",
        "jobs/mre.py",
        "--quick",
        "--datasets",
        "SCNM",
        "--sample-train-rows",
        "16",
        "--sample-test-rows",
        "2",
        "--set",
        "max_steps=2",  # the job path, not the learning
        "--output",
        str(out),
        timeout=540,
    )
    status = _job_status(head_node, job_id)
    assert status == "SUCCEEDED", (status, submit.stdout[-3000:], submit.stderr[-3000:])
    mre = json.loads((out / "mre.json").read_text())
    assert sorted(r["name"] for r in mre["runs"]) == ["mixed-seed0", "single-SCNM-seed0"]
    assert mre["datasets"]["SCNM"]["mixed"]["n"] == 2
    assert "| SCNM | TL | 2 |" in submit.stdout  # the table, printed by the job
