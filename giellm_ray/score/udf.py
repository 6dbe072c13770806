"""The per-worker side of bulk scoring: the Ray Data UDF class and the Arrow shapes it produces.

:class:`ScoreBatch` is the callable class ``map_batches`` runs in an actor pool: it builds one
:class:`~giellm_ray.generation.extractor.Extractor` (model loaded once per actor) and turns each Arrow
batch into the same batch plus the scored columns of ``giellm_ray.schema.SCORED_FIELDS``. Every
input row gives exactly one output row and **a bad row only ever harms itself**:

* decoding: :func:`decode_column` turns the Arrow batch into Python values column by column and,
  when a column will not decode (a string column holding invalid UTF-8, e.g. a lone surrogate
  written as bytes, or binary data typed as string), value by value; such a row gets
  ``error = "column 'text' is not valid UTF-8 ..."`` and is not generated;
* extraction: if ``Extractor.extract`` raises for a batch, :func:`extract_isolated` splits it in
  halves until the rows that raise are alone (a poisoned 256-row batch costs ~2 log2(256) = 16
  calls, not 256), so only those rows carry the error;
* every input column of every row, bad ones included, is passed through untouched (the original
  Arrow arrays are kept; nothing is re-encoded).

The engine-specific part is ``self.extractor`` (``build_extractor``: ``engine: hf | vllm``);
decoding, isolation, the output shape and the resume/commit machinery downstream are
engine-agnostic. With vLLM the actor is threaded (``batches_in_flight`` calls at once, see
:mod:`giellm_ray.score.dataflow`): each thread hands its batch to the actor's one
:class:`~giellm_ray.generation.vllm_engine.VLLMEngine` and blocks; the engine decodes the rows of
all of them as one continuous batch. A dead vLLM engine (``EngineDeadError``: it cannot recover)
makes the actor exit, so Ray restarts it with a fresh engine and retries its batches; raising
instead would retry them on the same dead actor (``ray.data.llm`` does the same).

Why our actor holding vLLM rather than Ray's ``ray.data.llm`` (``build_processor`` +
``vLLMEngineProcessorConfig``), measured on the prototype (same 2,000 rows, 5 bad, one engine,
2 CPUs): throughput was the same within noise (generation windows 28-30 s ours vs 35-36 s, the
engine-ready time followed the machine load), so the contract decided:

- ``ray.data.llm`` fails the whole job on one bad row unless ``should_continue_on_error``, and
  then its error rows skip the postprocess and come back as raw dicts (a third ``map`` to restore
  the schema); here every row gets its ``error`` in the extractor's words, as with the HF engine;
- vLLM only refuses prompts >= ``max_model_len`` and *silently cuts* prompt + budget beyond it
  (a row came back without error); the extractor checks prompt + budget itself;
- its output has no ``finish_reason`` (truncation must be guessed from the last token), and rows
  travel as dicts in a ``__data`` struct through three stages (columns copied); here the Arrow
  batch passes through zero-copy and gets ``append_scored``, identical to the HF path;
- serving runs the same ``VLLMEngine`` and codec, so both paths share one code path.

LoRA is ours too: a row's ``adapter`` column picks one of the config's ``adapters`` (vLLM: a
``LoRARequest`` per row in one running batch; HF: PEFT, rows grouped by adapter).

Given up: ``ray.data.llm``'s automatic Prometheus engine metrics, multimodal inputs and
TP/PP placement groups (TP=1 is the 13B plan: one engine per GPU).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import pyarrow as pa

from giellm_ray import schema as S
from giellm_ray.generation.extractor import empty_output
from giellm_ray.io import decode_column
from giellm_ray.score.config import ScoreConfig

log = logging.getLogger(__name__)

SCORED_NAMES = S.SCORED_NAMES
INPUT_COLUMNS = (S.DATASET, S.TEXT, S.PROMPT, S.MAX_NEW_TOKENS, S.ADAPTER)


def scored_schema(input_schema: pa.Schema) -> pa.Schema:
    """The output schema: input columns (a scored name replaced) followed by the scored fields."""
    kept = [f for f in input_schema if f.name not in SCORED_NAMES]
    return pa.schema([*kept, *S.SCORED_FIELDS])


def append_scored(batch: pa.Table, outputs: list[dict]) -> pa.Table:
    """``batch`` with the scored columns (from per-row dicts) appended in schema order."""
    table = batch.drop_columns([c for c in SCORED_NAMES if c in batch.column_names])
    for field in S.SCORED_FIELDS:
        table = table.append_column(
            field, pa.array([o[field.name] for o in outputs], type=field.type)
        )
    return table


def decode_rows(batch: pa.Table, columns: Sequence[str]) -> tuple[list[dict], dict[int, str]]:
    """Rows as dicts of ``columns`` and ``{row: first decode error}``."""
    rows: list[dict] = [{} for _ in range(batch.num_rows)]
    errors: dict[int, str] = {}
    for name in columns:
        if name not in batch.column_names:
            continue
        values, bad = decode_column(batch.column(name), name)
        for i, value in enumerate(values):
            rows[i][name] = value
        for i, error in bad.items():
            errors.setdefault(i, error)
    return rows, errors


def extract_isolated(extract: Callable[[list[dict]], list[dict]], rows: list[dict]) -> list[dict]:
    """``extract(rows)``; if it raises, halves until the raising rows are alone (their error)."""
    if not rows:
        return []
    try:
        outputs = extract(rows)
        if len(outputs) != len(rows):
            raise RuntimeError(f"the engine returned {len(outputs)} outputs for {len(rows)} rows")
        return outputs
    except Exception as exc:  # noqa: BLE001 - a bug here must not fail the job or other rows
        if len(rows) == 1:
            log.warning("score: a row failed extraction: %s: %s", type(exc).__name__, exc)
            return [empty_output(f"scoring error: {type(exc).__name__}: {exc}")]
    half = len(rows) // 2
    return extract_isolated(extract, rows[:half]) + extract_isolated(extract, rows[half:])


def score_table(extract: Callable[[list[dict]], list[dict]], batch: pa.Table) -> pa.Table:
    """``batch`` plus the scored columns: decode, extract the decodable rows, reassemble."""
    rows, errors = decode_rows(batch, INPUT_COLUMNS)
    todo = [i for i in range(len(rows)) if i not in errors]
    done = extract_isolated(extract, [rows[i] for i in todo])
    outputs = [empty_output(errors[i]) if i in errors else None for i in range(len(rows))]
    for i, output in zip(todo, done, strict=True):
        outputs[i] = output
    return append_scored(batch, outputs)


class ScoreBatch:
    """Ray Data UDF: holds an Extractor and scores Arrow batches (one actor, one model)."""

    def __init__(self, cfg: ScoreConfig, registry_dict: dict | None, counter=None) -> None:
        import torch

        from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
        from giellm_ray.generation.build import build_extractor
        from giellm_ray.log import setup_logging

        setup_logging(handler=False)  # a Ray actor: the level from GIELLM_LOG_LEVEL, Ray prints

        threads = cfg.torch_threads or max(1, round(cfg.num_cpus_per_actor))
        torch.set_num_threads(threads)
        registry = TaskRegistry.from_dict(registry_dict) if registry_dict else DEFAULT_REGISTRY
        device = "cuda" if cfg.num_gpus_per_actor > 0 else "cpu"
        self.extractor = build_extractor(
            cfg.engine,
            cfg.model,
            cfg.generation,
            cfg.vllm,
            registry,
            cfg.constrained,
            device,
            cfg.adapters,
        )
        self.counter = counter
        self._lock = threading.Lock()  # vLLM actors run several batches in threads
        self._last_stats = self.extractor.stats.to_dict()

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = score_table(self.extractor.extract, batch)
        self.extractor.exit_if_dead("score actor")  # its batches are retried on the new one
        self._report(out)
        return out

    def _report(self, out: pa.Table) -> None:
        if self.counter is None:
            return
        with self._lock:
            stats = self.extractor.stats.to_dict()
            deltas = {k: stats[k] - self._last_stats[k] for k in stats if isinstance(stats[k], int)}
            self._last_stats = stats
        deltas["scored_rows"] = out.num_rows
        deltas["error_rows"] = out.num_rows - out.column(S.ERROR).null_count
        self.counter.add.remote(deltas)
