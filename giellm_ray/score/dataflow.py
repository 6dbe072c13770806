"""The Ray Data half of ``giellm score``: stream the missing rows through the actors, stage them.

:func:`run_dataflow` is step 4 of :mod:`giellm_ray.score.driver` (the only step that needs Ray;
the driver joins or starts it).
The plan is read -> drop rows already committed (a plain function fused into the read tasks,
:func:`giellm_ray.score.resume.drop_done`) -> streaming repartition ->
``map_batches(ScoreBatch, ActorPoolStrategy)`` -> ``write_parquet`` into
``OUTPUT/_staging/data`` with Ray Data checkpointing on, so each part file is committed with its
rows' ids or removed on the next run. Nothing is materialised. Every stage but ``ScoreBatch`` is
engine-agnostic: whichever engine produced a batch, its rows carry the id column through to the
write, which is all resume needs.

CPU budget on a small machine (2 cores, ``cpu.yaml``): 2 actors x 0.5 CPU + read and write
tasks at 1 CPU each; resume adds nothing (no filter actors). On a GPU node (p4de: 8 GPUs, 96
vCPUs): 8 actors x (1 GPU + ``num_cpus_per_actor`` 4) = 32 vCPUs, the rest for read/write
tasks. With ``engine: vllm`` each actor's engine core is a child process of the actor (its CPU
use, ~1-2 cores for the scheduler and the constraint, is inside those 4); each actor has
``batches_in_flight`` (4) batches x ``batch_size`` (512) = 2,048 rows queued, so a 13B engine
(~100-290 rows of KV at once, see ``VLLMConfig``) is never starved between batches.
"""

from __future__ import annotations

import logging

import numpy as np

from giellm_ray.log import is_quiet, quiet_ray_data_console
from giellm_ray.score import resume
from giellm_ray.score.cpu_plan import plan_for_cluster
from giellm_ray.score.progress import ProgressCounter, ProgressPrinter
from giellm_ray.score.udf import ScoreBatch

log = logging.getLogger(__name__)


def actor_pool(cfg):
    """``num_actors`` actors; with vLLM each takes ``actor_concurrency`` batches at once in
    threads (one engine per actor batches their rows continuously; see ``ScoreBatch``)."""
    import ray.data as rd

    k = cfg.actor_concurrency
    if k == 1:
        return rd.ActorPoolStrategy(size=cfg.num_actors)
    return rd.ActorPoolStrategy(
        size=cfg.num_actors, max_concurrent_calls_per_actor=k, enable_true_multi_threading=True
    )


def build_dataset(cfg, plan, attempt: resume.Attempt, done: np.ndarray, registry, counter):
    """The lazy Dataset of scored rows still missing from the staging directory."""
    import ray
    import ray.data as rd

    ds = rd.read_parquet(
        plan.files, filesystem=plan.fs_in, include_row_hash=attempt.id_column == resume.ROW_HASH
    )
    if len(done):
        # One copy per node in the object store; numeric/fixed-width arrays map zero-copy.
        ds = ds.map_batches(
            resume.drop_done,
            fn_args=(ray.put(done), attempt.id_column),
            batch_format="pyarrow",
            batch_size=None,
        )
    return ds.repartition(target_num_rows_per_block=cfg.rows_per_block).map_batches(
        ScoreBatch,
        fn_constructor_args=(cfg, registry.to_dict() if cfg.tasks else None, counter),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=actor_pool(cfg),
        num_cpus=cfg.num_cpus_per_actor,
        num_gpus=cfg.num_gpus_per_actor or None,
    )


def run_dataflow(cfg, plan, attempt: resume.Attempt, done: np.ndarray, todo: int, registry) -> dict:
    """Score the ``todo`` missing rows into the staging directory; the actors' summed counters.
    Ray is already joined or started (by the driver)."""
    import ray
    import ray.data as rd

    quiet_ray_data_console()
    ctx = rd.DataContext.get_current()
    saved = ctx.checkpoint_config
    printer = None
    try:
        ctx.enable_progress_bars = cfg.show_progress_bars() and not is_quiet()
        # Ray 2.60's V2 Parquet reader starts a pool of 32 FooterReader actors per read: ~30 s
        # of process start-up on a small machine before the first row. We already read every
        # footer in check_inputs, so the V1 reader (plain read tasks) loses nothing here.
        ctx.use_datasource_v2 = cfg.parquet_reader_v2
        ctx.checkpoint_config = resume.checkpoint_config(plan.out, attempt.id_column)
        counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        printer = ProgressPrinter(counter, todo, cfg.progress_interval_s, already=len(done))
        if cfg.progress_interval_s > 0:
            printer.start()
        cfg = plan_for_cluster(cfg)  # vLLM on CPU: engines and cores from the nodes' cores
        ds = build_dataset(cfg, plan, attempt, done, registry, counter)
        ds.write_parquet(
            plan.out.staged(), filesystem=plan.out.fs, min_rows_per_file=cfg.rows_per_file
        )
        totals = ray.get(counter.get.remote())
        log.info("%s", printer.line(totals))
        return totals
    finally:
        if printer is not None:
            printer.stop()
        ctx.checkpoint_config = saved


__all__ = ["build_dataset", "run_dataflow"]
