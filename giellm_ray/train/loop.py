"""``train_loop_per_worker``: the per-worker SFT loop (Ray Train + DeepSpeed).

Each worker reads its shard of the training Parquet through Ray Data
(``ray.train.get_dataset_shard("train")``), tokenizes it into SFT examples, batches by length,
and trains a DeepSpeed engine (ZeRO-2/3, gloo + ``DS_ACCELERATOR=cpu`` on CPU, NCCL on GPU).
Rank 0 logs loss, learning rate and tokens/s; every rank calls ``ray.train.report`` at the same
points (it is a barrier). Checkpoints are DeepSpeed checkpoints: each rank saves its shard into a
local directory and Ray merges them into one checkpoint in storage, with ``train_state.json``
(epoch, batch, step) beside. A restarted worker group resumes from ``ray.train.get_checkpoint()``
(or the config's ``resume_from``), skipping the batches it already did (batching is seeded per
epoch). The driver is ``giellm_ray.train.driver``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import tempfile
import time

from giellm_ray.log import setup_logging
from giellm_ray.model.loader import load_tokenizer, localize, resolve_dtype
from giellm_ray.model.sft import build_examples, collate, length_grouped_batches
from giellm_ray.schema import DATASET, PROMPT, TARGET, TEXT
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import (
    ADAM_BETAS,
    ADAM_EPS,
    build_ds_config,
    total_optimizer_steps,
    uses_ds_optimizer,
)
from giellm_ray.train.evaluation import eval_loss, eval_metrics
from giellm_ray.train.export import export_hf

log = logging.getLogger(__name__)
CKPT_TAG = "ds"
STATE_FILE = "train_state.json"


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


def _reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN}[op])
    return t.tolist()


def _load_model(cfg: TrainConfig, path: str, ds_config: dict):
    """The base model; at ZeRO-3 built partitioned (``HfDeepSpeedConfig`` must stay alive)."""
    from transformers import AutoModelForCausalLM

    keep = None
    if cfg.zero_stage == 3 and cfg.use_gpu:
        # Partition while loading (zero.Init) so 8 ranks don't each hold a full 13B copy.
        # transformers needs `accelerate` for this; without it every rank loads a full copy.
        try:
            from transformers.integrations import HfDeepSpeedConfig

            keep = HfDeepSpeedConfig(ds_config)
        except Exception as exc:  # PackageNotFoundError for accelerate
            log.warning("[train] loading unpartitioned (zero.Init unavailable: %s)", exc)
    dtype = resolve_dtype("bfloat16" if cfg.resolved_precision() == "bf16" else "float32")
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.model.trust_remote_code,
                    "revision": cfg.model.revision}
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(localize(path), **kwargs)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, keep


def _save_and_report(engine, metrics: dict, state: dict) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=CKPT_TAG)
        if ray.train.get_context().get_world_rank() == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _maybe_fail(cfg: TrainConfig, rank: int, step: int) -> None:
    hook = cfg.fault_injection
    if hook and rank == hook.rank and step == hook.fail_at_step and not os.path.exists(hook.marker):
        open(hook.marker, "w").close()
        raise RuntimeError(f"fault injection: worker {rank} fails at step {step}")


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point; ``config`` has ``train_config``, ``model_path``, ``export_dir``."""
    setup_logging()  # this worker process: the level comes from GIELLM_LOG_LEVEL
    cfg = TrainConfig.model_validate(config["train_config"])
    if not cfg.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed picks an accelerator
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import deepspeed
    import ray.train
    import ray.train.torch
    import torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.use_gpu else torch.device("cpu")
    torch.manual_seed(cfg.data.seed)
    tokenizer = load_tokenizer(cfg.model.model_copy(update={"name_or_path": config["model_path"]}))

    rows = read_shard("train", [PROMPT, TARGET])
    examples, stats = build_examples(((r[PROMPT], r[TARGET]) for r in rows), tokenizer,
                                     cfg.data.max_length, cfg.data.overlong)
    summed = _reduce([float(v) for v in stats.as_dict().values()])
    data_stats = dict(zip(stats.as_dict(), (int(v) for v in summed), strict=True))
    bs, ga = cfg.per_device_batch_size, cfg.grad_accum
    # Every rank must take the same number of steps: the shortest shard sets the epoch length.
    n_batches = int(_reduce([len(examples) // bs], "min")[0]) // ga * ga
    if n_batches == 0:
        raise ValueError(f"not enough training examples for batch {bs} x accumulation {ga} "
                         f"on {world} workers: {data_stats}")
    total_steps = total_optimizer_steps(n_batches, ga, cfg.epochs)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    ds_config = build_ds_config(cfg, total_steps, world)
    if rank == 0:
        log.info("[train] data %s; %d batches/epoch/worker, %d optimizer steps", data_stats,
                 n_batches, total_steps)

    model, _keep = _load_model(cfg, config["model_path"], ds_config)
    optimizer = None
    if not uses_ds_optimizer(cfg):
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=ADAM_BETAS,
                                      eps=ADAM_EPS, weight_decay=cfg.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                           model_parameters=None if optimizer else
                                           [p for p in model.parameters() if p.requires_grad])

    epoch0, batch0, step, first_loss, last_loss = 0, 0, 0, None, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and config.get("resume_from"):
        ckpt = ray.train.Checkpoint(config["resume_from"])
    resumed_from = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag=CKPT_TAG)
            with open(os.path.join(d, STATE_FILE)) as f:
                state = json.load(f)
        epoch0, batch0, step = state["epoch"], state["batch"], state["step"]
        first_loss = state.get("first_loss")
        resumed_from = step
        if rank == 0:
            log.info("[train] resumed at epoch %d batch %d step %d", epoch0, batch0, step)

    eval_rows: list[dict] = []
    if config.get("has_eval"):
        columns = [PROMPT, TARGET, DATASET] + ([TEXT] if cfg.eval.constrained else [])
        eval_rows = read_shard("eval", columns)[rank::world]
    lengths = [len(e) for e in examples]
    base = {"resumed_from_step": resumed_from, "total_steps": total_steps}
    data_metrics = {f"data_{k}": v for k, v in data_stats.items()}
    window_loss, window_tokens, window_batches, t0 = 0.0, 0, 0, time.perf_counter()
    last_eval: dict = {}
    last_epoch: dict = {}
    run_time, run_tokens = 0.0, 0  # this session's pure training time, for throughput
    engine.train()
    for epoch in range(epoch0, cfg.epochs):
        seed = cfg.data.seed + epoch
        if cfg.data.group_by_length:
            batches = length_grouped_batches(lengths, bs, seed=seed)
        else:
            batches = length_grouped_batches(lengths, bs, seed=seed, group_factor=0)
        for b in range(batch0 if epoch == epoch0 else 0, n_batches):
            batch = {k: v.to(device) for k, v in
                     collate([examples[i] for i in batches[b]], tokenizer.pad_token_id).items()}
            t_step = time.perf_counter()
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            run_time += time.perf_counter() - t_step
            run_tokens += int(batch["attention_mask"].sum())
            window_loss += loss.item()
            window_tokens += int(batch["attention_mask"].sum())
            window_batches += 1
            if (b + 1) % ga:
                continue
            step += 1
            at_log = step % cfg.log_every_steps == 0 or step == total_steps
            at_ckpt = bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0
            metrics = {**base, "epoch": epoch, "step": step}
            if at_log:
                loss_sum, tokens, n = _reduce([window_loss, window_tokens, window_batches])
                dt = time.perf_counter() - t0
                last_loss = loss_sum / max(n, 1)
                first_loss = last_loss if first_loss is None else first_loss
                metrics.update(loss=last_loss, lr=engine.get_lr()[0],
                               tokens_per_s=tokens / max(dt, 1e-9))
                if rank == 0:
                    log.info("[train] %s", json.dumps(metrics))
                window_loss, window_tokens, window_batches = 0.0, 0, 0
                t0 = time.perf_counter()
            if at_ckpt:
                _save_and_report(engine, metrics, {"epoch": epoch, "batch": b + 1, "step": step,
                                                   "first_loss": first_loss})
            elif at_log:
                ray.train.report(metrics)
            _maybe_fail(cfg, rank, step)
            if step >= total_steps:
                break
        epoch_metrics = {**base, **data_metrics, "epoch": epoch, "step": step, "epoch_done": epoch + 1}
        if config.get("has_eval"):
            loss_e, n_tok = eval_loss(engine, eval_rows, tokenizer, cfg, device)
            epoch_metrics.update(eval_loss=loss_e, eval_target_tokens=n_tok)
            if config.get("eval_metrics"):
                from giellm_ray.metrics import ratios

                counts = eval_metrics(engine, eval_rows[: config.get("eval_max_rows_per_rank")],
                                      tokenizer, cfg, device, synced=cfg.zero_stage == 3)
                if counts is not None:
                    epoch_metrics["eval_counts"] = json.dumps(counts, ensure_ascii=False)
                    for ds, c in counts.items():
                        r = ratios(c)
                        for key in ("tl_accuracy", "wl_accuracy", "all_accuracy", "item_f1"):
                            epoch_metrics[f"eval/{ds}/{key}"] = r[key]
            last_eval = {k: v for k, v in epoch_metrics.items() if k.startswith("eval")}
            if rank == 0:
                log.info("[eval] %s", json.dumps(epoch_metrics, ensure_ascii=False))
        last_epoch = epoch_metrics
        if step >= total_steps:  # max_steps reached (or the last epoch): the final report follows
            break
        if epoch + 1 < cfg.epochs:  # the last epoch's checkpoint carries the final metrics
            _save_and_report(engine, epoch_metrics, {"epoch": epoch + 1, "batch": 0,
                                                     "step": step, "first_loss": first_loss})

    tokens_all, time_max = _reduce([run_tokens, 0.0])[0], _reduce([-run_time], "min")[0]
    final = {**base, **data_metrics, **last_epoch, **last_eval, "step": step, "first_loss": first_loss,
             "final_loss": last_loss, "train_tokens": int(tokens_all),
             "train_tokens_per_s": tokens_all / max(-time_max, 1e-9),
             "peak_rss_mb_rank0": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cfg.export:
        dest = export_hf(engine, tokenizer, config["export_dir"], cfg.zero_stage, rank)
        final["export_dir"] = dest or config["export_dir"]
    # Reported with the final checkpoint: a run's Result carries its last checkpoint's metrics.
    _save_and_report(engine, final, {"epoch": cfg.epochs, "batch": 0, "step": step,
                                     "first_loss": first_loss})
