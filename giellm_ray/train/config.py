"""``TrainConfig``: everything a fine-tuning run needs, typed, documented, unknown keys rejected.

Loaded from YAML plus ``--set k=v`` overrides by ``giellm train`` / ``jobs/train.py`` (see
``jobs/configs/train/``). Defaults follow the paper's recipe (3 epochs, lr 1e-5, batch 1 per
device); ``precision: auto`` means BF16 on GPU and FP32 on CPU. ``model.name_or_path: tiny``
builds the tiny random-init Llama from the training corpus into the run directory. The
single-task (MRE) comparison is the same recipe with ``data.train`` pointing at one task's
Parquet (e.g. ``single/TCREE/train.parquet``) and another ``run_name``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from giellm_ray.config import StrictModel
from giellm_ray.model.loader import ModelConfig
from giellm_ray.model.tiny import TinyConfig
from giellm_ray.sample import resolve_uri


class DataConfig(StrictModel):
    """Where the training corpus lives (Parquet in the dataset schema: ``prompt``, ``target``)."""

    train: str | None = None
    """Training Parquet file or directory, local or ``s3://`` (required to run); ``sample:train``
    is the synthetic sample shipped in the package."""
    eval: str | None = None
    """Held-out Parquet for evaluation at the end of each epoch; ``None`` skips evaluation."""
    max_length: int = Field(1024, ge=8)
    """Longest ``prompt + target + EOS`` in tokens."""
    overlong: Literal["drop", "truncate_prompt_left"] = "drop"
    """Over-long rows: drop them, or cut the prompt from the left (targets are never cut)."""
    group_by_length: bool = True
    """Batch rows of similar length together (less padding)."""
    seed: int = 0
    """Seed for shuffling and length grouping."""

    @field_validator("train", "eval")
    @classmethod
    def _shipped_sample(cls, value: str | None) -> str | None:
        # ``sample:train`` / ``sample:test``: the sample shipped in the package, from any cwd.
        return resolve_uri(value)


class EvalConfig(StrictModel):
    """End-of-epoch evaluation on ``data.eval``: loss, and the paper's metrics via generation."""

    metrics: Literal["auto", "on", "off"] = "auto"
    """Greedy generation + foundation metrics. ``auto``: on below ZeRO-3 when the eval set is
    ≤ ``auto_max_rows``; off at ZeRO-3, where every decode step all-gathers the sharded model
    (13B: 26 GB per token step, ~10-15 min per epoch): eval loss stays, and ``giellm score`` on
    the export (vLLM engine, format constraint) gives the metrics."""
    auto_max_rows: int = 2000
    """Largest eval set for which ``metrics: auto`` generates."""
    max_rows: int | None = None
    """Generate for at most this many eval rows (``None``: all)."""
    max_new_tokens: int = Field(128, ge=1)
    """Greedy decoding budget per row."""
    batch_size: int = Field(8, ge=1)
    """Rows per generation / eval-loss batch on each worker."""
    constrained: bool = True
    """Grammar-constrained decoding, as ``giellm score`` uses (needs a ``text`` column in
    ``data.eval``). ZeRO-3 generates with plain ``model.generate`` and is never constrained."""

    @field_validator("metrics", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML reads a bare on/off (``--set eval.metrics=on``) as a boolean.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class LoraConfig(StrictModel):
    """LoRA (or QLoRA) adapters instead of full fine-tuning: the base is frozen, only low-rank
    ``B @ A`` updates of ``target_modules`` train, under the same Ray Train + DeepSpeed loop.

    Memory at 13B (llm-jp-13b: 40 layers, width 5120), r 16 on the attention projections: the
    adapter is 40 x 2 x 16 x (5120 + 15360) = 26 M params (c_attn) + 40 x 2 x 16 x 10240 = 13 M
    (c_proj), ~39 M: its fp32 master + Adam m, v are 16 B x 39 M = 0.6 GB, against 208 GB for
    full fine-tuning. What remains is the frozen bf16 base (26 GB; 4-bit: ~7 GB) plus activations,
    so one GPU holds the run (see ``configs/train/giellm-13b-jp-lora.yaml``)."""

    r: int = Field(16, ge=1)
    """Adapter rank."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator: updates are scaled by ``alpha / r``."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the adapter's input."""
    target_modules: list[str] | Literal["all-linear"] | None = None
    """Module names to adapt (e.g. ``[q_proj, v_proj]``; ``all-linear``: every linear layer but
    the output head); ``None``: PEFT's default for the architecture (Llama ``q_proj, v_proj``,
    GPT-2 ``c_attn``)."""
    quantize: Literal["none", "4bit"] = "none"
    """``4bit``: QLoRA, the frozen base loaded in 4-bit NF4 with bitsandbytes (CUDA only; ZeRO-2;
    the ``gpu`` extra installs bitsandbytes)."""


class ExportConfig(StrictModel):
    """The final export (``export: true|false`` is still accepted and means ``enabled``)."""

    enabled: bool = True
    """Write the final model (full fine-tuning: a Hugging Face model in ``<run>/export``; LoRA:
    the adapter in ``<run>/export/adapter``)."""
    merge: bool = False
    """LoRA only: also write the base with the adapter merged in, a plain Hugging Face model in
    ``<run>/export/merged`` (built on rank 0 from the gathered adapter and the base on disk:
    PEFT cannot merge under DeepSpeed)."""


class FaultInjection(StrictModel):
    """Test hook: one worker fails once at a given step so recovery can be tested."""

    fail_at_step: int
    """Global optimizer step after which the worker fails."""
    mode: Literal["raise", "kill_after_checkpoint"] = "raise"
    """``raise``: an exception after the step. ``kill_after_checkpoint``: SIGKILL once the
    checkpoint taken at ``fail_at_step`` is fully in storage but before Ray registers it."""
    marker: str
    """File created when the failure fires; while it exists the hook stays quiet."""
    rank: int = 1
    """Which worker fails."""


class TrainConfig(StrictModel):
    """A full fine-tuning run on Ray Train with DeepSpeed."""

    model: ModelConfig = ModelConfig()
    """Base model to fine-tune (``tiny`` builds the tiny preset from the corpus)."""
    tiny: TinyConfig = TinyConfig()
    """Shape of the tiny model when ``model.name_or_path`` is ``tiny``."""
    data: DataConfig = DataConfig()
    """Training / eval data and tokenization policy."""
    tasks: str | None = None
    """A ``tasks.json`` (the task inventory, e.g. TCREE's labels learned from the data by
    ``giellm data mix`` / ``giellm data authors``) that end-of-epoch evaluation prompts, constrains
    and counts with, as ``giellm score`` does; ``None``: the default registry."""
    eval: EvalConfig = EvalConfig()
    """End-of-epoch evaluation."""
    run_name: str = "giellm-sft"
    """Run directory name under ``storage_path``; checkpoints and the export go there."""
    storage_path: str = Field(
        default_factory=lambda: (
            os.environ["GIELLM_STORAGE"].rstrip("/") + "/runs"
            if os.environ.get("GIELLM_STORAGE")
            else "./runs"
        )
    )
    """Where checkpoints and the exported model go: a local path or ``s3://bucket/prefix``.
    Default: ``$GIELLM_STORAGE/runs`` when ``GIELLM_STORAGE`` is set (``cluster.yaml`` sets it on
    every node to the root of a cluster's outputs: ``runs/``, scored Parquet, reports), else
    ``./runs``. A value in the YAML or ``--set`` wins over the environment."""
    epochs: int = Field(3, ge=1)
    """Passes over the training data."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (smoke tests, rehearsals); ``None``: all epochs.
    The LR schedule is laid out over the steps actually taken."""
    lr: float = Field(1e-5, gt=0)
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    per_device_batch_size: int = Field(1, ge=1)
    """Micro-batch per worker."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    """Share of optimizer steps spent warming the learning rate up from 0."""
    scheduler: Literal["warmup_decay", "warmup_cosine", "constant"] = "warmup_decay"
    """LR schedule after warmup: linear decay to 0, cosine, or constant."""
    grad_clip: float = 1.0
    """Gradient norm clipping (0 disables)."""
    zero_stage: Literal[2, 3] = 2
    """DeepSpeed ZeRO stage: 2 shards optimizer state + grads, 3 also the parameters. 2 is the
    default: 13B fits 8 x 80 GB at ~59 GB/GPU and it moves 45.5 GB/GPU per step against ZeRO-3's
    68 (all-gathers in forward and backward); 3 is for what does not fit (see the 13B config)."""
    cpu_offload: bool = False
    """Offload optimizer state (and parameters at stage 3) to CPU memory."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 on GPU, fp32 on CPU (DeepSpeed has no fp16 on CPU)."""
    activation_checkpointing: bool = False
    """Recompute activations in backward (HF ``gradient_checkpointing_enable``)."""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers (one per GPU on GPU)."""
    use_gpu: bool = False
    """Put each worker on a GPU."""
    resources_per_worker: dict[str, float] = {}
    """Extra Ray resources per worker, e.g. ``{CPU: 8}``; empty uses Ray's default (1 CPU/GPU)."""
    checkpoint_every_steps: int | None = None
    """Also checkpoint every N optimizer steps. ``None`` (default): only at epoch ends, since a
    13B checkpoint is 156-182 GB (see ``giellm_ray.train.reporting``)."""
    checkpoint_upload_mode: Literal["async", "sync"] = "async"
    """``async``: training continues while Ray uploads the staged checkpoint in the background;
    ``sync``: wait for the upload at each checkpoint."""
    checkpoint_staging_dir: str = "auto"
    """Node-local directory where checkpoints are written before upload and staged on resume.
    ``auto``: the instance-store NVMe (``/mnt/nvme`` in cluster.yaml's container, else
    ``/opt/dlami/nvme``) when mounted (p4de: 8 x 1 TB),
    else the system temp dir."""
    keep_checkpoints: int = Field(2, ge=1)
    """Keep the last K checkpoints in storage (the final, weights-only one counts)."""
    max_failures: int = 2
    """Worker-group restarts from the last checkpoint before the run fails (-1: unlimited)."""
    resume_from: str | None = None
    """A checkpoint directory (local or ``s3://``) to start from, e.g. an earlier run's last.
    Must lie under ``storage_path`` unless ``trust_checkpoint`` is set."""
    trust_checkpoint: bool = False
    """Allow ``resume_from`` outside ``storage_path``. Resuming unpickles the checkpoint
    (``torch.load(weights_only=False)``), which runs any code it carries."""
    log_every_steps: int = Field(10, ge=1)
    """Log loss, learning rate and tokens/s on rank 0 every N optimizer steps."""
    lora: LoraConfig | None = None
    """LoRA / QLoRA adapters (``None``: full fine-tuning). Checkpoints then hold the adapter and
    its optimizer state only."""
    export: ExportConfig = ExportConfig()
    """The final export: a Hugging Face model (safetensors, tokenizer, config) or, with LoRA, a
    PEFT adapter directory (plus the merged model with ``export.merge``)."""
    fault_injection: FaultInjection | None = None
    """Tests only: make one worker fail once mid-training."""

    @field_validator("export", mode="before")
    @classmethod
    def _export_bool(cls, value):
        # ``export: true|false`` (the older spelling) is ``export.enabled``.
        return {"enabled": value} if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _qlora_needs_cuda(self):
        if self.lora is not None and self.lora.quantize == "4bit":
            if not self.use_gpu:
                raise ValueError(
                    "lora.quantize: 4bit (QLoRA) needs CUDA: set use_gpu: true "
                    "(bitsandbytes has no 4-bit training on CPU)"
                )
            if self.zero_stage == 3:
                raise ValueError(
                    "lora.quantize: 4bit runs at zero_stage 2 (a 4-bit base is not "
                    "partitioned by ZeRO-3 here)"
                )
        if self.export.merge and self.lora is None:
            raise ValueError("export.merge merges a LoRA adapter: it needs lora")
        return self

    def resolved_precision(self) -> str:
        """``bf16`` or ``fp32`` after resolving ``auto``."""
        if self.precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.precision

    def generation_eval(self, eval_rows: int) -> bool:
        """Whether end-of-epoch evaluation generates (see ``EvalConfig.metrics``)."""
        if not eval_rows or self.eval.metrics == "off":
            return False
        if self.eval.metrics == "on":
            return True
        return self.zero_stage < 3 and eval_rows <= self.eval.auto_max_rows

    def run_dir(self) -> str:
        """``storage_path/run_name``."""
        return self.storage_path.rstrip("/") + "/" + self.run_name


class WorkerConfig(StrictModel):
    """What the driver hands every training worker (``train_loop_config["worker"]``): the run's
    config plus what the driver resolved for it. One typed object, pickled by Ray as it is."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, arbitrary_types_allowed=True
    )

    train: TrainConfig
    """The run's config."""
    model_path: str
    """The base model the workers load (``tiny`` already built into the run directory)."""
    export_dir: str
    """Where rank 0 writes the final Hugging Face export (``<run>/export``)."""
    resume_from: Any = None
    """``TrainConfig.resume_from`` as one ``ray.train.Checkpoint`` the driver built and checked
    (``None``: none); the same object goes to every worker."""
    has_eval: bool = False
    """Whether ``data.eval`` has rows (an ``eval`` dataset shard exists)."""
    eval_metrics: bool = False
    """Whether end-of-epoch evaluation generates (``TrainConfig.generation_eval``)."""
    eval_max_rows_per_rank: int = 0
    """Rows each worker generates for at most (``eval.max_rows`` split over the workers)."""
    tasks: dict | None = None
    """The task registry of ``TrainConfig.tasks`` (``TaskRegistry.to_dict``; ``None``: the
    default registry), read once by the driver."""

    def registry(self):
        """The :class:`~giellm_ray.formats.TaskRegistry` evaluation uses."""
        from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry

        return TaskRegistry.from_dict(self.tasks) if self.tasks else DEFAULT_REGISTRY
