"""The DeepSpeed config, built as plain data from a :class:`TrainConfig` (no Ray, no DeepSpeed).

``build_ds_config(cfg, total_steps, world_size)`` returns the dict handed to
``deepspeed.initialize``: ZeRO stage 2 or 3 (with 16-bit weight gathering on save so the export is
one consolidated file), optional CPU offload, BF16 on GPU / FP32 on CPU, gradient accumulation,
clipping and a warmup schedule. ``uses_ds_optimizer`` says whether DeepSpeed builds the optimizer
(GPU or offload) or the worker passes ``torch.optim.AdamW`` (CPU without offload, which avoids
JIT-compiling ``cpu_adam``); :func:`optimizer_section` says which one DeepSpeed builds.

The optimizer on GPU: DeepSpeed 0.19.8 turns ``AdamW`` into its FusedAdam, which JIT-compiles a
CUDA kernel on first use and fails where nvcc is missing (PyPI torch 2.13's ``cuda-toolkit``
ships none) or is not exactly the CUDA torch was built with (no minor-mismatch allowance for 13).
So FusedAdam is asked for only when it can be had (``fused_adam``: prebuilt in the install, as in
our image with ``DS_BUILD_FUSED_ADAM=1``, or buildable here; the worker decides, see
``giellm_ray.train.deepspeed_init.fused_adam_usable``); otherwise ``torch_adam: true`` makes DeepSpeed
build ``torch.optim.AdamW(fused=True)``, torch's own fused CUDA kernel (no compile step), which
ZeRO wraps like any supported optimizer. What that costs: at 13B ZeRO-2 on 8 GPUs each rank
updates its 1.63e9-parameter fp32 shard, ~45 GB of HBM traffic (fp32 master, m, v read and
written, grads read): ~25 ms at ~2 TB/s for either fused kernel. Torch's is a few per cent slower
than DeepSpeed's multi-tensor kernel in published comparisons; against a 1-10 s optimizer step
(forward + backward + 45.5 GB/GPU of ZeRO traffic) it is well under 1% of a step. Activation checkpointing is not a
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


def optimizer_section(cfg: TrainConfig, fused_adam: bool = True) -> dict:
    """DeepSpeed's ``optimizer`` section (when :func:`uses_ds_optimizer`).

    With CPU offload DeepSpeed builds DeepSpeedCPUAdam (a C++ op, no CUDA compiler needed). On
    GPU it builds FusedAdam when ``fused_adam`` (it can be loaded or built), else torch's fused
    AdamW through ``torch_adam`` (see the module docstring for the cost).
    """
    params: dict = {
        "lr": cfg.lr,
        "betas": list(ADAM_BETAS),
        "eps": ADAM_EPS,
        "weight_decay": cfg.weight_decay,
    }
    if not cfg.cpu_offload and not fused_adam:
        # DeepSpeed pops torch_adam and passes the other keys to torch.optim.AdamW.
        params.update(torch_adam=True, fused=True)
    return {"type": "AdamW", "params": params}


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def build_scheduler(cfg: TrainConfig, total_steps: int) -> dict:
    """A DeepSpeed scheduler section: WarmupDecayLR, WarmupCosineLR or WarmupLR."""
    total = max(total_steps, 1)
    # DeepSpeed's schedulers refuse 0 warmup steps (warmup_ratio: 0): one is the least.
    warm = max(1, min(warmup_steps(cfg, total), total))
    if cfg.scheduler == "warmup_decay":
        return {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": total,
                "warmup_num_steps": warm,
                "warmup_min_lr": 0.0,
                "warmup_max_lr": cfg.lr,
                "warmup_type": "linear",
            },
        }
    if cfg.scheduler == "warmup_cosine":
        return {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total,
                "warmup_num_steps": warm,
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": 0.0,
                "warmup_type": "linear",
            },
        }
    return {
        "type": "WarmupLR",
        "params": {
            "warmup_num_steps": warm,
            "warmup_min_lr": 0.0,
            "warmup_max_lr": cfg.lr,
            "warmup_type": "linear",
        },
    }


def build_zero(cfg: TrainConfig) -> dict:
    """The ``zero_optimization`` section."""
    zero: dict = {
        "stage": cfg.zero_stage,
        "overlap_comm": cfg.use_gpu,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
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


def build_ds_config(
    cfg: TrainConfig, total_steps: int, world_size: int, fused_adam: bool = True
) -> dict:
    """The full DeepSpeed config dict for ``total_steps`` optimizer steps on ``world_size``;
    ``fused_adam``: whether DeepSpeed's FusedAdam can be had (:func:`optimizer_section`)."""
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
        ds["optimizer"] = optimizer_section(cfg, fused_adam)
        if cfg.cpu_offload:
            ds["zero_force_ds_cpu_optimizer"] = True
    else:
        # A client torch optimizer is combined with DeepSpeed's scheduler; allow it explicitly.
        ds["zero_allow_untested_optimizer"] = True
    return ds


def total_optimizer_steps(batches_per_epoch: int, grad_accum: int, epochs: int) -> int:
    """Optimizer steps in a run; each epoch uses a whole number of accumulation windows."""
    return (batches_per_epoch // grad_accum) * epochs
