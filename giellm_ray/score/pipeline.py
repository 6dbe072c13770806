"""The per-worker side of bulk scoring: the Ray Data UDF class and the Arrow shapes it produces.

:class:`ScoreBatch` is the callable class ``map_batches`` runs in an actor pool: it builds one
:class:`~giellm_ray.generation.extractor.Extractor` (model loaded once per actor) and turns each Arrow
batch into the same batch plus the scored columns of ``giellm_ray.schema.SCORED_FIELDS``. Every
input row gives exactly one output row, even if extraction itself fails (then every row of the
batch carries the reason in ``error``). The driver that wires it into a pipeline is
``giellm_ray.score.driver``.
"""

from __future__ import annotations

import pyarrow as pa

from giellm_ray import schema as S
from giellm_ray.generation.extractor import empty_output
from giellm_ray.score.config import ScoreConfig

SCORED_NAMES = S.SCORED_NAMES
INPUT_COLUMNS = (S.DATASET, S.TEXT, S.PROMPT, S.MAX_NEW_TOKENS)


def scored_schema(input_schema: pa.Schema) -> pa.Schema:
    """The output schema: input columns (a scored name replaced) followed by the scored fields."""
    kept = [f for f in input_schema if f.name not in SCORED_NAMES]
    return pa.schema([*kept, *S.SCORED_FIELDS])


def append_scored(batch: pa.Table, outputs: list[dict]) -> pa.Table:
    """``batch`` with the scored columns (from per-row dicts) appended in schema order."""
    table = batch.drop_columns([c for c in SCORED_NAMES if c in batch.column_names])
    for field in S.SCORED_FIELDS:
        table = table.append_column(
            field, pa.array([o[field.name] for o in outputs], type=field.type))
    return table


class ScoreBatch:
    """Ray Data UDF: holds an Extractor and scores Arrow batches (one actor, one model)."""

    def __init__(self, cfg: ScoreConfig, registry_dict: dict | None, counter=None) -> None:
        import torch

        from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
        from giellm_ray.generation.extractor import Extractor
        from giellm_ray.log import setup_logging

        setup_logging()  # this actor process: the level comes from GIELLM_LOG_LEVEL

        threads = cfg.torch_threads or max(1, round(cfg.num_cpus_per_actor))
        torch.set_num_threads(threads)
        registry = TaskRegistry.from_dict(registry_dict) if registry_dict else DEFAULT_REGISTRY
        device = "cuda" if cfg.num_gpus_per_actor > 0 else "cpu"
        self.extractor = Extractor(cfg.model, cfg.generation, registry, cfg.constrained, device)
        self.counter = counter
        self._last_stats = self.extractor.engine.stats.to_dict()

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = [c for c in INPUT_COLUMNS if c in batch.column_names]
        rows = batch.select(cols).to_pylist()
        try:
            outputs = self.extractor.extract(rows)
        except Exception as exc:  # a bug here must not fail the job: every row says why
            outputs = [empty_output(f"scoring error: {type(exc).__name__}: {exc}") for _ in rows]
        self._report(outputs)
        return append_scored(batch, outputs)

    def _report(self, outputs: list[dict]) -> None:
        if self.counter is None:
            return
        stats = self.extractor.engine.stats.to_dict()
        deltas = {k: stats[k] - self._last_stats[k] for k in stats
                  if isinstance(stats[k], int)}
        self._last_stats = stats
        deltas["scored_rows"] = len(outputs)
        deltas["error_rows"] = sum(o[S.ERROR] is not None for o in outputs)
        self.counter.add.remote(deltas)
