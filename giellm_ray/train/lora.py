"""LoRA / QLoRA inside a training worker: wrap the model, count what trains, write the adapter.

:func:`apply_lora` wraps the loaded model in PEFT's ``PeftModel`` (the base frozen, low-rank
adapters on ``lora.target_modules``); DeepSpeed then sees only the adapter as trainable, so ZeRO
shards and Adam keeps state for it alone. Checkpoints leave the frozen base out
(``save_checkpoint(exclude_frozen_parameters=True)``): at 13B r 16 a checkpoint is ~39 M params
of bf16 weights + 16 B/param of fp32 master and Adam state, ~0.7 GB, against 182 GB for a
full-FT ZeRO-2 checkpoint. QLoRA (``quantize: 4bit``) loads the base in NF4 with bitsandbytes
(CUDA only) and prepares it for k-bit training (norms in fp32, input grads for checkpointing).

Export layout (``<run>/export``, see the README's LoRA section):
``adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors`` + the tokenizer;
``base_model_name_or_path`` names the base) which PEFT and vLLM load, and with
``export.merge`` ``merged/``, a plain Hugging Face model: rank 0 reloads the base from disk in
its training dtype (13B bf16: 26 GB of host memory, not GPU), applies the saved adapter and
merges (``merge_and_unload``), because PEFT cannot merge a model DeepSpeed holds (ZeRO-3 has
partitioned it; a 4-bit base would merge lossily).
"""

from __future__ import annotations

import logging
import os

from giellm_ray.train.config import LoraConfig, TrainConfig

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def quantization_config(lora: LoraConfig | None):
    """``BitsAndBytesConfig`` for a 4-bit (NF4, bf16 compute) base, else ``None``."""
    if lora is None or lora.quantize != "4bit":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def peft_config(lora: LoraConfig):
    """PEFT's ``LoraConfig`` for a causal LM from ours."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType

    return PeftLoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
    )


def apply_lora(model, cfg: TrainConfig):
    """The model wrapped with fresh adapters (base frozen); logs what trains on rank 0."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.lora.quantize == "4bit":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.activation_checkpointing
        )
    elif cfg.activation_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    model = get_peft_model(model, peft_config(cfg.lora))
    trainable, total = parameter_counts(model)
    log.info(
        "[train] LoRA r=%d on %s: %d trainable of %d parameters (%.3f%%)",
        cfg.lora.r,
        sorted(model.peft_config["default"].target_modules),
        trainable,
        total,
        100 * trainable / max(total, 1),
    )
    return model


def parameter_counts(model) -> tuple[int, int]:
    """``(trainable, total)`` parameters (ZeRO-3 partitioned ones counted by ``ds_numel``)."""
    trainable = total = 0
    for p in model.parameters():
        n = getattr(p, "ds_numel", p.numel())
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def gather_trainable(engine, zero_stage: int, rank: int) -> dict | None:
    """The trainable (adapter) weights, full, on rank 0 (``None`` elsewhere); collective at
    ZeRO-3, where only they are gathered (``exclude_frozen_parameters``)."""
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    if rank != 0:
        return None
    return {n: p.detach() for n, p in engine.module.named_parameters() if p.requires_grad}


def drop_frozen_aliases(ckpt_dir: str, tag: str, module) -> None:
    """Remove frozen weights that DeepSpeed's ``exclude_frozen_parameters`` keeps from rank 0's
    model-states file: it drops frozen parameters by their first name only, so a tied output head
    (``lm_head.weight`` = the embedding: 0.5 GB at 13B) stays. Rank 0 only; the file is the
    adapter plus that alias, so rewriting it is cheap."""
    import torch

    path = os.path.join(ckpt_dir, tag, "mp_rank_00_model_states.pt")
    if not os.path.exists(path):
        return
    frozen = {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    states = torch.load(path, map_location="cpu", weights_only=False)
    drop = [k for k in states.get("module", {}) if k in frozen]
    if drop:
        for k in drop:
            del states["module"][k]
        torch.save(states, path)


def save_adapter(module, state: dict, tokenizer, local_dir: str) -> None:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (+ tokenizer) into ``local_dir``."""
    from giellm_ray.model.loader import hf_progress_bars_off

    hf_progress_bars_off()
    module.save_pretrained(
        local_dir, state_dict=state, safe_serialization=True, save_embedding_layers=False
    )
    tokenizer.save_pretrained(local_dir)


def load_adapter_weights(module, adapter_dir: str) -> None:
    """Load a saved adapter's weights into the wrapped model (resuming from a weights-only
    checkpoint of a LoRA run: the base is the base, the adapter comes from the export)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from giellm_ray.model.loader import localize

    path = os.path.join(localize(adapter_dir), ADAPTER_WEIGHTS)
    result = set_peft_model_state_dict(module, load_file(path))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"{adapter_dir} lacks adapter weights {missing[:4]}")


def merge_adapter(base_path: str, adapter_dir: str, tokenizer, local_dir: str, dtype) -> None:
    """Base (reloaded from disk, unquantized) + adapter, merged, as a Hugging Face model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from giellm_ray.model.loader import hf_progress_bars_off, localize

    hf_progress_bars_off()
    base = AutoModelForCausalLM.from_pretrained(localize(base_path), dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(local_dir, safe_serialization=True)
    tokenizer.save_pretrained(local_dir)
