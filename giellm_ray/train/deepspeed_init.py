"""A training worker's model wrapped by ``deepspeed.initialize``: load the weights, pick the
optimizer, initialize (DeepSpeed calls the result an engine; it is not a generation engine).

``build_ds_engine(cfg, model_path, ds_config)`` loads the model in the training dtype (BF16 on GPU,
FP32 on CPU), turns on HF activation checkpointing when asked, and hands it to
``deepspeed.initialize`` with the DeepSpeed config from :mod:`giellm_ray.train.deepspeed_config`.
At ZeRO-3 on GPU the model is built partitioned (``zero.Init`` through ``HfDeepSpeedConfig``,
which must stay alive while the engine does: it is returned) so 8 ranks do not each hold a full
13B copy (26 GB) in host memory before sharding. Below ZeRO-3 every rank loads the full model
(8 x 26 GB = 208 GB of the node's 1.1 TB host memory, briefly, at 13B).
:func:`fused_adam_usable` tells the DeepSpeed config whether FusedAdam can be had on this host
(see :mod:`giellm_ray.train.deepspeed_config`).
"""

from __future__ import annotations

import logging
import os

from giellm_ray.log import quiet_deepspeed_scheduler_notice
from giellm_ray.model.loader import hf_progress_bars_off, localize, resolve_dtype
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import ADAM_BETAS, ADAM_EPS, uses_ds_optimizer

log = logging.getLogger(__name__)


def select_accelerator(cfg: TrainConfig) -> None:
    """Tell DeepSpeed which accelerator to use, before it is imported."""
    if not cfg.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    elif os.environ.get("DS_ACCELERATOR") == "cpu":
        # Inherited from a CPU environment (a test cluster's runtime env, say): it would put
        # DeepSpeed's collectives and optimizer on the CPU beside CUDA tensors.
        log.warning("[train] use_gpu with DS_ACCELERATOR=cpu in the environment: using cuda")
        os.environ["DS_ACCELERATOR"] = "cuda"


def fused_adam_usable() -> bool:
    """Whether DeepSpeed's FusedAdam can be loaded here: prebuilt into the install
    (``DS_BUILD_FUSED_ADAM=1``, as our image does), or JIT-buildable (the builder is compatible,
    nvcc exists and matches torch's CUDA as DeepSpeed's build check wants)."""
    from deepspeed.ops.op_builder import FusedAdamBuilder

    try:
        from deepspeed.git_version_info import installed_ops

        if installed_ops.get(FusedAdamBuilder.NAME):
            return True
    except ImportError:
        pass
    try:
        if not FusedAdamBuilder().is_compatible(verbose=False):
            return False
        from deepspeed.ops.op_builder.builder import assert_no_cuda_mismatch

        return bool(assert_no_cuda_mismatch(FusedAdamBuilder.NAME))
    except Exception as exc:  # MissingCUDAException, CUDAMismatchException, no CUDA torch
        log.info("[train] FusedAdam cannot be built here (%s): torch's fused AdamW instead", exc)
        return False


def load_model(cfg: TrainConfig, path: str, ds_config: dict):
    """The model to train and the ``HfDeepSpeedConfig`` to keep alive (``None`` below ZeRO-3)."""
    from transformers import AutoModelForCausalLM

    keep = None
    if cfg.zero_stage == 3 and cfg.use_gpu:
        # Partition while loading (zero.Init). transformers needs `accelerate` for this;
        # without it every rank loads a full copy.
        try:
            from transformers.integrations import HfDeepSpeedConfig

            keep = HfDeepSpeedConfig(ds_config)
        except Exception as exc:  # PackageNotFoundError for accelerate
            log.warning("[train] loading unpartitioned (zero.Init unavailable: %s)", exc)
    dtype = resolve_dtype("bfloat16" if cfg.resolved_precision() == "bf16" else "float32")
    kwargs: dict = {
        "dtype": dtype,
        "trust_remote_code": cfg.model.trust_remote_code,
        "revision": cfg.model.revision,
    }
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    from giellm_ray.train.lora import apply_lora, quantization_config

    quant = quantization_config(cfg.lora)
    if quant is not None:  # QLoRA: the 4-bit base is placed on this worker's GPU as it loads
        import torch

        kwargs.update(quantization_config=quant, device_map={"": torch.cuda.current_device()})
    hf_progress_bars_off()
    model = AutoModelForCausalLM.from_pretrained(localize(path), **kwargs)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora is not None:
        model = apply_lora(model, cfg)
    return model, keep


def build_ds_engine(cfg: TrainConfig, model_path: str, ds_config: dict):
    """``(engine, keep)``: the DeepSpeed engine over the model at ``model_path``."""
    import deepspeed
    import torch

    quiet_deepspeed_scheduler_notice()
    model, keep = load_model(cfg, model_path, ds_config)
    optimizer = None
    if not uses_ds_optimizer(cfg):
        trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA: the adapter
        optimizer = torch.optim.AdamW(
            trainable, lr=cfg.lr, betas=ADAM_BETAS, eps=ADAM_EPS, weight_decay=cfg.weight_decay
        )
    params = None if optimizer else [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, model_parameters=params
    )
    return engine, keep
