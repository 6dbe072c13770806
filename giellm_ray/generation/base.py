"""What every generation engine speaks: requests, results, counters and the engine protocol.

An engine takes a list of :class:`GenerationRequest` (prompt, token budget, optional per-row
format constraint) and returns one :class:`GenerationResult` per request, in order, never raising
for a bad row (the row's ``error`` says why). :class:`EngineStats` holds the counters that bulk
scoring sums across actors and reports in ``_score.json``. :class:`Engine` is the batch contract
(the HF loop); :class:`ContinuousEngine` adds what an engine running on its own needs (vLLM:
async generation, in-flight count, health, shutdown), as lm-evaluation-harness keeps ``hf`` and
``vllm`` behind one ``LM``. Torch-free.

One token-count contract for every engine: ``num_generated_tokens`` counts the tokens a row wrote
*including the EOS that ended it*, whether the model chose it or the format constraint forced it
(a constrained row whose output is complete can only write EOS next). vLLM has to sample that
forced EOS, so it always counts it; the HF engine stops such a row without running the model
once more and counts the EOS it would have written. ``finished`` means the row ended with that EOS
within its budget; a row the budget cut (no room left for the EOS) is not finished.
"""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar, runtime_checkable

from giellm_ray.decoding.base import RowConstraint
from giellm_ray.formats.tasks import TaskSpec

# How the row errors an Extractor writes about the row's own input or output begin. They are safe
# to show the caller who sent the row. Any other error (``engine error: ...``, ``internal error
# ...``: an exception inside the engine or the model code) carries internal text: a service logs it
# and shows a stable message instead (``giellm_ray.serve.api.client_error``). A new row error
# about the input belongs here, or callers see the stable message.
PUBLIC_ROW_ERRORS = (
    "unknown dataset",
    "max_new_tokens must",
    "text is",
    "text cannot be tokenized",
    "prompt too long",
    "parse:",
    "output truncated",
    "unknown adapter",
)


@dataclass(frozen=True)
class ConstraintSpec:
    """A row's format constraint as plain data (its source text and task), for an engine that
    applies it itself: vLLM turns it into the row's llguidance grammar (structured outputs)."""

    text: str
    task: TaskSpec


@dataclass
class GenerationRequest:
    """One prompt to complete.

    ``constraint``: a live :class:`RowConstraint` (the HF engine drives it in-process) or a
    :class:`ConstraintSpec` (vLLM). ``prompt_ids``: the prompt already tokenized (the extractor
    tokenizes once to check lengths; engines then skip their own pass). ``adapter``: a name
    the engine holds (``generation.adapters``); the Extractor has already refused others.
    """

    prompt: str
    max_new_tokens: int
    constraint: RowConstraint | ConstraintSpec | None = None
    prompt_ids: list[int] | None = None
    scores: bool = False  # also return the generated tokens' log-probabilities
    adapter: str | None = None  # the LoRA adapter to generate with (``None``: the base model)


@dataclass
class GenerationResult:
    """The completion of one request (``text`` excludes the prompt and EOS)."""

    text: str
    num_generated_tokens: int
    finished: bool
    error: str | None = None
    token_ids: list[int] | None = None  # generated tokens, EOS excluded (when scores were asked)
    token_logprobs: list[float] | None = None  # ln p of each of token_ids, under the constraint


@dataclass
class EngineStats:
    """Counters since the engine was built (or reset); they sum across engines and actors."""

    rows: int = 0
    prompt_tokens: int = 0
    prompt_pad_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    decode_slot_steps: int = 0
    finished_slot_steps: int = 0
    refills: int = 0
    errors: int = 0

    @classmethod
    def counter_names(cls) -> tuple[str, ...]:
        """The counter names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_totals(cls, totals: dict) -> EngineStats:
        """Counters from a dict that may hold other keys too (e.g. summed actor reports)."""
        return cls(**{k: int(totals.get(k, 0)) for k in cls.counter_names()})

    @property
    def padding_fraction(self) -> float:
        """Share of prefill positions that were padding."""
        total = self.prompt_tokens + self.prompt_pad_tokens
        return self.prompt_pad_tokens / total if total else 0.0

    @property
    def waste_fraction(self) -> float:
        """Share of decode slots (rows × steps) spent on rows that had already finished."""
        return self.finished_slot_steps / self.decode_slot_steps if self.decode_slot_steps else 0.0

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.counter_names()}
        d["padding_fraction"] = self.padding_fraction
        d["waste_fraction"] = self.waste_fraction
        return d


T = TypeVar("T")


@runtime_checkable
class Engine(Protocol):
    """A batch generator: greedy completions for requests, one result per request, in order
    (the HF engine: each ``generate`` call decodes its requests and returns; nothing runs in
    between, so there is no health to watch and nothing to shut down)."""

    stats: EngineStats
    max_positions: int  # the longest prompt + output the engine takes, in tokens

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request; never raises for a bad row."""

    def reset_stats(self) -> None:
        """Zero the counters."""


@runtime_checkable
class ContinuousEngine(Engine, Protocol):
    """An engine that runs on its own (vLLM: an engine-core process and an event loop): requests
    from any caller join one running batch, and the engine can die under its callers.

    ``generate`` (blocking, from any thread) and ``generate_async`` (awaited on any loop) take
    the same requests; ``call`` / ``run_async`` run a coroutine on the engine's loop (the
    Extractor runs a whole extraction there, so the tokenizer is used from one thread).
    """

    in_flight: int  # rows submitted and not finished yet
    dead: str | None  # why the engine cannot generate any more, else None

    async def generate_async(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Complete every request concurrently; results in order; never raises for a row."""

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the engine's loop and wait for it (from another thread)."""

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the engine's loop from any loop (cancelling this cancels it)."""

    def check_health(self) -> None:
        """Raise if the engine cannot generate any more (its owner is then replaced)."""

    def shutdown(self) -> None:
        """Stop the engine's processes and threads (idempotent)."""

    def kill_processes(self) -> None:
        """SIGKILL the engine's processes, before its owner exits without a shutdown."""
