"""``ScoreConfig``: everything ``giellm score`` / ``jobs/score.py`` needs, typed and strict.

The same file runs on the 2-core CPU box (fractional CPUs per actor so Ray Data's read and write
tasks still get a core) and on a GPU cluster (one GPU per actor); see ``jobs/configs/score/``.
Load with ``giellm_ray.config.load_config(ScoreConfig, path, overrides)``.
"""

from __future__ import annotations

import sys
from typing import Literal

from pydantic import Field, field_validator, model_validator

from giellm_ray.config import StrictModel
from giellm_ray.generation.adapters import check_adapter_map
from giellm_ray.generation.config import GenerationConfig, VLLMConfig
from giellm_ray.model.loader import ModelConfig
from giellm_ray.sample import resolve_uri


class ScoreConfig(StrictModel):
    """A bulk scoring job: inputs, model, actor pool, generation and output."""

    input: list[str] = Field(default_factory=list)
    """Parquet files or directories (local or ``s3://``; ``sample:test`` is the shipped sample);
    ``--input`` replaces this list."""
    output: str | None = None
    """Output directory (local or ``s3://``); ``--output`` replaces it."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Model to load in every actor; ``--model`` sets ``model.name_or_path``."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters on ``model`` (``{name: PEFT adapter dir or s3:// URI}``), each loaded once
    per actor (``s3://`` downloaded once per node); a row picks one by its ``adapter`` column
    (null: the base model; a name not here: that row's ``error``). See
    ``giellm_ray.generation.adapters`` for the 13B arithmetic."""
    engine: Literal["hf", "vllm"] = "hf"
    """Generation engine: ``hf`` (our continuous-batching loop over a Hugging Face model: light,
    no vLLM needed) or ``vllm`` (vLLM's paged KV cache and CUDA graphs: the GPU engine, in
    ``gpu.yaml``). Outputs, columns and errors are the same; see ``giellm_ray.score.udf``."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """HF engine batching, and the global ``max_new_tokens`` cap (both engines)."""
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    """vLLM engine settings (``engine: vllm``); defaults sized for 13B on one 80 GB GPU."""
    batches_in_flight: int | None = Field(None, ge=1)
    """Batches one actor works on at once; ``None``: 1 with ``hf`` (it decodes one batch at a
    time), 4 with ``vllm``: the actor takes batches in 4 threads and vLLM decodes their rows as
    one running set, so while the last rows of one batch finish the next batch's rows are
    already decoding (no tail). With ``batch_size`` 512 that is 2,048 rows queued per engine,
    8x ``vllm.max_num_seqs``; the rows are host memory only (~1 MB)."""
    constrained: bool = True
    """Decode under the task's format constraint (``giellm_ray.decoding``) where available."""
    tasks: str | None = None
    """A ``tasks.json`` (registry learned from data); ``None``: the default registry."""
    num_actors: int = 2
    """Inference actors in the pool; each loads the model once."""
    num_cpus_per_actor: float = 0.5
    """CPUs reserved per actor; keep below 1 on small CPU machines (read/write tasks need some)."""
    num_gpus_per_actor: float = 0
    """GPUs per actor (1 on a GPU cluster; ``vllm.tensor_parallel_size`` with vLLM)."""
    torch_threads: int | None = None
    """Intra-op threads per actor; ``None``: ``max(1, round(num_cpus_per_actor))``."""
    batch_size: int = 256
    """Rows handed to an actor per call (the engine batches within it)."""
    rows_per_block: int = 256
    """Streaming repartition: blocks of at most this many rows, so every actor gets work."""
    rows_per_file: int | None = None
    """Minimum rows per output file (``None``: one file per block)."""
    s3_endpoint_url: str | None = None
    """S3 endpoint (e.g. a local moto server); ``None``: ``AWS_ENDPOINT_URL`` or AWS itself."""
    ray_address: str | None = None
    """Ray cluster to join; ``None``: the current one, else ``RAY_ADDRESS``, else a local one."""
    progress_interval_s: float = 10.0
    """Seconds between progress lines (rows done / total, rows/s); 0 turns them off."""
    progress_bars: bool | Literal["auto"] = "auto"
    """Ray Data's own progress bars; ``auto``: only when stderr is a terminal (in a job's log
    they are blocks of text every few seconds; the progress line is there either way)."""
    parquet_reader_v2: bool = False
    """Use Ray Data's DataSourceV2 Parquet reader. It starts 32 footer-reader actors per read,
    which costs tens of seconds on small machines; the V1 reader is the default."""
    metrics: bool = True
    """Write the metrics report (``OUTPUT/_metrics``) when the input has a ``target`` column."""
    resume: bool = True
    """Continue an interrupted run found in ``OUTPUT/_staging`` (same input and model: only the
    rows not yet committed are scored); ``false`` (``--fresh``) discards it and starts over."""

    @property
    def actor_concurrency(self) -> int:
        """Batches one actor works on at once (``batches_in_flight`` resolved)."""
        if self.batches_in_flight is not None:
            return self.batches_in_flight
        return 4 if self.engine == "vllm" else 1

    @model_validator(mode="after")
    def _check_engine(self) -> ScoreConfig:
        if self.engine == "hf" and (self.batches_in_flight or 1) > 1:
            raise ValueError(
                "batches_in_flight > 1 needs engine: vllm (the HF engine decodes "
                "one batch at a time; raise generation.batch_size instead)"
            )
        tp = self.vllm.tensor_parallel_size
        if self.engine == "vllm" and self.num_gpus_per_actor and self.num_gpus_per_actor != tp:
            raise ValueError(
                f"num_gpus_per_actor ({self.num_gpus_per_actor}) must equal "
                f"vllm.tensor_parallel_size ({tp}): one vLLM engine per actor"
            )
        return self

    def show_progress_bars(self) -> bool:
        """Whether Ray Data draws its bars (``auto`` resolved against this process's stderr)."""
        if self.progress_bars == "auto":
            return sys.stderr.isatty()
        return bool(self.progress_bars)

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        return check_adapter_map(value)

    @field_validator("input")
    @classmethod
    def _shipped_sample(cls, value: list[str]) -> list[str]:
        return [resolve_uri(p) for p in value]
