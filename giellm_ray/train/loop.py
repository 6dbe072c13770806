"""``train_loop_per_worker``: the per-worker SFT loop (Ray Train + DeepSpeed), as named steps.

``setup`` (this worker's data shard, tokenized into SFT examples; the epoch length every rank
shares; the DeepSpeed config) -> ``find_checkpoint`` (:mod:`giellm_ray.train.resume`) ->
``build_ds_engine`` (:mod:`giellm_ray.train.deepspeed_init`) -> ``restore`` -> ``fit`` (epochs
of optimizer steps, a log window every ``log_every_steps``, checkpoints at epoch ends, ``evaluate``
after each epoch) -> ``finish`` (throughput, the Hugging Face export, the final weights-only report).
Each worker reads its shard of the training Parquet through Ray Data
(``ray.train.get_dataset_shard("train")``) and batches by length (seeded per epoch, so a resumed
run skips exactly the batches it did). Rank 0 logs loss, learning rate and tokens/s; every rank
calls ``ray.train.report`` at the same points (it is a barrier). Checkpoints are DeepSpeed
checkpoints written through :class:`giellm_ray.train.reporting.Checkpointer`. The driver is
``giellm_ray.train.driver``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from giellm_ray.log import setup_logging
from giellm_ray.model.loader import load_tokenizer
from giellm_ray.model.sft import build_examples, collate, length_grouped_batches
from giellm_ray.schema import DATASET, PROMPT, TARGET, TEXT
from giellm_ray.train.checkpoints import staging_root
from giellm_ray.train.collectives import reduce_values
from giellm_ray.train.config import TrainConfig, WorkerConfig
from giellm_ray.train.deepspeed_config import build_ds_config, total_optimizer_steps
from giellm_ray.train.deepspeed_init import (
    build_ds_engine,
    fused_adam_usable,
    select_accelerator,
)
from giellm_ray.train.evaluation import eval_loss, eval_metrics
from giellm_ray.train.export import export_hf, export_lora
from giellm_ray.train.reporting import Checkpointer, clear_staging
from giellm_ray.train.resume import find_checkpoint, model_path, restore

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What ``setup`` prepared for this worker."""

    cfg: TrainConfig
    config: WorkerConfig  # what the driver resolved for the workers
    rank: int
    world: int
    local_rank: int
    device: Any
    tokenizer: Any
    examples: list
    data_stats: dict
    n_batches: int  # per epoch, the same on every rank
    total_steps: int
    ds_config: dict
    eval_rows: list[dict]
    staging: str  # this run's node-local staging directory
    ckpt: Checkpointer


@dataclass
class Progress:
    """Where training stands; the loss window is reset at each log."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    resumed_from: int | None = None
    run_time: float = 0.0  # this session's pure training time, for throughput
    run_tokens: int = 0
    last_epoch: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    window: list = field(default_factory=lambda: [0.0, 0, 0])  # loss sum, tokens, batches
    t0: float = field(default_factory=time.perf_counter)

    def state(self, epoch: int, batch: int) -> dict:
        return {"epoch": epoch, "batch": batch, "step": self.step, "first_loss": self.first_loss}


def read_shard(name: str, columns: list[str]) -> list[dict]:
    """All rows of this worker's Ray Data shard ``name`` as dicts (``[]`` if there is none)."""
    import ray.train

    shard = ray.train.get_dataset_shard(name)
    if shard is None:
        return []
    rows: list[dict] = []
    for batch in shard.iter_batches(batch_size=1024, batch_format="pyarrow"):
        cols = {c: batch.column(c).to_pylist() for c in columns if c in batch.column_names}
        rows += [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    return rows


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point; ``loop_config["worker"]`` is the driver's :class:`WorkerConfig`."""
    config: WorkerConfig = loop_config["worker"]
    run = setup(config)
    resume = find_checkpoint(config.resume_from, run.rank)
    base = model_path(config.model_path, resume, lora=run.cfg.lora is not None)
    engine, _keep = build_ds_engine(run.cfg, base, run.ds_config)
    state = restore(engine, resume, run.rank, run.world, run.local_rank, run.cfg, run.staging)
    progress = Progress()
    if state:
        progress.epoch, progress.batch, progress.step = (
            state["epoch"],
            state["batch"],
            state["step"],
        )
        progress.first_loss, progress.resumed_from = state.get("first_loss"), progress.step
        if run.rank == 0:
            log.info(
                "[train] resumed at epoch %d batch %d step %d",
                progress.epoch,
                progress.batch,
                progress.step,
            )
    fit(engine, run, progress)
    finish(engine, run, progress)


def setup(config: WorkerConfig) -> Run:
    """Logging, accelerator, this worker's place in the group, its data and the schedule."""
    setup_logging(handler=False)  # a Ray worker: the level from GIELLM_LOG_LEVEL, Ray prints
    cfg = config.train
    select_accelerator(cfg)  # before deepspeed is imported
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    rank, world, local_rank = ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.data.seed)
    staging = os.path.join(staging_root(cfg.checkpoint_staging_dir), f"giellm-{cfg.run_name}")
    if local_rank == 0:  # before the first collective: no rank of this group has staged yet
        clear_staging(staging)
    tokenizer = load_tokenizer(cfg.model.model_copy(update={"name_or_path": config.model_path}))

    rows = read_shard("train", [PROMPT, TARGET])
    examples, stats = build_examples(
        ((r[PROMPT], r[TARGET]) for r in rows), tokenizer, cfg.data.max_length, cfg.data.overlong
    )
    summed = reduce_values([float(v) for v in stats.as_dict().values()], "sum", device)
    data_stats = dict(zip(stats.as_dict(), (int(v) for v in summed), strict=True))
    bs, ga = cfg.per_device_batch_size, cfg.grad_accum
    # Every rank must take the same number of steps: the shortest shard sets the epoch length.
    n_batches = int(reduce_values([len(examples) // bs], "min", device)[0]) // ga * ga
    if n_batches == 0:
        raise ValueError(
            f"not enough training examples for batch {bs} x accumulation {ga} "
            f"on {world} workers: {data_stats}"
        )
    total_steps = total_optimizer_steps(n_batches, ga, cfg.epochs)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    if rank == 0:
        log.info(
            "[train] data %s; %d batches/epoch/worker, %d optimizer steps",
            data_stats,
            n_batches,
            total_steps,
        )
    eval_rows: list[dict] = []
    if config.has_eval:
        columns = [PROMPT, TARGET, DATASET] + ([TEXT] if cfg.eval.constrained else [])
        eval_rows = read_shard("eval", columns)[rank::world]
    ds_config = build_ds_config(cfg, total_steps, world, _fused_adam(cfg))
    return Run(
        cfg,
        config,
        rank,
        world,
        local_rank,
        device,
        tokenizer,
        examples,
        data_stats,
        n_batches,
        total_steps,
        ds_config,
        eval_rows,
        staging,
        Checkpointer(cfg, rank, world, staging),
    )


def _fused_adam(cfg: TrainConfig) -> bool:
    """FusedAdam only matters where DeepSpeed builds a GPU optimizer (see deepspeed_config)."""
    return cfg.use_gpu and not cfg.cpu_offload and fused_adam_usable()


def _base(run: Run, p: Progress) -> dict:
    return {"resumed_from_step": p.resumed_from, "total_steps": run.total_steps}


def fit(engine, run: Run, p: Progress) -> None:
    """The epochs from where ``p`` stands; a full checkpoint after each but the last."""
    engine.train()
    for epoch in range(p.epoch, run.cfg.epochs):
        done = train_epoch(engine, run, p, epoch, p.batch if epoch == p.epoch else 0)
        p.last_epoch = evaluate(engine, run, p, epoch)
        if done:  # max_steps reached (or the last epoch): the final report follows
            break
        if epoch + 1 < run.cfg.epochs:  # the last epoch's metrics go with the final report
            run.ckpt.save(engine, p.last_epoch, p.state(epoch + 1, 0))


def checkpoint_due(cfg: TrainConfig, step: int) -> bool:
    """A mid-epoch checkpoint after this optimizer step (only with ``checkpoint_every_steps``)."""
    return bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0


def train_epoch(engine, run: Run, p: Progress, epoch: int, first: int) -> bool:
    """Batches ``first..`` of ``epoch``; True once the run's last optimizer step is done."""
    import ray.train

    cfg = run.cfg
    grouping = {} if cfg.data.group_by_length else {"group_factor": 0}
    batches = length_grouped_batches(
        [len(e) for e in run.examples],
        cfg.per_device_batch_size,
        seed=cfg.data.seed + epoch,
        **grouping,
    )
    for b in range(first, run.n_batches):
        train_batch(engine, run, p, batches[b])
        if (b + 1) % cfg.grad_accum:
            continue
        p.step += 1
        metrics = {**_base(run, p), "epoch": epoch, "step": p.step}
        at_log = p.step % cfg.log_every_steps == 0 or p.step == run.total_steps
        if at_log:
            log_window(engine, run, p, metrics)
        if checkpoint_due(cfg, p.step):
            run.ckpt.save(engine, metrics, p.state(epoch, b + 1))
        elif at_log:
            ray.train.report(metrics)
        _maybe_fail(cfg, run.rank, p.step)
        if p.step >= run.total_steps:
            return True
    return False


def train_batch(engine, run: Run, p: Progress, indices: list[int]) -> None:
    """One micro-batch: forward, backward, DeepSpeed step (which applies at accumulation ends)."""
    batch = {
        k: v.to(run.device)
        for k, v in collate([run.examples[i] for i in indices], run.tokenizer.pad_token_id).items()
    }
    t_step = time.perf_counter()
    loss = engine(**batch).loss
    engine.backward(loss)
    engine.step()
    p.run_time += time.perf_counter() - t_step
    tokens = int(batch["attention_mask"].sum())
    p.run_tokens += tokens
    p.window[0] += loss.item()
    p.window[1] += tokens
    p.window[2] += 1


def log_window(engine, run: Run, p: Progress, metrics: dict) -> None:
    """Loss, learning rate and tokens/s over the window since the last log, into ``metrics``."""
    loss_sum, tokens, n = reduce_values(p.window, "sum", run.device)
    dt = time.perf_counter() - p.t0
    p.last_loss = loss_sum / max(n, 1)
    p.first_loss = p.last_loss if p.first_loss is None else p.first_loss
    metrics.update(loss=p.last_loss, lr=engine.get_lr()[0], tokens_per_s=tokens / max(dt, 1e-9))
    if run.rank == 0:
        log.info("[train] %s", json.dumps(metrics))
    p.window, p.t0 = [0.0, 0, 0], time.perf_counter()


def evaluate(engine, run: Run, p: Progress, epoch: int) -> dict:
    """End-of-epoch metrics: eval loss, and the paper's metrics when generation is on."""
    cfg = run.cfg
    metrics = {
        **_base(run, p),
        **{f"data_{k}": v for k, v in run.data_stats.items()},
        "epoch": epoch,
        "step": p.step,
        "epoch_done": epoch + 1,
    }
    if not run.config.has_eval:
        return metrics
    loss_e, n_tok = eval_loss(engine, run.eval_rows, run.tokenizer, cfg, run.device)
    metrics.update(eval_loss=loss_e, eval_target_tokens=n_tok)
    if run.config.eval_metrics:
        from giellm_ray.metrics import ratios

        counts = eval_metrics(
            engine,
            run.eval_rows[: run.config.eval_max_rows_per_rank],
            run.tokenizer,
            cfg,
            run.device,
            synced=cfg.zero_stage == 3,
            registry=run.config.registry(),
        )
        if counts is not None:
            metrics["eval_counts"] = json.dumps(counts, ensure_ascii=False)
            for ds, c in counts.items():
                r = ratios(c)
                for key in ("tl_accuracy", "wl_accuracy", "all_accuracy", "item_f1"):
                    metrics[f"eval/{ds}/{key}"] = r[key]
    p.last_eval = {k: v for k, v in metrics.items() if k.startswith("eval")}
    if run.rank == 0:
        log.info("[eval] %s", json.dumps(metrics, ensure_ascii=False))
    return metrics


def finish(engine, run: Run, p: Progress) -> None:
    """Throughput over all ranks, the export, and the final (weights-only) report."""
    cfg, config = run.cfg, run.config
    tokens_all = reduce_values([p.run_tokens], "sum", run.device)[0]
    time_max = reduce_values([p.run_time], "max", run.device)[0]
    final = {
        **_base(run, p),
        **{f"data_{k}": v for k, v in run.data_stats.items()},
        **p.last_epoch,
        **p.last_eval,
        "step": p.step,
        "first_loss": p.first_loss,
        "final_loss": p.last_loss,
        "train_tokens": int(tokens_all),
        "train_tokens_per_s": tokens_all / max(time_max, 1e-9),
        "peak_rss_mb_rank0": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if run.device.type == "cuda":
        import torch

        final["peak_gpu_mb_rank0"] = torch.cuda.max_memory_allocated(run.device) / 2**20
    if cfg.lora is not None:
        from giellm_ray.train.lora import parameter_counts

        final["trainable_params"], final["total_params"] = parameter_counts(engine.module)
    export_dir = None
    if cfg.export.enabled:
        export_dir = config.export_dir
        if cfg.lora is not None:
            dest = export_lora(
                engine, run.tokenizer, export_dir, cfg, config.model_path, run.rank, run.staging
            )
        else:
            dest = export_hf(
                engine, run.tokenizer, export_dir, cfg.zero_stage, run.rank, run.staging
            )
        final["export_dir"] = dest or export_dir
    # A run's Result carries its last checkpoint's metrics, so the final metrics go with one.
    run.ckpt.save_final(engine, run.tokenizer, final, p.state(cfg.epochs, 0), export_dir)


def _maybe_fail(cfg: TrainConfig, rank: int, step: int) -> None:
    hook = cfg.fault_injection
    if (
        hook
        and hook.mode == "raise"
        and rank == hook.rank
        and step == hook.fail_at_step
        and not os.path.exists(hook.marker)
    ):
        open(hook.marker, "w").close()
        raise RuntimeError(f"fault injection: worker {rank} fails at step {step}")
