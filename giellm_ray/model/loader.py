"""Load a Hugging Face causal LM and its tokenizer from a local dir, an ``s3://`` prefix or a hub id.

``ModelConfig`` says what to load and how (dtype, attention implementation, remote code, tokenizer
flavour); ``load_tokenizer`` / ``load_model`` do it the same way for training, scoring and serving.
An ``s3://`` prefix is first copied, once per node, to a local cache directory
(:func:`giellm_ray.model.cache.localize`: ``GIELLM_MODEL_CACHE``, else node-local NVMe, else
``~/.cache/giellm/models``). Hub ids work where the cluster reaches the hub. Knows torch and
transformers, never Ray.
"""

from __future__ import annotations

import os
from typing import Literal

from giellm_ray.config import StrictModel
from giellm_ray.model.cache import localize

__all__ = ["ModelConfig", "load_model", "load_tokenizer", "localize", "resolve_dtype"]

# Per model family (config.model_type) tokenizer settings that differ from AutoTokenizer's defaults.
FAMILY_TOKENIZER_KWARGS: dict[str, dict] = {
    # llm-jp-13b (GPT-2 architecture) ships a SentencePiece tokenizer; the fast conversion is exact.
    "gpt2": {"use_fast": True},
    "llama": {"use_fast": True},
}


class ModelConfig(StrictModel):
    """Which causal LM to load and how."""

    name_or_path: str = "tiny"
    """Local directory, ``s3://`` prefix, or hub id (e.g. ``meta-llama/Llama-2-7b-hf``)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype. ``auto``: bfloat16 on CUDA, float32 on CPU."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    """Attention kernel; ``None`` lets transformers choose (sdpa where available)."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint. Off unless you trust the repository."""
    use_fast: bool | None = None
    """Force a fast/slow tokenizer; ``None`` uses the family default."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when ``name_or_path`` is a hub id."""


def resolve_dtype(name: str, device: str | None = None):
    import torch

    if name == "auto":
        on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return torch.bfloat16 if on_cuda else torch.float32
    return getattr(torch, name)


def _check_local(path: str) -> None:
    looks_local = (
        path.startswith((".", "/", "~")) or os.sep in path and os.path.exists(path.split(os.sep)[0])
    )
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"model directory not found: {path}")


def hf_progress_bars_off() -> None:
    """No transformers progress bars (weight loading, shard writing): one per actor, replica or
    worker in a job log helps nobody."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(cfg: ModelConfig, padding_side: str = "left"):
    """The tokenizer, with a pad token (EOS if the checkpoint has none) and ``padding_side``."""
    from transformers import AutoConfig, AutoTokenizer

    path = localize(cfg.name_or_path)
    _check_local(path)
    kwargs: dict = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    try:
        model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
    except Exception:
        model_type = None
    kwargs.update(FAMILY_TOKENIZER_KWARGS.get(model_type, {}))
    if cfg.use_fast is not None:
        kwargs["use_fast"] = cfg.use_fast
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = padding_side
    return tok


def load_model(cfg: ModelConfig, device: str | None = None):
    """The causal LM in eval mode on ``device`` (default: CUDA if present, else CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    hf_progress_bars_off()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = localize(cfg.name_or_path)
    _check_local(path)
    kwargs: dict = {
        "dtype": resolve_dtype(cfg.dtype, device),
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model.to(device).eval()
