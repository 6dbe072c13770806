"""``GenerationConfig``: how the Hugging Face engine batches and bounds generation (typed, strict).

Part of the score and serve configs (``generation:``) and used by training evaluation. Torch-free.
"""

from __future__ import annotations

from giellm_ray.config import StrictModel


class GenerationConfig(StrictModel):
    """How the engine batches and bounds generation."""

    batch_size: int = 32
    """Most rows decoding together (the KV cache holds this many rows)."""
    max_new_tokens: int | None = None
    """Global cap on generated tokens per row; ``None``: each request's own bound only."""
    refill_threshold: float = 0.1
    """Evict finished rows and prefill new ones once this fraction of ``batch_size`` has finished.
    Lower: less decode compute on finished rows, more (small) cache merges."""
    max_prefill_tokens: int = 16384
    """Most prompt tokens (padding included) prefilled in one forward pass."""
    max_prefill_padding: float = 0.2
    """Most padding share in one prefill group; a longer prompt starts the next group."""
    device: str | None = None
    """Device for inputs; ``None``: the model's device."""
