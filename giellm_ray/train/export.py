"""Final export of a DeepSpeed-trained model in Hugging Face format (safetensors) from a worker.

``export_hf(engine, tokenizer, dest, zero_stage, rank)`` must run on every rank: at ZeRO-3 the
full state dict is gathered collectively (``stage3_gather_16bit_weights_on_model_save``; the
weights keep their training dtype), then rank 0 writes ``model.safetensors`` + ``config.json`` +
the tokenizer into a local temporary directory and copies it to ``dest`` (local or ``s3://``),
which ``AutoModelForCausalLM.from_pretrained`` loads.
"""

from __future__ import annotations

import tempfile

from giellm_ray import io


def export_hf(engine, tokenizer, dest: str, zero_stage: int, rank: int) -> str | None:
    """Write the trained model + tokenizer to ``dest``; returns ``dest`` on rank 0."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # collective; full dict on rank 0
    else:
        state = engine.module.state_dict() if rank == 0 else None
    if rank != 0:
        return None
    model = engine.module
    with tempfile.TemporaryDirectory() as tmp:
        model.config.use_cache = True
        model.save_pretrained(tmp, state_dict=state)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        io.copy_dir(tmp, dest)
    return dest
