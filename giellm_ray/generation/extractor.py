"""Row-level extraction: prompt → generation → parse → grounded items, shared by scoring and serving.

``Extractor(model_cfg, gen_cfg, registry)`` loads the model and tokenizer once (in a Ray Data actor
or a Serve replica) and ``extract(rows)`` turns dicts with ``text``, ``dataset`` (and optionally
``prompt`` and a per-row ``max_new_tokens`` cap) into dicts with the scored columns of
``giellm_ray.schema.SCORED_FIELDS``. A row that cannot be scored (null/empty text, unknown
dataset, a bad ``max_new_tokens``, a text the tokenizer refuses, a prompt the model cannot hold,
an engine error, any exception in one row's step) gets its reason in ``error``; nothing raises for
a bad row and no row's failure lands on another row of the batch. With ``constrained=True`` (the
default) each row decodes under a constraint from
``giellm_ray.decoding.build_constraint_factory`` so outputs stay inside the task's format.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping

from giellm_ray import schema as S
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, build_prompt, ground_items, parse
from giellm_ray.generation.base import GenerationRequest, GenerationResult
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.generation.hf import HFEngine
from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

log = logging.getLogger(__name__)


def model_max_positions(model, tokenizer) -> int:
    """The longest sequence (prompt + output) the model accepts, in tokens."""
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(getattr(tokenizer, "model_max_length", 2048) or 2048)


UNTOKENIZABLE = "text cannot be tokenized (it holds characters the tokenizer refuses)"


def _internal(row: int, step: str, exc: Exception) -> str:
    """Log an unexpected exception on one row; the row's error (internal text, see
    ``generation.base.PUBLIC_ROW_ERRORS``)."""
    log.warning("row %d failed while %s", row, step, exc_info=exc)
    return f"internal error while {step}: {type(exc).__name__}: {exc}"


def empty_output(error: str | None) -> dict:
    """The scored columns of a row that was not generated."""
    return S.empty_scored(error)


class Extractor:
    """Loads a model once and extracts rows in batches; never raises for a bad row."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        gen_cfg: GenerationConfig | None = None,
        registry: TaskRegistry = DEFAULT_REGISTRY,
        constrained: bool = True,
        device: str | None = None,
        model=None,
        tokenizer=None,
    ) -> None:
        self.registry = registry
        self.gen_cfg = gen_cfg or GenerationConfig()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_cfg)
        self.model = model if model is not None else load_model(model_cfg, device)
        self.engine = HFEngine(self.model, self.tokenizer, self.gen_cfg)
        self.max_positions = model_max_positions(self.model, self.tokenizer)
        self.constraint_factory = self._build_constraint_factory() if constrained else None
        self.constrained = self.constraint_factory is not None
        # The model, tokenizer and constraint tables are ~400k long-lived objects; a full GC pass
        # over them costs ~0.25 s and ran in most scoring batches. Move them out of GC tracking.
        gc.collect()
        gc.freeze()

    def _build_constraint_factory(self):
        try:
            from giellm_ray.decoding import build_constraint_factory
        except ImportError:
            log.warning("giellm_ray.decoding.build_constraint_factory is not available; "
                        "decoding unconstrained")
            return None
        return build_constraint_factory(self.tokenizer, self.registry)

    def _budget(self, task, row_cap: int | None = None) -> int:
        """Tokens this row may generate: the task's bound, the engine cap and the row's cap."""
        caps = [task.max_new_tokens, self.gen_cfg.max_new_tokens, row_cap]
        return min(c for c in caps if c is not None)

    def _prepare(self, row: Mapping) -> tuple[str, object, str, int] | str:
        """``(prompt, task, text, budget)`` for a row that can be generated, else the error."""
        dataset = row.get(S.DATASET)
        if dataset is None or dataset not in self.registry:
            return f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(self.registry))}"
        task = self.registry[dataset]
        cap = row.get(S.MAX_NEW_TOKENS)
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            return f"max_new_tokens must be a positive integer, got {cap!r}"
        budget = self._budget(task, cap)
        text = row.get(S.TEXT)
        prompt = row.get(S.PROMPT)
        if isinstance(prompt, str) and prompt:
            return prompt, task, text if isinstance(text, str) else "", budget
        if text is None:
            return "text is null"
        if not isinstance(text, str) or not text.strip():
            return "text is empty"
        return build_prompt(text, task), task, text, budget

    def extract(self, rows: list[Mapping]) -> list[dict]:
        """Scored columns for each row, in order (``error`` set where a row could not be scored).

        Every step runs so that one row's failure stays that row's ``error``: a tokenizer, engine
        or parser exception on one row never reaches the other rows of the batch.
        """
        outputs: list[dict | None] = [None] * len(rows)
        todo: list[tuple[int, str, object, str, int]] = []
        for i, row in enumerate(rows):
            try:
                prepared = self._prepare(row)
            except Exception as exc:  # a hostile value fails its own row only
                prepared = _internal(i, "preparing the prompt", exc)
            if isinstance(prepared, str):
                outputs[i] = empty_output(prepared)
            else:
                todo.append((i, *prepared))
        ready = []
        for (i, prompt, task, text, budget), n in zip(
                todo, self._prompt_lengths([t[1] for t in todo]), strict=True):
            if n is None:
                outputs[i] = empty_output(UNTOKENIZABLE)
            elif n > self.max_positions - budget:
                outputs[i] = empty_output(
                    f"prompt too long: {n} tokens; the model takes {self.max_positions} "
                    f"positions, {budget} kept for the output")
            else:
                ready.append((i, prompt, task, text, budget))
        for (i, _, task, text, _), res in zip(ready, self._generate(ready), strict=True):
            try:
                outputs[i] = self._finish_row(res, task, text)
            except Exception as exc:
                outputs[i] = empty_output(_internal(i, "parsing the output", exc))
        return outputs  # type: ignore[return-value]

    def _prompt_lengths(self, prompts: list[str]) -> list[int | None]:
        """Token count of each prompt; ``None`` for one the tokenizer refuses."""
        if not prompts:
            return []
        try:
            ids = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
            return [len(x) for x in ids]
        except Exception:
            # One bad prompt (e.g. an unpaired surrogate) fails the whole call: find which.
            return [self._prompt_length(p) for p in prompts]

    def _prompt_length(self, prompt: str) -> int | None:
        try:
            return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        except Exception as exc:
            log.warning("a prompt cannot be tokenized: %s: %s", type(exc).__name__, exc)
            return None

    def _request(self, prompt: str, task, text: str, budget: int) -> GenerationRequest:
        # The constraint closes the output in time when it knows the engine's token budget.
        constraint = (self.constraint_factory.for_row(text, task, budget)
                      if self.constraint_factory else None)
        return GenerationRequest(prompt, budget, constraint)

    def _generate(self, ready: list[tuple]) -> list[GenerationResult]:
        results: list[GenerationResult | None] = [None] * len(ready)
        requests: dict[int, GenerationRequest] = {}
        for k, r in enumerate(ready):
            try:
                requests[k] = self._request(*r[1:])
            except Exception as exc:
                results[k] = GenerationResult("", 0, False, _internal(r[0], "building its "
                                                                      "constraint", exc))
        for k, res in zip(requests, self._engine_generate(list(requests.values())), strict=True):
            results[k] = res
        if self.constraint_factory is not None:
            # A constrained row caught in a failing batch is retried alone with a fresh constraint.
            for k in requests:
                if results[k].error and results[k].error.startswith("engine error"):
                    results[k] = self._engine_generate([self._request(*ready[k][1:])])[0]
        return results  # type: ignore[return-value]

    def _engine_generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """The engine's results; an engine that raises (it should not) is retried row by row."""
        if not requests:
            return []
        try:
            return self.engine.generate(requests)
        except Exception as exc:
            if len(requests) == 1:
                log.exception("engine raised on one row")
                return [GenerationResult("", 0, False,
                                         f"engine error: {type(exc).__name__}: {exc}")]
            log.exception("engine raised on a batch of %d; retrying each row alone", len(requests))
            return [self._engine_generate([r])[0] for r in requests]

    @staticmethod
    def _finish_row(res: GenerationResult, task, text: str) -> dict:
        if res.error:
            return empty_output(res.error)
        parsed = parse(res.text, task)
        error = None if parsed.ok else f"parse: {parsed.error}"
        if parsed.ok and not res.finished:
            error = "output truncated at max_new_tokens"
        return {
            S.PREDICTION: res.text,
            S.PRED_TL_LABEL: parsed.tl_label,
            S.PRED_ITEMS: ground_items(text, parsed.items),
            S.ERROR: error,
            S.NUM_GENERATED_TOKENS: res.num_generated_tokens,
        }
