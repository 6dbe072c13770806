"""Build the :class:`~giellm_ray.generation.extractor.Extractor` a score or serve config asks for.

``build_extractor(cfg.engine, cfg.model, cfg.generation, cfg.vllm, registry, cfg.constrained)``:
``hf`` loads the Hugging Face model and runs our loop over it (the live format automaton per row);
``vllm`` starts a :class:`~giellm_ray.generation.vllm_engine.VLLMEngine` (the same automaton, in
its logits processor, fed :class:`~giellm_ray.generation.base.ConstraintSpec` rows). vLLM is
imported only for ``vllm``, so the HF path runs where vLLM is not installed. ``adapters``
(``{name: dir or s3://}``, LoRA): ``hf`` runs
:class:`~giellm_ray.generation.adapters.PeftAdapterEngine` (PEFT, rows grouped by adapter),
``vllm`` a ``LoRARequest`` per row.
"""

from __future__ import annotations

from collections.abc import Mapping

from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.generation.base import ConstraintSpec
from giellm_ray.generation.config import GenerationConfig, VLLMConfig
from giellm_ray.generation.extractor import Extractor
from giellm_ray.model.loader import ModelConfig


def constraint_spec(text: str, task, budget: int) -> ConstraintSpec:
    """A row's constraint for vLLM (its logits processor builds the automaton; the budget goes
    in as the row's ``max_tokens``)."""
    return ConstraintSpec(text, task)


def build_extractor(engine: str, model_cfg: ModelConfig, gen_cfg: GenerationConfig,
                    vllm_cfg: VLLMConfig | None = None, registry: TaskRegistry = DEFAULT_REGISTRY,
                    constrained: bool = True, device: str | None = None,
                    adapters: Mapping[str, str] | None = None) -> Extractor:
    """The Extractor on ``engine`` (``hf`` or ``vllm``); ``device``: ``cpu``/``cuda``, ``None``:
    CUDA when there is one."""
    if engine == "hf" and adapters:
        from giellm_ray.generation.adapters import build_hf_adapter_extractor

        return build_hf_adapter_extractor(model_cfg, gen_cfg, registry, constrained, device,
                                          adapters)
    if engine == "hf":
        return Extractor(model_cfg, gen_cfg, registry, constrained, device)
    if engine != "vllm":
        raise ValueError(f"unknown engine {engine!r}: hf or vllm")
    from giellm_ray.generation.vllm_engine import VLLMEngine

    on_gpu = None if device is None else device != "cpu"
    eng = VLLMEngine(model_cfg, vllm_cfg or VLLMConfig(), on_gpu=on_gpu, constrained=constrained,
                     adapters=adapters)
    return Extractor.with_engine(eng, eng.tokenizer, registry, gen_cfg, eng.max_positions,
                                 constraint_spec if constrained else None)
