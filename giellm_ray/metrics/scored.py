"""The counts of scored Parquet files: the one reader behind ``giellm score``'s ``_metrics/``, the
MRE report and the tests that check them.

Streams three columns (``dataset``, ``target``, ``prediction``) batch by batch, so memory stays
flat on 187k rows; a value whose bytes are not UTF-8 reads as null (an unlabelled row), never as
a crash. Per-file counts are summed with :func:`~giellm_ray.metrics.counts.merge_counts`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from giellm_ray import io, schema
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.metrics.counts import count_rows, merge_counts

COLUMNS = (schema.DATASET, schema.TARGET, schema.PREDICTION)


def count_scored(
    files: Iterable[str],
    registry: TaskRegistry = DEFAULT_REGISTRY,
    fs: pafs.FileSystem | None = None,
) -> dict[str, dict[str, int]]:
    """Per-dataset counts of ``files`` (paths within ``fs``; without it, local paths or
    ``s3://`` URIs), merged."""
    parts = []
    for f in files:
        file_fs, path = (fs, f) if fs is not None else io.resolve(f)
        pf = pq.ParquetFile(file_fs.open_input_file(path))
        for batch in pf.iter_batches(columns=list(COLUMNS)):
            ds, tgt, pred = (io.decode_column(batch.column(i), n)[0] for i, n in enumerate(COLUMNS))
            parts.append(count_rows([str(x) for x in ds], tgt, pred, registry))
    return merge_counts(parts)


__all__ = ["count_scored"]
