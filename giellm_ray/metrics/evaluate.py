"""``giellm eval``: score a predictions Parquet (file or directory) and write the report.

Input columns: ``dataset``, ``target``, ``prediction`` (``id`` kept when present), as bulk
scoring writes them. Streams record batches, so a 187k-row file needs little memory. Writes
``DIR/metrics.json`` + ``metrics.md`` + ``metrics.png`` (see :mod:`giellm_ray.metrics.report`)
and ``DIR/rows.parquet`` for error analysis: per row the parsed target and prediction (TL label,
items as label/span(/tail) exactly as written), which levels matched, and why parsing failed.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.parquet as pq

from giellm_ray import io, schema
from giellm_ray.errors import UserError
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, ground_items
from giellm_ray.metrics.counts import add_row, empty_counts, score_row
from giellm_ray.metrics.report import write_report

log = logging.getLogger(__name__)

REQUIRED = [schema.DATASET, schema.TARGET, schema.PREDICTION]


def _batches(path: str):
    try:
        yield from io.iter_parquet_batches(path, columns=None)
    except pa.ArrowInvalid as exc:
        raise UserError(f"{path}: cannot read as Parquet ({exc})") from None


def evaluate(predictions: str, output: str, registry: TaskRegistry = DEFAULT_REGISTRY,
             progress_every_s: float = 10.0) -> dict[str, dict]:
    """Score ``predictions`` into ``output``; return the metrics object (see ``metrics.json``)."""
    io.parquet_files(predictions)  # fail fast: missing path / no Parquet files
    counts: dict[str, dict[str, int]] = {}
    fs, rows_path = io.resolve(io.join(output, "rows.parquet"))
    fs.create_dir(rows_path.rsplit("/", 1)[0], recursive=True)
    done, start, last = 0, time.monotonic(), time.monotonic()
    with pq.ParquetWriter(rows_path, schema.EVAL_ROWS_SCHEMA, filesystem=fs) as writer:
        for batch in _batches(predictions):
            missing = [c for c in REQUIRED if c not in batch.schema.names]
            if missing:
                raise UserError(
                    f"{predictions}: missing column(s) {missing}; need {REQUIRED}, "
                    f"found {batch.schema.names}"
                )
            cols = {c: batch.column(c).to_pylist() for c in REQUIRED}
            ids = (batch.column(schema.ID).to_pylist() if schema.ID in batch.schema.names
                   else [str(done + i) for i in range(batch.num_rows)])
            texts = (batch.column(schema.TEXT).to_pylist() if schema.TEXT in batch.schema.names
                     else [None] * batch.num_rows)
            out_rows = []
            for i in range(batch.num_rows):
                ds = cols[schema.DATASET][i]
                row = score_row(str(ds), cols[schema.TARGET][i], cols[schema.PREDICTION][i],
                                registry)
                add_row(counts.setdefault(str(ds), empty_counts()), row)
                for key in (schema.TARGET_ITEMS, schema.PRED_ITEMS):  # offsets, as scored files
                    row[key] = ground_items(texts[i], row[key] or [])
                row.update({schema.ID: None if ids[i] is None else str(ids[i]),
                            schema.TARGET: cols[schema.TARGET][i],
                            schema.PREDICTION: cols[schema.PREDICTION][i]})
                out_rows.append(row)
            writer.write_table(pa.Table.from_pylist(out_rows, schema=schema.EVAL_ROWS_SCHEMA))
            done += batch.num_rows
            if time.monotonic() - last > progress_every_s:
                last = time.monotonic()
                log.info("eval: %d rows (%.0f rows/s)", done, done / (last - start))
    if not counts:
        raise UserError(f"{predictions}: no rows to evaluate")
    return write_report(counts, output)
