"""vLLM on CPU: the pool is sized from the nodes' cores (one engine per 2+ cores, never more
than asked) and each engine claims a block of cores no other live engine on the node holds
(a dead owner's block is taken over); the HF engine and GPU pools are left alone."""

from __future__ import annotations

import os
import subprocess
import sys

from giellm_ray.config import load_config
from giellm_ray.generation.cpu_cores import bind_string, claim_cores, release_cores
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.cpu_plan import size_vllm_cpu

CPU_YAML = "giellm_ray/configs/score/cpu.yaml"


def test_cpu_yaml_with_vllm_gets_one_engine_on_both_cores():
    cfg = load_config(ScoreConfig, CPU_YAML, ["engine=vllm"])
    assert cfg.num_actors == 2
    new, line = size_vllm_cpu(cfg, node_cores=2)
    assert new.num_actors == 1 and new.vllm.cpu_cores == 2
    assert "1 actor(s), 2 cores each" in line
    new, _ = size_vllm_cpu(cfg, node_cores=32)
    assert new.num_actors == 2 and new.vllm.cpu_cores == 16
    new, _ = size_vllm_cpu(cfg.model_copy(update={"num_actors": 8}), node_cores=8, nodes=2)
    assert new.num_actors == 8 and new.vllm.cpu_cores == 2
    hf = load_config(ScoreConfig, CPU_YAML, [])
    assert size_vllm_cpu(hf, node_cores=2) == (hf, None)


def test_engines_get_disjoint_core_blocks_and_dead_owners_lose_theirs(tmp_path):
    ncores = len(os.sched_getaffinity(0))
    first = claim_cores(1, str(tmp_path))
    assert first is not None
    cores, lock = first
    # Another live process holding a block: ours must differ (or there is none left).
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from giellm_ray.generation.cpu_cores import "
            "claim_cores; c = claim_cores(1, sys.argv[1]); print(c[0][0] if c else -1)",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    other = int(child.stdout.strip())
    # The child exited: its lock names a dead pid, so its block can be claimed again.
    if ncores > 1:
        assert other not in cores and other >= 0
        again = claim_cores(1, str(tmp_path))
        assert again is not None and again[0] == [other]
        release_cores(again[1])
    else:
        assert other == -1
    release_cores(lock)
    assert not os.path.exists(lock)
    assert bind_string([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
