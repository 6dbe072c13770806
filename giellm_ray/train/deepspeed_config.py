"""The DeepSpeed config, built as plain data from a :class:`TrainConfig` (no Ray, no DeepSpeed).

``build_ds_config(cfg, total_steps, world_size)`` returns the dict handed to
``deepspeed.initialize``: ZeRO stage 2 or 3 (with 16-bit weight gathering on save so the export is
one consolidated file), optional CPU offload, BF16 on GPU / FP32 on CPU, gradient accumulation,
clipping and a warmup schedule. ``uses_ds_optimizer`` says whether DeepSpeed builds the optimizer
(GPU or offload: FusedAdam / DeepSpeedCPUAdam) or the worker passes ``torch.optim.AdamW`` (CPU
without offload, which avoids JIT-compiling ``cpu_adam``). Activation checkpointing is not a
DeepSpeed key here: the worker calls HF ``gradient_checkpointing_enable``. Which stage to use is
arithmetic, written out in ``configs/train/giellm-13b.yaml``: at 13B on 8 x 80 GB ZeRO-2 needs
~59 GB per GPU and sends 45.5 GB per GPU per step, ZeRO-3 ~38 GB and >= 68 GB.
"""

from __future__ import annotations

import math

from giellm_ray.train.config import TrainConfig

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8


def uses_ds_optimizer(cfg: TrainConfig) -> bool:
    """DeepSpeed's own optimizer on GPU or with offload; torch AdamW otherwise."""
    return cfg.use_gpu or cfg.cpu_offload


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def build_scheduler(cfg: TrainConfig, total_steps: int) -> dict:
    """A DeepSpeed scheduler section: WarmupDecayLR, WarmupCosineLR or WarmupLR."""
    total = max(total_steps, 1)
    warm = min(warmup_steps(cfg, total), total)
    if cfg.scheduler == "warmup_decay":
        return {"type": "WarmupDecayLR", "params": {
            "total_num_steps": total, "warmup_num_steps": warm, "warmup_min_lr": 0.0,
            "warmup_max_lr": cfg.lr, "warmup_type": "linear"}}
    if cfg.scheduler == "warmup_cosine":
        return {"type": "WarmupCosineLR", "params": {
            "total_num_steps": total, "warmup_num_steps": warm, "warmup_min_ratio": 0.0,
            "cos_min_ratio": 0.0, "warmup_type": "linear"}}
    return {"type": "WarmupLR", "params": {
        "warmup_num_steps": warm, "warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr,
        "warmup_type": "linear"}}


def build_zero(cfg: TrainConfig) -> dict:
    """The ``zero_optimization`` section."""
    zero: dict = {"stage": cfg.zero_stage, "overlap_comm": cfg.use_gpu,
                  "contiguous_gradients": True, "reduce_bucket_size": 5e7}
    if cfg.cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    if cfg.zero_stage == 3:
        # One consolidated state dict on rank 0 when saving, so the export needs no zero_to_fp32.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        zero["stage3_param_persistence_threshold"] = 1e4
        zero["stage3_max_live_parameters"] = 1e9
        zero["stage3_prefetch_bucket_size"] = 5e7
        if cfg.cpu_offload:
            zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.use_gpu}
    else:
        zero["allgather_bucket_size"] = 5e7
    return zero


def build_ds_config(cfg: TrainConfig, total_steps: int, world_size: int) -> dict:
    """The full DeepSpeed config dict for ``total_steps`` optimizer steps on ``world_size``."""
    precision = cfg.resolved_precision()
    ds: dict = {
        "train_micro_batch_size_per_gpu": cfg.per_device_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.per_device_batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_optimization": build_zero(cfg),
        "scheduler": build_scheduler(cfg, total_steps),
        "steps_per_print": 10**9,  # we log ourselves, on rank 0
        "wall_clock_breakdown": False,
    }
    if uses_ds_optimizer(cfg):
        ds["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.lr, "betas": list(ADAM_BETAS), "eps": ADAM_EPS,
            "weight_decay": cfg.weight_decay}}
        if cfg.cpu_offload:
            ds["zero_force_ds_cpu_optimizer"] = True
    else:
        # A client torch optimizer is combined with DeepSpeed's scheduler; allow it explicitly.
        ds["zero_allow_untested_optimizer"] = True
    return ds


def total_optimizer_steps(batches_per_epoch: int, grad_accum: int, epochs: int) -> int:
    """Optimizer steps in a run; each epoch uses a whole number of accumulation windows."""
    return (batches_per_epoch // grad_accum) * epochs
