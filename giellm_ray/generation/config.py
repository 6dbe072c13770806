"""The engines' typed settings: ``GenerationConfig`` (the HF engine) and ``VLLMConfig`` (vLLM).

Both are sections of the score and serve configs (``generation:``, ``vllm:``; ``engine: hf |
vllm`` picks which engine runs); ``GenerationConfig.max_new_tokens`` caps rows on either engine.
Training evaluation uses ``GenerationConfig``. Torch- and vLLM-free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from giellm_ray.config import StrictModel


class GenerationConfig(StrictModel):
    """How the engine batches and bounds generation.

    The HF engine admits a row while ``rows x (padded prompt length + longest remaining token
    budget) x KV bytes per token`` stays within a byte budget (the cache is one rectangle padded
    to its longest row, ``giellm_ray.generation.hf``), with ``batch_size`` as the row cap. At 13B
    (Llama-2-13B / llm-jp-13b: 40 layers x 40 KV heads x head_dim 128 x 2 (K, V) x 2 B bf16 =
    0.78 MiB per token) on one 80 GB GPU (79.2 GiB):

    - scoring (``score/gpu.yaml``, ``engine: hf``, ``batch_size: 128``): 79.2 - 24.2 GiB weights -
      ~1 GiB CUDA context = ~54 GiB free; x 0.8 = ~43 GiB = ~56k tokens: all 128 rows while
      prompt + budget stays under ~440 tokens, ~100 rows at 550, ~24 at 2,304 (a 2,048-token
      prompt + 256). Row count alone put 128 x 550 x 0.78 MiB = 54 GiB of KV beside the weights:
      an OOM, then every row re-decoded alone. The 0.2 left (~11 GiB) holds a 32,768-token
      prefill's activations (~2.6 GiB of MLP intermediates) and the per-layer copies of a merge.
    - end-of-epoch eval at ZeRO-2 (13B training configs, ``eval.batch_size: 16``): ~50 GB of
      training state (bf16 params 26 + Adam shards 19.5 + grad shards 3.3) + ~3 GB CUDA/NCCL
      leave ~30 GB (~28 GiB) free; x 0.8 = ~22 GiB = ~29k tokens: 16 rows of up to ~1,800 tokens,
      ~12 rows at 2,304; before, 16 x 2,304 x 0.78 MiB = 28 GiB of KV went on top of the state.

    The free memory is read when the call starts (the batch is empty then), so the same default
    fits a scoring actor and a training worker.
    """

    batch_size: int = 32
    """Most rows decoding together (the KV cache holds this many rows)."""
    max_new_tokens: int | None = None
    """Global cap on generated tokens per row, whichever engine runs; ``None``: each request's own
    bound only."""
    refill_threshold: float = 0.1
    """Evict finished rows and prefill new ones once this fraction of ``batch_size`` has finished.
    Lower: less decode compute on finished rows, more (small) cache merges."""
    max_prefill_tokens: int = 16384
    """Most prompt tokens (padding included) prefilled in one forward pass."""
    max_prefill_padding: float = 0.2
    """Most padding share in one prefill group; a longer prompt starts the next group."""
    device: str | None = None
    """Device for inputs; ``None``: the model's device."""
    scores: bool = True
    """Confidence scores: each item's ``score`` and the row's ``tl_score`` (the probability of
    their tokens under the constraint, their product: ``giellm_ray.generation.confidence``);
    ``False`` leaves them null and skips the engines' per-token log-probabilities."""
    kv_budget_bytes: int | None = Field(None, ge=1)
    """Most bytes the batch's KV cache may reach; rows past it wait in the queue (``batch_size``
    stays the row cap). ``None``: ``kv_memory_fraction`` of the device's free memory, read at the
    start of each ``generate`` call on CUDA; no byte bound on other devices (rows only)."""
    kv_memory_fraction: float = Field(0.8, gt=0.0, le=1.0)
    """Share of the free device memory (CUDA) the KV cache may take when ``kv_budget_bytes`` is
    unset; the rest is the margin for prefill activations, logits and the cache's copies."""


class VLLMConfig(StrictModel):
    """The vLLM engine (``engine: vllm``): what bounds its batch and memory, and how it runs.

    The defaults are sized for a 13B model (Llama-2-13B / llm-jp-13b: 40 layers, width 5120, no
    grouped KV heads) in bf16 on one 80 GB GPU, one engine per GPU:

    - weights 13.0e9 x 2 B = 26 GB = 24.2 GiB; ``gpu_memory_utilization`` 0.90 x 79.2 GiB = 71.3
      GiB for the engine; minus weights and ~2.5 GiB of activations, CUDA graphs and sampler
      leaves ~44.6 GiB of KV cache;
    - KV per token 2 (K, V) x 40 layers x 5120 x 2 B = 0.78 MiB, so ~58k tokens of KV: ~106 rows
      of 550 tokens (prompt + output) at once, ~290 rows of 200 tokens;
    - so ``max_num_seqs`` 256 (scoring) lets short rows fill the cache and long rows are admitted
      by KV blocks (vLLM preempts instead of failing: 128 x 550 x 0.78 MiB = 53.7 GiB would not
      fit beside the weights, which the HF engine's row-count admission would try);
    - ``max_num_batched_tokens`` 8192 (scoring) bounds one step's prefill chunk: big enough to keep
      the GPU busy, small enough that decode steps of the running rows are not stalled long;
      serving uses 4096 (``ServeConfig``) for a lower time-to-first-token;
    - ``tensor_parallel_size`` 1: the 26 GB of weights fit one card, and 8 independent engines
      per node (one per GPU) beat one engine over 8 GPUs for throughput (no all-reduce per layer).

    LoRA adapters (the config's ``adapters``; each row a ``LoRARequest``, all adapters in one
    running batch). vLLM keeps ``max_loras`` adapter slots on the GPU, each sized for
    ``max_lora_rank`` on every LoRA-capable layer (q/k/v/o, gate/up/down) whatever the adapter
    targets: at r=16 for 13B, 16 x (4 x 10,240 + 3 x 18,944) x 40 layers = 62.6M parameters,
    125 MB in bf16 per slot; 4 slots = 0.5 GB = 1.1% of the 44.6 GiB of KV above (~640 tokens of
    KV, about one row of 550). Weights and KV per row are unchanged; the extra compute is ~0.5%
    of the base's per token (``generation.adapters``). An adapter not in a slot is loaded from the
    node-local cache (host RAM: ``max_loras`` adapters kept there too) when a row asks for it,
    evicting the least recently used: with 4 slots a job over <= 4 adapters never swaps, and
    ``giellm mre``'s 7 adapters swap ~125 MB host-to-device (~5 ms on PCIe 4) now and then.
    """

    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = None
    """Weights and activations dtype; ``None``: ``model.dtype``. ``auto`` means what it means for
    ``model.dtype`` (and the HF engine): bf16 on CUDA, fp32 on CPU, whatever the checkpoint's."""
    max_model_len: int | None = Field(None, ge=16)
    """Longest prompt + output in tokens; ``None``: the model's own (Llama-2: 4096). Rows whose
    prompt + budget exceed it get ``error = "prompt too long ..."``, as with the HF engine."""
    max_num_seqs: int = Field(256, ge=1)
    """Most rows decoding at once (KV permitting; see the arithmetic above)."""
    max_num_batched_tokens: int = Field(8192, ge=16)
    """Most tokens (prefill chunks + decode rows) in one engine step."""
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    """Share of the device memory the engine may take (weights + KV cache + activations);
    ``None``: 0.90 on a GPU (one engine per GPU), 0.10 on CPU, where vLLM reads it as the share
    of the NUMA node's RAM (0.10 of 24 GB is ~1.4 GB of KV after vLLM's own ~1 GB)."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs one engine spans; give the actor/replica as many GPUs (``num_gpus_per_actor``)."""
    enforce_eager: bool | None = None
    """Skip torch.compile and CUDA graphs; ``None``: false on a GPU (graphs cut per-step launch
    overhead; vLLM applies the grammar masks outside them), true on CPU (compiling costs ~40 s of
    start-up and gains nothing measurable on a small model)."""
    enable_prefix_caching: bool | None = None
    """Reuse KV blocks of identical prompt prefixes; ``None``: vLLM's default (on). GIELLM
    prompts start with the row's text, so hits are rare (0-3% measured): harmless either way."""
    seed: int = 0
    """vLLM's sampling seed (decoding is greedy; kept for reproducible engine state)."""
    enable_lora: bool | None = None
    """Start vLLM with LoRA support; ``None``: on exactly when the config names ``adapters``."""
    max_loras: int = Field(4, ge=1)
    """Adapters in one running batch (device slots; see the arithmetic above). Capped at the
    number of configured adapters (slots cost memory); more adapters than slots are swapped in
    least-recently-used order as rows ask for them."""
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 16
    """Largest adapter rank a slot holds (vLLM's choices); the engine refuses to start with an
    adapter of a higher rank. The slots are sized by it, so keep it at the adapters' rank."""
    cpu_cores: int | None = Field(None, ge=1)
    """On CPU: cores this engine binds its OpenMP threads to, a block of its own on the node
    (``giellm_ray.generation.cpu_cores``); ``None``: vLLM's default (every core of the NUMA
    node). ``giellm score`` sets it from the node's cores and the actor count."""
    mask_mode: Literal["cache", "scatter"] | None = None
    """Accepted so configs written for the former logits-processor constraint still load; it
    has no effect: vLLM applies each row's grammar bitmask itself (structured outputs)."""

    def engine_kwargs(self, model_dtype: str, on_gpu: bool) -> dict[str, Any]:
        """vLLM ``AsyncEngineArgs`` keywords (no model, no structured-outputs backend), defaults
        resolved."""
        dtype = self.dtype or model_dtype
        if dtype == "auto":  # one meaning of auto for both knobs: the HF loader's
            dtype = "bfloat16" if on_gpu else "float32"
        kw: dict[str, Any] = {
            "dtype": dtype,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "gpu_memory_utilization": self.gpu_memory_utilization or (0.90 if on_gpu else 0.10),
            "tensor_parallel_size": self.tensor_parallel_size,
            "enforce_eager": (not on_gpu) if self.enforce_eager is None else self.enforce_eager,
            "seed": self.seed,
        }
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        if self.enable_prefix_caching is not None:
            kw["enable_prefix_caching"] = self.enable_prefix_caching
        return kw

    def lora_kwargs(self, n_adapters: int, max_rank: int) -> dict[str, Any]:
        """The ``AsyncEngineArgs`` LoRA keywords for ``n_adapters`` (``{}``: LoRA off)."""
        if self.enable_lora is False or (self.enable_lora is None and n_adapters == 0):
            if n_adapters:
                raise ValueError(
                    f"{n_adapters} adapter(s) configured but vllm.enable_lora is false"
                )
            return {}
        if max_rank > self.max_lora_rank:
            raise ValueError(
                f"an adapter has rank {max_rank}, above vllm.max_lora_rank "
                f"{self.max_lora_rank}; raise it (1, 8, 16, 32, 64, 128, ...)"
            )
        return {
            "enable_lora": True,
            "max_loras": max(1, min(self.max_loras, n_adapters)),
            "max_lora_rank": self.max_lora_rank,
        }
