"""Random (non-identity) LoRA adapters for a tiny model, in PEFT's directory layout.

``build_tiny_adapter(base_dir, out_dir, seed=1)`` wraps the model in ``base_dir`` with PEFT
(``LoraConfig(init_lora_weights=False)``: A and B both random, so the adapter changes the
model's outputs) and saves ``adapter_config.json`` + ``adapter_model.safetensors`` naming
``base_dir`` as the base, exactly what a LoRA training export ships. Tests and
``benchmarks/lora_scoring.py`` score and serve through these; nothing downloads. Knows torch,
transformers and peft, never Ray.
"""

from __future__ import annotations

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build_tiny_adapter(
    base_dir: str,
    out_dir: str,
    seed: int = 1,
    r: int = 8,
    alpha: int = 16,
    target_modules: tuple[str, ...] = ALL_LINEAR,
) -> str:
    """Save a random LoRA adapter for the model in ``base_dir`` into ``out_dir``; returns it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, cfg).save_pretrained(out_dir)
    return out_dir


def merge_adapter(base_dir: str, adapter_dir: str, out_dir: str) -> str:
    """The base model with the adapter folded in (PEFT ``merge_and_unload``), saved with the
    base's tokenizer into ``out_dir``: a plain Hugging Face model directory."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir
