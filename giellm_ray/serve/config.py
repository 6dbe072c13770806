"""Typed configuration of the online extraction service (``giellm serve``, ``serve run``).

:class:`ServeConfig` gathers what the model replica loads (``model``, ``generation``, ``tasks``),
how requests are batched (``batching``: ``@serve.batch`` size and wait), how model replicas are
sized and autoscaled (``replica``), the light HTTP ingress (``ingress``) and the HTTP limits
(``http``). Load it with :func:`giellm_ray.config.load_config` from a YAML such as
``jobs/configs/serve/giellm.yaml`` plus ``--set key=value`` overrides. Torch- and Ray-free.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from giellm_ray.config import StrictModel, fold_renamed
from giellm_ray.formats.tasks import TaskRegistry
from giellm_ray.generation.adapters import check_adapter_map
from giellm_ray.generation.config import GenerationConfig, VLLMConfig
from giellm_ray.model.loader import ModelConfig


class HTTPConfig(StrictModel):
    """Where the service listens and which requests it accepts."""

    host: str = "127.0.0.1"
    """Address the Serve HTTP proxy binds (loopback unless you mean to expose it)."""
    port: int = Field(8000, ge=0, le=65535)
    """Port of the Serve HTTP proxy."""
    route_prefix: str = "/"
    """Path prefix of the application."""
    max_body_bytes: int = Field(1_048_576, ge=64)
    """Largest request body in bytes; larger bodies get 413 before any JSON parsing."""
    max_text_chars: int = Field(2000, ge=1)
    """Longest ``text`` in characters; longer texts get 413 (the field is fine, the size is not)."""
    max_batch_items: int = Field(64, ge=1)
    """Most texts in one ``POST /v1/extract/batch`` request (more get 413)."""
    request_timeout_s: float | None = None
    """Serve proxy end-to-end timeout per request; ``None``: no timeout."""
    keep_alive_timeout_s: int = 5
    """Proxy keep-alive for idle client connections."""


class ServeVLLMConfig(VLLMConfig):
    """vLLM settings of a model replica (``engine: vllm``): as bulk scoring's, with a smaller
    running set and prefill chunk, so a request's first token and each later one come sooner."""

    max_num_seqs: int = Field(128, ge=1)
    """Most rows decoding at once. 128 x ~550 tokens x 0.78 MiB (13B) = 53.7 GiB: above the
    ~44.6 GiB of KV a 13B replica has on 80 GB, so long rows are admitted by KV blocks; short
    ones (~200 tokens) fit 128 at once."""
    max_num_batched_tokens: int = Field(4096, ge=16)
    """Most tokens in one engine step: a new request's prefill is chunked to this, so the rows
    already decoding wait at most one such chunk per step."""


class BatchingConfig(StrictModel):
    """Dynamic batching of single requests on each model replica (``@serve.batch``; the HF
    engine only: a vLLM replica submits each request to its engine as it comes)."""

    max_batch_size: int = Field(16, ge=1)
    """Most requests decoded together; 1 turns batching off."""
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    """How long the first request of a batch waits for others to join."""
    max_concurrent_batches: int | None = Field(None, ge=1)
    """Serve batches that may wait for the model at once; they are merged (up to
    ``max_batch_size`` rows) when it is free, see ``serve/coalescer.py``. ``None``:
    ``2 * max_batch_size``, enough for a running and a full waiting batch of 1-row fragments.
    Serve would warn that ``max_batch_size * max_concurrent_batches`` exceeds
    ``max_ongoing_requests``; with the coalescer that product is not the batch size, so the
    replica drops that warning (``log.quiet_serve_batch_bound_notice``).
    Measured (8 fragments vs 64, 32 clients): mean model batch 5.3 vs 16, 15.7 vs 24.8 req/s."""


class ReplicaConfig(StrictModel):
    """Resources and autoscaling of the model deployment (the one that holds the LM)."""

    num_cpus: float = Field(1.0, ge=0.0)
    """CPUs reserved per model replica (fractions allowed, e.g. 0.5 on a 2-core box)."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs per model replica (1 for a 13B model in bf16 on a 40 GB+ card)."""
    min_replicas: int = Field(1, ge=0)
    """Autoscaling floor. Production: 2 or more, so one replica's death costs a retry of its
    in-flight texts on the survivor rather than a dark period while a replacement loads the model
    (13B bf16: 26 GB, ~15 s from local NVMe plus CUDA start). 1 is the default for a dev box."""
    max_replicas: int = Field(1, ge=1)
    """Autoscaling ceiling."""
    initial_replicas: int | None = None
    """Replicas at start; ``None``: ``min_replicas`` (at least 1)."""
    target_ongoing_requests: float = Field(16.0, gt=0)
    """Autoscaler target of in-flight requests per replica (about ``max_batch_size``)."""
    max_ongoing_requests: int = Field(64, ge=1)
    """In-flight requests a replica accepts before the router queues (keep ≥ ``max_batch_size``).
    With ``engine: vllm`` raise it to about 2 x ``vllm.max_num_seqs`` (``giellm-gpu.yaml``: 256):
    every accepted request goes straight into vLLM's running batch, which admits rows as KV blocks
    free, step by step; a request held back in Serve's router instead waits for a whole request
    to finish before it is sent, and the engine decodes a smaller batch meanwhile."""
    graceful_shutdown_wait_loop_s: float = Field(2.0, ge=0.0)
    """On shutdown, how often a draining replica checks for remaining requests."""
    graceful_shutdown_timeout_s: float = Field(20.0, ge=0.0)
    """On shutdown, how long a replica may drain in-flight requests before it is killed."""
    health_check_period_s: float = Field(10.0, gt=0)
    """How often Serve calls the replica's health check."""
    health_check_timeout_s: float = Field(30.0, gt=0)
    """How long a health check may take."""


class IngressConfig(StrictModel):
    """The FastAPI ingress deployment: validation, routing, no model."""

    num_cpus: float = Field(0.1, ge=0.0)
    """CPUs reserved per ingress replica (it only parses JSON and awaits the model)."""
    num_replicas: int = Field(1, ge=1)
    """Ingress replicas."""
    max_ongoing_requests: int = Field(512, ge=1)
    """In-flight requests per ingress replica (they wait on the model, so this can be large)."""
    replica_loss_retries: int = Field(1, ge=0)
    """Times a text whose model replica died mid-call is sent again (the router has dropped the
    dead replica, so the retry lands on another); after that the answer is 503."""
    retry_timeout_s: float = Field(30.0, gt=0)
    """How long a retry may wait. With no healthy replica left (``min_replicas: 1``) the retry
    queues until the replacement has loaded the model; past this the answer is 503."""
    retry_after_s: int = Field(30, ge=1)
    """``Retry-After`` of those 503s: about the time a new replica needs to load the model (13B
    bf16, 26 GB, from local NVMe at ~2 GB/s: ~15 s plus CUDA start; from S3 longer)."""


class ServeConfig(StrictModel):
    """Everything ``giellm serve`` / ``build_app`` needs; unknown keys are errors."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """Which checkpoint the model replicas load."""
    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters on ``model`` (``{name: PEFT adapter dir or s3:// URI}``), loaded once per
    replica (``s3://`` downloaded once per node). A request picks one by its ``adapter`` field
    (absent/null: the base model; an unknown name: 422); ``GET /v1/adapters`` lists them."""
    engine: Literal["hf", "vllm"] = "hf"
    """Generation engine of the model replicas: ``hf`` (our loop behind ``@serve.batch`` and
    the coalescer) or ``vllm`` (one async vLLM engine per replica, each request submitted as it
    comes: continuous batching across callers; ``giellm-gpu.yaml``). Same routes and answers."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """HF engine settings (same engine as bulk scoring), and the ``max_new_tokens`` cap (both)."""
    vllm: ServeVLLMConfig = Field(default_factory=ServeVLLMConfig)
    """vLLM engine settings (``engine: vllm``)."""
    constrained: bool = True
    """Constrain decoding to the task's output grammar (as bulk scoring does by default)."""
    tasks: str | None = None
    """``tasks.json`` (``TaskRegistry.to_dict``) written beside training data; ``None``: defaults.
    Same key as ``ScoreConfig.tasks``; the old name ``tasks_file`` is still accepted."""
    model_name: str | None = None
    """Name reported in responses; ``None``: the last path component of ``model.name_or_path``."""
    app_name: str = "giellm"
    """Serve application name."""
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    replica: ReplicaConfig = Field(default_factory=ReplicaConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        return fold_renamed(data, "tasks_file", "tasks")

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, value: dict[str, str]) -> dict[str, str]:
        return check_adapter_map(value)

    @model_validator(mode="after")
    def _check_replicas(self) -> ServeConfig:
        if self.replica.min_replicas > self.replica.max_replicas:
            raise ValueError("replica.min_replicas must not exceed replica.max_replicas")
        if self.replica.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                "replica.max_ongoing_requests must be at least "
                "batching.max_batch_size, or batches never fill"
            )
        tp = self.vllm.tensor_parallel_size
        if self.engine == "vllm" and self.replica.num_gpus and self.replica.num_gpus != tp:
            raise ValueError(
                f"replica.num_gpus ({self.replica.num_gpus}) must equal "
                f"vllm.tensor_parallel_size ({tp}): one vLLM engine per replica"
            )
        return self

    @property
    def concurrent_batches(self) -> int:
        """The ``max_concurrent_batches`` given to ``@serve.batch``."""
        b = self.batching
        if b.max_concurrent_batches is not None:
            return b.max_concurrent_batches
        return max(2, 2 * b.max_batch_size)

    def registry(self) -> TaskRegistry:
        """The task registry the service answers for: ``tasks`` if set, else the defaults."""
        return TaskRegistry.load(self.tasks)

    @property
    def served_model_name(self) -> str:
        """The model name reported in every response."""
        if self.model_name:
            return self.model_name
        return os.path.basename(self.model.name_or_path.rstrip("/")) or self.model.name_or_path
