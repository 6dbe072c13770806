"""``giellm eval``: score a predictions Parquet (file or directory) and write the report.

Input columns: ``dataset``, ``target``, ``prediction`` (``id``, ``text``, ``pred_items`` with item
``score`` and ``tl_score`` used when present, as bulk scoring writes them; outputs without scores
still work). Streams record batches, so a 187k-row file needs little memory. Writes
``DIR/metrics.json`` + ``metrics.md`` + ``metrics.png`` (+ ``reliability.png`` with scores, see
:mod:`giellm_ray.metrics.report`), ``DIR/report.html`` + ``DIR/report-*.html`` (a sample of the
wrong rows, see :mod:`giellm_ray.metrics.html_report`) and ``DIR/rows.parquet`` for error
analysis: per row the parsed target and prediction (TL label, items as label/span(/tail) exactly
as written), which levels matched, and why parsing failed.

:func:`write_scored_report` is the same report (without ``rows.parquet``) over a scored output's
files, for ``giellm score``'s ``_metrics/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from giellm_ray import io, schema
from giellm_ray.errors import UserError
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.metrics.analysis import DEFAULT_SAMPLE, Analysis
from giellm_ray.metrics.confidence import confidence_report
from giellm_ray.metrics.html_report import write_html_report
from giellm_ray.metrics.report import synthetic_caveat, write_report

log = logging.getLogger(__name__)

REQUIRED = [schema.DATASET, schema.TARGET, schema.PREDICTION]
OPTIONAL = [schema.ID, schema.TEXT, schema.PRED_ITEMS, schema.TL_SCORE]


def _batches(path: str):
    try:
        yield from io.iter_parquet_batches(path, columns=None)
    except pa.ArrowInvalid as exc:
        raise UserError(f"{path}: cannot read as Parquet ({exc})") from None


def _pylist(col: pa.Array | pa.ChunkedArray) -> list:
    """Python values; a string column with bytes that are not UTF-8 decodes them with U+FFFD."""
    try:
        return col.to_pylist()
    except (pa.ArrowInvalid, UnicodeDecodeError):
        raw = col.cast(pa.large_binary()).to_pylist()
        return [None if b is None else b.decode("utf-8", "replace") for b in raw]


def _columns(batch: pa.RecordBatch, where: str, first_id: int = 0) -> dict[str, list]:
    """The batch's columns as lists (absent optional ones as nulls; absent ids numbered)."""
    missing = [c for c in REQUIRED if c not in batch.schema.names]
    if missing:
        raise UserError(
            f"{where}: missing column(s) {missing}; need {REQUIRED}, found {batch.schema.names}"
        )
    n = batch.num_rows
    cols = {
        c: (_pylist(batch.column(c)) if c in batch.schema.names else [None] * n)
        for c in REQUIRED + OPTIONAL
    }
    if schema.ID not in batch.schema.names:
        cols[schema.ID] = [str(first_id + i) for i in range(n)]
    return cols


def add_batch(analysis: Analysis, cols: dict[str, list]) -> list[dict]:
    """Fold one batch's columns (see :func:`_columns`) into ``analysis``; return its rows."""
    out = []
    for i, ds in enumerate(cols[schema.DATASET]):
        rid = None if cols[schema.ID][i] is None else str(cols[schema.ID][i])
        out.append(
            analysis.add(
                str(ds),
                cols[schema.TARGET][i],
                cols[schema.PREDICTION][i],
                row_id=rid,
                text=cols[schema.TEXT][i],
                scored_items=cols[schema.PRED_ITEMS][i],
                tl_score=cols[schema.TL_SCORE][i],
            )
        )
        out[-1][schema.ID] = rid
    return out


def finish(
    analysis: Analysis, output: str, registry: TaskRegistry, title: str = "GIELLM evaluation"
) -> tuple[dict[str, dict], list[str]]:
    """Write metrics.* (+ reliability.png) and report*.html into ``output``; return
    the metrics and the names written."""
    confidence = confidence_report(analysis.scores, analysis.gold_items())
    metrics = write_report(analysis.counts, output, title, confidence, analysis.synthetic)
    names = ["metrics.json", "metrics.md"] + (["metrics.png"] if metrics else [])
    names += ["reliability.png"] if any(m.get("confidence") for m in metrics.values()) else []
    names += write_html_report(analysis, output, registry, confidence, synthetic_caveat(metrics))
    return metrics, names


def evaluate(
    predictions: str,
    output: str,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    progress_every_s: float = 10.0,
    sample_size: int = DEFAULT_SAMPLE,
) -> dict[str, dict]:
    """Score ``predictions`` into ``output``; return the metrics object (see ``metrics.json``)."""
    io.parquet_files(predictions)  # fail fast: missing path / no Parquet files
    analysis = Analysis(registry, sample_size)
    fs, rows_path = io.resolve(io.join(output, "rows.parquet"))
    fs.create_dir(rows_path.rsplit("/", 1)[0], recursive=True)
    done, start, last = 0, time.monotonic(), time.monotonic()
    with pq.ParquetWriter(rows_path, schema.EVAL_ROWS_SCHEMA, filesystem=fs) as writer:
        for batch in _batches(predictions):
            rows = add_batch(analysis, _columns(batch, predictions, done))
            writer.write_table(pa.Table.from_pylist(rows, schema=schema.EVAL_ROWS_SCHEMA))
            done += batch.num_rows
            if time.monotonic() - last > progress_every_s:
                last = time.monotonic()
                log.info("eval: %d rows (%.0f rows/s)", done, done / (last - start))
    if not analysis.counts:
        raise UserError(f"{predictions}: no rows to evaluate")
    return finish(analysis, output, registry)[0]


def _file_batches(fs: pafs.FileSystem, files: Iterable[str]):
    for f in files:
        pf = pq.ParquetFile(fs.open_input_file(f))
        names = pf.schema_arrow.names
        yield from pf.iter_batches(columns=[c for c in REQUIRED + OPTIONAL if c in names])


def write_scored_report(
    fs: pafs.FileSystem,
    files: list[str],
    output: str,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    sample_size: int = DEFAULT_SAMPLE,
) -> tuple[dict[str, dict], list[str]]:
    """The eval report over a scored output's Parquet ``files`` (on ``fs``), into ``output``:
    ``(metrics, names written)``."""
    analysis = Analysis(registry, sample_size)
    done = 0
    for batch in _file_batches(fs, files):
        add_batch(analysis, _columns(batch, "scored output", done))
        done += batch.num_rows
    return finish(analysis, output, registry)
