"""The training reductions under a real 2-process ``torch.distributed`` group (tcp on 127.0.0.1).

A group created with backend ``cuda:gloo`` serves CUDA tensors only, exactly like the NCCL group
Ray Train gives GPU workers: a CPU tensor in ``all_reduce`` raises "No backend type associated
with device type cpu" there. That lets this CPU machine show the GPU failure and hold
:func:`reduce_values` to its contract: never hand a collective a tensor on a device the group
cannot serve (a clear error instead), and reduce correctly where it can.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import json, sys
import torch, torch.distributed as dist
from giellm_ray.train.collectives import collective_device, gather_objects, reduce_values

rank, port, backend = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
out = {"rank": rank}
try:
    out["sum"] = reduce_values([1.0 + rank, 10.0], "sum", torch.device("cpu"))
    out["min"] = reduce_values([float(rank)], "min", torch.device("cpu"))
    out["max"] = reduce_values([float(rank)], "max", torch.device("cpu"))
    out["gather"] = gather_objects({"rank": rank})
except ValueError as exc:
    out["guard"] = str(exc)
try:  # what the loop did before: a plain CPU tensor, whatever the backend serves
    t = torch.tensor([1.0], dtype=torch.float64)
    dist.all_reduce(t)
    out["raw_cpu"] = t.tolist()
except RuntimeError as exc:
    out["raw_cpu_error"] = str(exc)
out["cuda_choice"] = str(collective_device(torch.device("cuda", 0)))
dist.destroy_process_group()
print(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(backend: str) -> list[dict]:
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(r), port, backend],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return sorted(results, key=lambda r: r["rank"])


def test_reduce_values_sums_mins_maxes_and_gathers_under_gloo():
    for r in _run_pair("gloo"):
        assert r["sum"] == [3.0, 20.0]
        assert r["min"] == [0.0] and r["max"] == [1.0]
        assert r["gather"] == [{"rank": 0}, {"rank": 1}]
        assert "guard" not in r


def test_a_group_that_cannot_serve_the_device_is_refused_not_reduced():
    """``cuda:gloo`` stands in for NCCL: the old CPU-tensor reduce fails there, ours says why."""
    for r in _run_pair("cuda:gloo"):
        assert "No backend type associated with device type cpu" in r["raw_cpu_error"]
        assert "serves ['cuda'] tensors, not this worker's device cpu" in r["guard"]
        assert "sum" not in r  # nothing reached all_reduce with a CPU tensor
        # On a GPU worker (device cuda:N) the same call puts its tensor on the GPU.
        assert r["cuda_choice"] == "cuda:0"
