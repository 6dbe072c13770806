"""How many vLLM CPU engines a scoring job runs, and on which cores.

A vLLM CPU engine runs its model step in OpenMP threads, one per bound core, and is compute-bound:
it wants cores to itself. ``score/cpu.yaml``'s HF pool (2 actors x 0.5 CPU) is right for the HF
engine. The same pool with ``engine=vllm`` ran two engines bound to the same cores [0, 1], and the
whole job was 0.88x the HF engine (30M bf16, 6,000 rows x 48 tokens), against 1.95x for one engine
at steady state (``benchmarks/engines.py``). So with vLLM on CPU, :func:`size_vllm_cpu` sizes the
pool from the nodes' cores: at most ``node cores // MIN_CORES_PER_ENGINE`` engines per node (never
more than ``num_actors`` asked), each bound to ``node cores // engines`` cores of its own
(``VLLMConfig.cpu_cores``; ``giellm_ray.generation.cpu_cores`` hands out the blocks). A 2-core
box gets one engine on both cores, and a 32-core node asked for 2 actors gets 2 engines x 16 cores.
The Ray CPU reservation per actor (``num_cpus_per_actor``) is left as configured: it is logical,
and Ray Data's read and write tasks still need some. One log line says what was chosen.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
MIN_CORES_PER_ENGINE = 2
"""Fewest cores one engine gets: below that its threads and the scheduler process contend."""


def size_vllm_cpu(cfg, node_cores: int, nodes: int = 1):
    """``cfg`` with ``num_actors`` and ``vllm.cpu_cores`` sized for vLLM on CPU (unchanged for
    the HF engine or GPU actors), and the log line (``None`` when unchanged)."""
    if cfg.engine != "vllm" or cfg.num_gpus_per_actor:
        return cfg, None
    node_cores = max(1, int(node_cores))
    per_node = max(1, node_cores // MIN_CORES_PER_ENGINE)
    engines = max(1, min(cfg.num_actors, per_node * max(1, nodes)))
    on_node = -(-engines // max(1, nodes))  # engines on the busiest node
    cores = cfg.vllm.cpu_cores or max(1, node_cores // on_node)
    new = cfg.model_copy(
        update={"num_actors": engines, "vllm": cfg.vllm.model_copy(update={"cpu_cores": cores})}
    )
    line = (
        f"vLLM on CPU: {engines} actor(s), {cores} cores each, OpenMP threads bound to a "
        f"block of their own ({nodes} node(s) x {node_cores} cores; num_actors asked "
        f"{cfg.num_actors})"
    )
    return new, line


def cluster_cores() -> tuple[int, int]:
    """``(cores of the smallest alive node, alive nodes)`` of the connected Ray cluster."""
    import ray

    cpus = [
        int(n["Resources"].get("CPU", 0))
        for n in ray.nodes()
        if n.get("Alive") and n["Resources"].get("CPU", 0) > 0
    ]
    return (min(cpus), len(cpus)) if cpus else (1, 1)


def plan_for_cluster(cfg):
    """:func:`size_vllm_cpu` against the connected cluster, logging the choice."""
    if cfg.engine != "vllm" or cfg.num_gpus_per_actor:
        return cfg
    new, line = size_vllm_cpu(cfg, *cluster_cores())
    if line:
        log.info("%s", line)
    return new
