"""Build the :class:`~giellm_ray.generation.extractor.Extractor` a score or serve config asks for.

``build_extractor(cfg.engine, cfg.model, cfg.generation, cfg.vllm, registry, cfg.constrained)``:
``hf`` (:func:`hf_extractor`) loads the Hugging Face model and runs our loop over it, with the
live format automaton per row; ``vllm`` (:func:`vllm_extractor`) starts a
:class:`~giellm_ray.generation.vllm_engine.VLLMEngine`, fed
:class:`~giellm_ray.generation.base.ConstraintSpec` rows that it turns into per-row llguidance
grammars (vLLM's structured outputs). vLLM is imported only for ``vllm``, so the HF path runs
where vLLM is not installed. ``adapters`` (``{name: dir or s3://}``, LoRA): ``hf`` runs
:class:`~giellm_ray.generation.adapters.PeftAdapterEngine` (PEFT, rows grouped by adapter),
``vllm`` a ``LoRARequest`` per row. Every Extractor in the project is built here.
"""

from __future__ import annotations

from collections.abc import Mapping

from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.generation.base import ConstraintSpec
from giellm_ray.generation.config import GenerationConfig, VLLMConfig
from giellm_ray.generation.extractor import Extractor
from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer


def constraint_spec(text: str, task, budget: int) -> ConstraintSpec:
    """A row's constraint for vLLM (the engine writes its grammar; the budget goes in as the
    row's ``max_tokens``)."""
    return ConstraintSpec(text, task)


def hf_extractor(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    constrained: bool = True,
    device: str | None = None,
    model=None,
    tokenizer=None,
    adapters: Mapping[str, str] | None = None,
) -> Extractor:
    """The Extractor on our HF engine; ``model`` / ``tokenizer``: already loaded ones (training
    evaluation, tests), else loaded from ``model_cfg`` (``device`` ``None``: CUDA if any);
    ``adapters``: LoRA adapters held in one PEFT model, rows grouped by adapter."""
    from giellm_ray.decoding import build_constraint_factory

    gen_cfg = gen_cfg or GenerationConfig()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_cfg)
    model = model if model is not None else load_model(model_cfg, device)
    factory = build_constraint_factory(tokenizer, registry) if constrained else None
    if adapters:
        from giellm_ray.generation.adapters import PeftAdapterEngine, localize_adapters

        engine = PeftAdapterEngine(model, tokenizer, gen_cfg, localize_adapters(adapters))
    else:
        from giellm_ray.generation.hf import HFEngine

        engine = HFEngine(model, tokenizer, gen_cfg)
    return Extractor(
        engine, tokenizer, registry, gen_cfg, factory.for_row if factory is not None else None
    )


def vllm_extractor(
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig | None = None,
    vllm_cfg: VLLMConfig | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    constrained: bool = True,
    device: str | None = None,
    adapters: Mapping[str, str] | None = None,
) -> Extractor:
    """The Extractor on a new vLLM engine (``device`` ``None``: CUDA if any; ``adapters``: LoRA
    adapters it holds, one ``LoRARequest`` per row)."""
    from giellm_ray.generation.vllm_engine import VLLMEngine

    on_gpu = None if device is None else device != "cpu"
    eng = VLLMEngine(
        model_cfg,
        vllm_cfg or VLLMConfig(),
        on_gpu=on_gpu,
        constrained=constrained,
        adapters=adapters,
    )
    return Extractor(
        eng,
        eng.tokenizer,
        registry,
        gen_cfg or GenerationConfig(),
        constraint_spec if constrained else None,
    )


def build_extractor(
    engine: str,
    model_cfg: ModelConfig,
    gen_cfg: GenerationConfig,
    vllm_cfg: VLLMConfig | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    constrained: bool = True,
    device: str | None = None,
    adapters: Mapping[str, str] | None = None,
) -> Extractor:
    """The Extractor on ``engine`` (``hf`` or ``vllm``); ``device``: ``cpu``/``cuda``, ``None``:
    CUDA when there is one."""
    if engine == "hf":
        return hf_extractor(model_cfg, gen_cfg, registry, constrained, device, adapters=adapters)
    if engine != "vllm":
        raise ValueError(f"unknown engine {engine!r}: hf or vllm")
    return vllm_extractor(model_cfg, gen_cfg, vllm_cfg, registry, constrained, device, adapters)
