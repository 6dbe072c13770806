"""``giellm eval``: score a predictions Parquet (file or directory) and write the report.

Input columns: ``dataset``, ``target``, ``prediction`` (``id`` kept when present), as bulk
scoring writes them. Streams record batches, so a 187k-row file needs little memory. Writes
``DIR/metrics.json`` + ``metrics.md`` + ``metrics.png`` (see :mod:`giellm_ray.metrics.report`)
and ``DIR/rows.parquet`` for error analysis: per row the parsed target and prediction (TL label,
items as label/span(/tail) exactly as written), which levels matched, and why parsing failed.
"""

from __future__ import annotations

import json
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from giellm_ray import io, schema
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.metrics.counts import add_row, empty_counts, score_row
from giellm_ray.metrics.report import markdown_table, write_report

REQUIRED = [schema.DATASET, schema.TARGET, schema.PREDICTION]

ROWS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("target", pa.string()),
        ("prediction", pa.string()),
        ("target_tl_label", pa.string()),
        ("target_items", pa.list_(schema.ITEM_TYPE)),
        ("pred_tl_label", pa.string()),
        ("pred_items", pa.list_(schema.ITEM_TYPE)),
        ("tl_match", pa.bool_()),
        ("wl_match", pa.bool_()),
        ("all_match", pa.bool_()),
        ("item_tp", pa.int32()),
        ("item_fp", pa.int32()),
        ("item_fn", pa.int32()),
        ("target_error", pa.string()),
        ("prediction_error", pa.string()),
    ]
)


def load_registry(tasks_path: str | None) -> TaskRegistry:
    """The default registry, or one read from a ``tasks.json`` (e.g. learned from authors' data)."""
    if not tasks_path:
        return DEFAULT_REGISTRY
    try:
        return TaskRegistry.from_dict(json.loads(io.read_text(tasks_path)))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{tasks_path}: not a tasks.json written by giellm ({exc})") from None


def _batches(path: str):
    try:
        yield from io.iter_parquet_batches(path, columns=None)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: cannot read as Parquet ({exc})") from None


def evaluate(predictions: str, output: str, registry: TaskRegistry = DEFAULT_REGISTRY,
             progress_every_s: float = 10.0) -> dict[str, dict]:
    """Score ``predictions`` into ``output``; return the metrics object (see ``metrics.json``)."""
    io.parquet_files(predictions)  # fail fast: missing path / no Parquet files
    counts: dict[str, dict[str, int]] = {}
    fs, rows_path = io.resolve(io.join(output, "rows.parquet"))
    fs.create_dir(rows_path.rsplit("/", 1)[0], recursive=True)
    done, start, last = 0, time.monotonic(), time.monotonic()
    with pq.ParquetWriter(rows_path, ROWS_SCHEMA, filesystem=fs) as writer:
        for batch in _batches(predictions):
            missing = [c for c in REQUIRED if c not in batch.schema.names]
            if missing:
                raise ValueError(
                    f"{predictions}: missing column(s) {missing}; need {REQUIRED}, "
                    f"found {batch.schema.names}"
                )
            cols = {c: batch.column(c).to_pylist() for c in REQUIRED}
            ids = (batch.column("id").to_pylist() if "id" in batch.schema.names
                   else [str(done + i) for i in range(batch.num_rows)])
            out_rows = []
            for i in range(batch.num_rows):
                ds = cols[schema.DATASET][i]
                row = score_row(str(ds), cols[schema.TARGET][i], cols[schema.PREDICTION][i],
                                registry)
                add_row(counts.setdefault(str(ds), empty_counts()), row)
                row.update(id=None if ids[i] is None else str(ids[i]),
                           target=cols[schema.TARGET][i], prediction=cols[schema.PREDICTION][i])
                out_rows.append(row)
            writer.write_table(pa.Table.from_pylist(out_rows, schema=ROWS_SCHEMA))
            done += batch.num_rows
            if time.monotonic() - last > progress_every_s:
                last = time.monotonic()
                print(f"eval: {done} rows ({done / (last - start):.0f} rows/s)", file=sys.stderr)
    if not counts:
        raise ValueError(f"{predictions}: no rows to evaluate")
    return write_report(counts, output)


def run_eval(args) -> int:
    """CLI handler for ``giellm eval``."""
    metrics = evaluate(args.predictions, args.output, load_registry(args.tasks))
    print(markdown_table(metrics))
    print(f"wrote {io.join(args.output, 'metrics.json')}, metrics.md, metrics.png, rows.parquet")
    return 0
