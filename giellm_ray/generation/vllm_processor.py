"""GIELLM's format constraint as a vLLM v1 logits processor (vLLM 0.29, V1 model runner).

:class:`~giellm_ray.generation.vllm_engine.VLLMEngine` registers :class:`FormatLogitsProcessor`
with its engine and marks each constrained row through its sampling parameters
(``SamplingParams(extra_args=constraint_extra_args(text, task))``); rows without the ``giellm``
key decode unconstrained. The processor lives where the model runner does (the engine-core
worker process, two processes away from the caller), so a row's arguments travel as plain data:
``text`` (where spans must come from), ``dataset`` (a ``DEFAULT_REGISTRY`` task) and, for any
other task, ``task`` (``TaskSpec.to_dict()`` as JSON). The budget is the row's ``max_tokens``.

Per step, ``apply`` reads each row's new tokens (there, not in ``update_state``: with async
scheduling the output list ends in ``-1`` placeholders until the sampler repairs it), advances the
row's automaton (the same :mod:`giellm_ray.decoding` code the HF engine drives) and masks the
logits to ``allowed_tokens()`` with :mod:`giellm_ray.generation.masks`; EOS only once the row
``is_done()``. ``update_state`` applies removed, then added, then moved rows; a preempted row
comes back with its tokens so far and a fresh automaton replays them.

Failure containment: an exception in ``apply`` kills the engine (``EngineDeadError`` for every
later call), so bad rows are refused up front by :meth:`FormatLogitsProcessor.validate_params`
(run in the caller's process: vLLM raises ``VLLMValidationError`` for that request alone), and any
per-row failure later is caught: the row writes one *failure marker* (a special token the
constraint never allows, :func:`failure_token_id`) then EOS, and the caller turns the marker into
the row's ``error`` (:func:`constraint_failed`); the batch's other rows go on.

Model Runner V2 (``VLLM_USE_V2_MODEL_RUNNER=1``; the default of vLLM >= 0.32 on GPUs) has no hook
for this processor and would drop the constraint silently: :func:`prepare_runner_env` pins V1
and :func:`check_runner` refuses an engine that did not get it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from giellm_ray.formats.tasks import DEFAULT_REGISTRY, TaskRegistry, TaskSpec
from giellm_ray.generation.masks import MaskCache, scatter_mask

log = logging.getLogger("vllm.giellm")  # under "vllm": the engine core prints it with vLLM's handler

EXTRA_KEY = "giellm"
"""The key of ``SamplingParams.extra_args`` (and ``additional_config``) that holds our data."""
CONSTRAINT_FAILED = "constraint failed: the row was stopped early (see the engine log)"


def constraint_extra_args(text: str, task: TaskSpec) -> dict:
    """``extra_args`` of one constrained row (the task as JSON unless it is a default one)."""
    default = DEFAULT_REGISTRY.get(task.name) == task
    spec = "" if default else json.dumps(task.to_dict(), ensure_ascii=False, sort_keys=True)
    return {EXTRA_KEY: {"text": text, "dataset": task.name, "task": spec}}


def failure_token_id(tokenizer) -> int | None:
    """The marker a failed row writes before EOS: a special token other than EOS (BOS, PAD, UNK,
    then any other), or ``None`` if the tokenizer has none (the row then only stops)."""
    eos = tokenizer.eos_token_id
    for tid in (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id,
                *sorted(tokenizer.all_special_ids)):
        if tid is not None and tid != eos:
            return int(tid)
    return None


def constraint_failed(token_ids, fail_id: int | None) -> bool:
    """Whether a constrained row's output carries the failure marker."""
    return fail_id is not None and fail_id in token_ids


def prepare_runner_env() -> None:
    """Pin vLLM's V1 model runner before an engine is built (see the module docstring)."""
    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")


def check_runner(vllm_config) -> None:
    """Refuse an engine whose model runner would ignore the processor."""
    if getattr(vllm_config, "use_v2_model_runner", False):
        raise RuntimeError("the GIELLM format constraint needs vLLM's V1 model runner; "
                           "unset VLLM_USE_V2_MODEL_RUNNER or set it to 0")


def task_from(dataset: Any, task: Any) -> TaskSpec:
    """A row's TaskSpec from its ``dataset`` and ``task`` arguments; ``ValueError`` says why not."""
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"giellm: 'dataset' must be a non-empty string, got {dataset!r}")
    if not task:
        if dataset not in DEFAULT_REGISTRY:
            raise ValueError(f"giellm: unknown dataset {dataset!r} and no 'task'")
        return DEFAULT_REGISTRY[dataset]
    try:
        spec = TaskRegistry.from_dict({dataset: json.loads(task)})[dataset]
    except Exception as exc:
        raise ValueError(f"giellm: bad 'task' for {dataset!r}: {type(exc).__name__}: {exc}") \
            from None
    labels = (*spec.tl_labels, *spec.wl_labels, *spec.relation_labels)
    if not spec.tl_labels or not all(isinstance(x, str) and x for x in labels):
        raise ValueError("giellm: 'task' needs a non-empty tl_labels and non-empty string labels")
    if not isinstance(spec.instruction, str) or not spec.instruction:
        raise ValueError("giellm: 'task' needs a non-empty instruction")
    return spec


def row_args(params: SamplingParams) -> dict | None:
    """The row's ``giellm`` arguments, or ``None`` for an unconstrained row."""
    extra = params.extra_args
    return extra.get(EXTRA_KEY) if extra else None


class _Row:
    """One constrained request: its automaton, its live output token list, tokens consumed."""

    __slots__ = ("constraint", "out", "seen", "failed", "marked")

    def __init__(self, constraint, out: list[int]) -> None:
        self.constraint = constraint
        self.out = out
        self.seen = 0
        self.failed = constraint is None
        self.marked = False  # the failure marker was written


class FormatLogitsProcessor(LogitsProcessor):
    """Masks each constrained row's logits to what GIELLM's format allows next."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """Refuse a row the processor could not run (the caller's process, per request)."""
        from vllm.exceptions import VLLMValidationError

        try:
            args = row_args(sampling_params)
            if args is None:
                return
            if not isinstance(args, Mapping) or not isinstance(args.get("text"), str):
                raise ValueError(f"giellm: extra_args[{EXTRA_KEY!r}] needs a string 'text'")
            task_from(args.get("dataset"), args.get("task"))
            cap = sampling_params.max_tokens
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"giellm: a constrained row needs max_tokens >= 1, got {cap!r}")
            if sampling_params.ignore_eos or (sampling_params.min_tokens or 0) > 0:
                raise ValueError("giellm: a constrained row cannot set ignore_eos or min_tokens")
        except VLLMValidationError:
            raise
        except Exception as exc:  # every reason, a bug here included, is this row's error only
            raise VLLMValidationError(str(exc), parameter="extra_args") from None

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        from giellm_ray.decoding import build_constraint_factory
        from giellm_ray.model.loader import ModelConfig, load_tokenizer

        mc = vllm_config.model_config
        extra = vllm_config.additional_config or {}
        opts = extra.get(EXTRA_KEY, {}) if isinstance(extra, dict) else {}
        tokenizer = load_tokenizer(ModelConfig(
            name_or_path=mc.tokenizer, revision=mc.tokenizer_revision,
            trust_remote_code=mc.trust_remote_code, use_fast=opts.get("use_fast")))
        self.factory = build_constraint_factory(tokenizer, DEFAULT_REGISTRY)
        self.eos_id = self.factory.eos_id
        self.fail_id = failure_token_id(tokenizer)
        self.rows: dict[int, _Row] = {}
        self.failed_rows = 0
        self._tasks: dict[tuple[str, str], TaskSpec] = {}
        mode = opts.get("mask_mode") or ("cache" if torch.device(device).type == "cpu"
                                         else "scatter")
        self.masks = MaskCache(fallback_id=self.eos_id) if mode == "cache" else None
        self.pin = bool(is_pin_memory)
        self.steps = 0
        self._eos_only: tuple[int, ...] = (self.eos_id,)
        self._fail_only = self._eos_only if self.fail_id is None else (self.fail_id,)
        # The tables and tokenizer are long-lived; keep full GC passes from walking them.
        gc.collect()
        gc.freeze()

    def is_argmax_invariant(self) -> bool:
        return False

    def _new_row(self, params: SamplingParams, out: list[int]) -> _Row | None:
        args = row_args(params)
        if args is None:
            return None
        try:
            key = (args["dataset"], args.get("task") or "")
            task = self._tasks.get(key) or self._tasks.setdefault(key, task_from(*key))
            constraint = self.factory.for_row(args["text"], task, int(params.max_tokens))
        except Exception as exc:  # validated already; a failure here is contained to the row
            self._fail(None, exc)
            constraint = None
        return _Row(constraint, out)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        rows = self.rows
        for index in batch_update.removed:
            rows.pop(index, None)
        for index, params, _prompt_ids, out_ids in batch_update.added:
            row = self._new_row(params, out_ids)
            if row is None:
                rows.pop(index, None)
            else:
                rows[index] = row
        for a, b, direction in batch_update.moved:
            ra, rb = rows.pop(a, None), rows.pop(b, None)
            if ra is not None:
                rows[b] = ra
            if rb is not None and direction == MoveDirectionality.SWAP:
                rows[a] = rb

    def _fail(self, row: _Row | None, exc: BaseException) -> None:
        self.failed_rows += 1
        if row is not None:
            row.failed = True
        log.warning("giellm constraint failed for a row (it writes the failure marker, then "
                    "EOS): %s: %s", type(exc).__name__, exc)

    def _allowed(self, row: _Row) -> tuple[int, ...]:
        """Advance ``row`` over its new tokens; the ids it may take next."""
        try:
            c, out = row.constraint, row.out
            while row.seen < len(out):
                tok = out[row.seen]
                if tok < 0:  # an async-scheduling placeholder not repaired yet
                    break
                row.seen += 1
                if row.failed:
                    row.marked = row.marked or tok == self.fail_id
                elif tok != self.eos_id:
                    c.advance(tok)
            if row.failed:  # the marker once, then EOS
                return self._eos_only if row.marked else self._fail_only
            return self._eos_only if c.is_done() else c.allowed_tokens()
        except Exception as exc:
            self._fail(row, exc)
            return self._fail_only

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        try:
            n_rows = logits.shape[0]
            allowed: list[tuple[int, ...] | None] = [None] * n_rows
            for i, row in self.rows.items():
                if i < n_rows:
                    allowed[i] = self._allowed(row)
            self.steps += 1
            if self.masks is not None:
                return self.masks.apply(logits, allowed)
            return scatter_mask(logits, allowed, self.pin, fallback_id=self.eos_id)
        except Exception:  # never raise here: that would kill the engine for every row
            log.exception("giellm constraint step failed; stopping the batch's constrained rows")
            return self._fail_all(logits)

    def _fail_all(self, logits: torch.Tensor) -> torch.Tensor:
        """Every constrained row writes the failure marker (then EOS, through ``_allowed``)."""
        try:
            for row in self.rows.values():
                row.failed = True
            idx = [i for i in self.rows if i < logits.shape[0]]
            if idx:
                sel = torch.tensor(idx, dtype=torch.long).to(logits.device)
                logits[sel] = float("-inf")
                logits[sel, self._fail_only[0]] = 0.0
        except Exception:  # the rows are flagged; the next step tries again
            log.exception("giellm constraint fallback failed")
        return logits
