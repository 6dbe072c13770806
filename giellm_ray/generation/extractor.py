"""Row-level extraction: prompt → generation → parse → grounded items, shared by scoring and serving.

An :class:`Extractor` turns dicts with ``text``, ``dataset`` (and optionally ``prompt`` and a
per-row ``max_new_tokens`` cap and ``adapter``) into dicts with the scored columns of
``giellm_ray.schema.SCORED_FIELDS``, the same whichever engine generates: prompts, the length
check, parsing, grounding and every error message live here; the engine only fills token budgets
(:func:`giellm_ray.generation.build.build_extractor` builds it on ``hf`` or ``vllm`` from a
config). A row that cannot be scored (null/empty text, unknown
dataset, a bad ``max_new_tokens``, a text the tokenizer refuses, a prompt the model cannot hold,
an engine error, an exception in one row's step, an ``adapter`` the engine does not hold)
gets its reason in ``error``; nothing raises for a bad row and no row's failure lands on
another. ``constrained=True`` (the default) decodes each row under its task's format
constraint. With ``GenerationConfig.scores`` (the default) each item gets a ``score`` and the
row a ``tl_score`` (``giellm_ray.generation.confidence``). ``extract(rows)`` is synchronous
with either engine;
``await extract_async(rows)`` hands a server's rows to vLLM as they come (continuous batching).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Mapping

from giellm_ray import schema as S
from giellm_ray.formats import (
    DEFAULT_REGISTRY,
    TaskRegistry,
    build_prompt,
    ground_items,
    parse,
    parse_cut,
)
from giellm_ray.generation.adapters import adapter_problem
from giellm_ray.generation.base import (
    ContinuousEngine,
    Engine,
    EngineStats,
    GenerationRequest,
    GenerationResult,
)
from giellm_ray.generation.confidence import score_output
from giellm_ray.generation.config import GenerationConfig

log = logging.getLogger(__name__)
UNTOKENIZABLE = "text cannot be tokenized (it holds characters the tokenizer refuses)"
TRUNCATED = "output truncated at max_new_tokens"


def _internal(row: int, step: str, exc: Exception) -> str:
    """Log an unexpected exception on one row; the row's error (internal text, see
    ``generation.base.PUBLIC_ROW_ERRORS``)."""
    log.warning("row %d failed while %s", row, step, exc_info=exc)
    return f"internal error while {step}: {type(exc).__name__}: {exc}"


def empty_output(error: str | None) -> dict:
    """The scored columns of a row that was not generated."""
    return S.empty_scored(error)


def prepare_row(
    row: Mapping, registry: TaskRegistry, cap_all: int | None
) -> tuple[str, object, str, int] | str:
    """``(prompt, task, text, budget)`` for a row that can be generated, else the error."""
    dataset = row.get(S.DATASET)
    if dataset is None or dataset not in registry:
        return f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(registry))}"
    task = registry[dataset]
    cap = row.get(S.MAX_NEW_TOKENS)
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        return f"max_new_tokens must be a positive integer, got {cap!r}"
    # The task's bound, the engine-wide cap and the row's own cap.
    budget = min(c for c in (task.max_new_tokens, cap_all, cap) if c is not None)
    text = row.get(S.TEXT)
    prompt = row.get(S.PROMPT)
    if isinstance(prompt, str) and prompt:
        return prompt, task, text if isinstance(text, str) else "", budget
    if text is None:
        return "text is null"
    if not isinstance(text, str) or not text.strip():
        return "text is empty"
    return build_prompt(text, task), task, text, budget


def finish_row(res: GenerationResult, task, text: str, tokenizer=None) -> dict:
    """The scored columns of a generated row; with the engine's token log-probabilities (and
    the ``tokenizer`` that spells them), each item's ``score`` and the row's ``tl_score``."""
    if res.error:
        return empty_output(res.error)
    # A row the budget cut (no EOS: vLLM's grammars have no budget, see docs/decisions) keeps
    # the items it wrote in full and says it was cut; its last, maybe shortened, item is dropped.
    parsed = parse(res.text, task) if res.finished else parse_cut(res.text, task)
    error = None if parsed.ok else f"parse: {parsed.error}"
    if parsed.ok and not res.finished:
        error = TRUNCATED
    items = ground_items(text, parsed.items)
    tl_score, item_scores = None, [None] * len(items)
    if tokenizer is not None and res.token_logprobs is not None:
        try:
            tl_score, item_scores = score_output(
                tokenizer,
                res.token_ids,
                res.token_logprobs,
                res.text,
                parsed.tl_label,
                parsed.items,
                task,
            )
        except Exception:  # a score is an extra: its failure leaves it null, never the row
            log.warning("could not score a row's output", exc_info=True)
    for it, score in zip(items, item_scores, strict=True):
        it[S.SCORE] = score
    return {
        S.PREDICTION: res.text,
        S.PRED_TL_LABEL: parsed.tl_label,
        S.PRED_ITEMS: items,
        S.ERROR: error,
        S.NUM_GENERATED_TOKENS: res.num_generated_tokens,
        S.TL_SCORE: tl_score,
    }


class Extractor:
    """Extracts rows in batches on one engine; never raises for a bad row.

    ``Extractor(engine, tokenizer, registry, gen_cfg, constrain)``: ``engine`` speaks
    :class:`~giellm_ray.generation.base.Engine` (batch: the HF loop) or
    :class:`~giellm_ray.generation.base.ContinuousEngine` (vLLM: rows join its running batch);
    ``constrain(text, task, budget)`` makes a row's constraint in the form the engine takes
    (``None``: unconstrained). :mod:`giellm_ray.generation.build` builds one from a config.
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        registry: TaskRegistry = DEFAULT_REGISTRY,
        gen_cfg: GenerationConfig | None = None,
        constrain: Callable | None = None,
    ) -> None:
        self.engine, self.tokenizer, self.registry = engine, tokenizer, registry
        self.gen_cfg = gen_cfg or GenerationConfig()
        self.max_positions = engine.max_positions
        self._constrain = constrain
        self.constrained = constrain is not None
        # The LoRA adapters a row may name (``generation.adapters``); none on a plain engine.
        self.adapters = tuple(getattr(engine, "adapter_names", ()))
        # An engine that batches continuously across calls (vLLM) runs extraction on its loop.
        self.continuous = isinstance(engine, ContinuousEngine)
        # The model, tokenizer and constraint tables are ~400k long-lived objects; a full GC pass
        # over them costs ~0.25 s and ran in most scoring batches. Move them out of GC tracking.
        gc.collect()
        gc.freeze()

    @property
    def stats(self) -> EngineStats:
        """The engine's counters since it was built (or reset)."""
        return self.engine.stats

    @property
    def in_flight(self) -> int:
        """Rows the engine holds now (a continuous engine; the batch engine holds none between
        calls)."""
        return self.engine.in_flight if self.continuous else 0

    # -- the row contract around the engine ------------------------------------------------------

    def _plan(self, rows: list[Mapping]) -> tuple[list, list[tuple]]:
        """Per row: its final output where it will not be generated, and the rows that will be
        (``(index, prompt, task, text, budget, prompt_ids, adapter)``)."""
        outputs: list[dict | None] = [None] * len(rows)
        todo: list[tuple] = []
        for i, row in enumerate(rows):
            try:
                prepared = adapter_problem(row.get(S.ADAPTER), self.adapters) or prepare_row(
                    row, self.registry, self.gen_cfg.max_new_tokens
                )
            except Exception as exc:  # a hostile value fails its own row only
                prepared = _internal(i, "preparing the prompt", exc)
            if isinstance(prepared, str):
                outputs[i] = empty_output(prepared)
            else:
                todo.append((i, *prepared, row.get(S.ADAPTER)))
        ready = []
        for (i, prompt, task, text, budget, adapter), ids in zip(
            todo, self._prompt_ids([t[1] for t in todo]), strict=True
        ):
            if ids is None:
                outputs[i] = empty_output(UNTOKENIZABLE)
            elif len(ids) > self.max_positions - budget:
                outputs[i] = empty_output(
                    f"prompt too long: {len(ids)} tokens; the model takes {self.max_positions} "
                    f"positions, {budget} kept for the output"
                )
            else:
                ready.append((i, prompt, task, text, budget, ids, adapter))
        return outputs, ready

    def _prompt_ids(self, prompts: list[str]) -> list[list[int] | None]:
        """Token ids of each prompt; ``None`` for one the tokenizer refuses."""
        if not prompts:
            return []
        try:
            return list(self.tokenizer(prompts, add_special_tokens=True)["input_ids"])
        except Exception:
            # One bad prompt (e.g. an unpaired surrogate) fails the whole call: find which.
            return [self._one_prompt_ids(p) for p in prompts]

    def _one_prompt_ids(self, prompt: str) -> list[int] | None:
        try:
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        except Exception as exc:
            log.warning("a prompt cannot be tokenized: %s: %s", type(exc).__name__, exc)
            return None

    def _request(
        self, prompt: str, task, text: str, budget: int, ids, adapter: str | None = None
    ) -> GenerationRequest:
        # The constraint closes the output in time when it knows the engine's token budget.
        constraint = self._constrain(text, task, budget) if self._constrain else None
        return GenerationRequest(
            prompt, budget, constraint, ids, scores=self.gen_cfg.scores, adapter=adapter
        )

    def _requests(self, ready: list[tuple]) -> tuple[list, dict[int, GenerationRequest]]:
        results: list[GenerationResult | None] = [None] * len(ready)
        requests: dict[int, GenerationRequest] = {}
        for k, r in enumerate(ready):
            try:
                requests[k] = self._request(*r[1:])
            except Exception as exc:
                results[k] = GenerationResult(
                    "", 0, False, _internal(r[0], "building its constraint", exc)
                )
        return results, requests

    def _finish(
        self, outputs: list, ready: list[tuple], results: list[GenerationResult]
    ) -> list[dict]:
        for (i, _, task, text, *_), res in zip(ready, results, strict=True):
            try:
                outputs[i] = finish_row(res, task, text, self.tokenizer)
            except Exception as exc:
                outputs[i] = empty_output(_internal(i, "parsing the output", exc))
        return outputs

    # -- synchronous engines (HF) ----------------------------------------------------------------

    def extract(self, rows: list[Mapping]) -> list[dict]:
        """Scored columns for each row, in order (``error`` set where a row could not be scored).

        Every step runs so that one row's failure stays that row's ``error``: a tokenizer, engine
        or parser exception on one row never reaches the other rows of the batch.
        """
        if self.continuous:
            return self.engine.call(self._extract_on_engine(rows))
        outputs, ready = self._plan(rows)
        return self._finish(outputs, ready, self._generate(ready))

    def _generate(self, ready: list[tuple]) -> list[GenerationResult]:
        results, requests = self._requests(ready)
        for k, res in zip(requests, self._engine_generate(list(requests.values())), strict=True):
            results[k] = res
        if self._constrain is not None:
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
                return [
                    GenerationResult("", 0, False, f"engine error: {type(exc).__name__}: {exc}")
                ]
            log.exception("engine raised on a batch of %d; retrying each row alone", len(requests))
            return [self._engine_generate([r])[0] for r in requests]

    # -- continuous engines (vLLM) ---------------------------------------------------------------

    async def extract_async(self, rows: list[Mapping]) -> list[dict]:
        """:meth:`extract` for an event loop: a continuous engine takes the rows at once (they
        join its running batch); the HF engine runs in a worker thread."""
        if not self.continuous:
            return await asyncio.to_thread(self.extract, rows)
        return await self.engine.run_async(self._extract_on_engine(rows))

    async def _extract_on_engine(self, rows: list[Mapping]) -> list[dict]:
        """Runs on the engine's event loop (one thread: the tokenizer is never used concurrently)."""
        outputs, ready = self._plan(rows)
        results, requests = self._requests(ready)
        try:
            done = await self.engine.generate_async(list(requests.values()))
        except Exception as exc:  # the engine promises not to raise; if it does, rows say why
            log.exception("engine raised on %d rows", len(requests))
            done = [
                GenerationResult("", 0, False, f"engine error: {type(exc).__name__}: {exc}")
            ] * len(requests)
        for k, res in zip(requests, done, strict=True):
            results[k] = res
        return self._finish(outputs, ready, results)

    @property
    def dead(self) -> str | None:
        """Why the engine can no longer generate (a dead vLLM engine core), else ``None``."""
        return self.engine.dead if self.continuous else None

    def exit_if_dead(self, owner: str) -> None:
        """If the engine is dead (a vLLM engine core that died cannot come back), end its
        processes and this one (exit code 1) so Ray restarts ``owner`` (an actor or a replica)
        and retries its calls elsewhere; raising would retry them on this same dead engine."""
        if not self.dead:
            return
        import os

        log.error(
            "%s: the engine is dead (%s); exiting so Ray restarts this process", owner, self.dead
        )
        self.engine.kill_processes()
        os._exit(1)

    def check_health(self) -> None:
        """Raise if the engine cannot generate any more (Serve then replaces the replica)."""
        if self.continuous:
            self.engine.check_health()

    def shutdown(self) -> None:
        """Stop the engine's processes (a continuous engine has some; the HF one runs here)."""
        if self.continuous:
            self.engine.shutdown()
