"""Streaming Parquet output in ``DATASET_SCHEMA``: rows are appended in row groups, memory flat.

A :class:`ParquetSink` writes one ``.parquet`` file (local or ``s3://``) through
``pyarrow.parquet.ParquetWriter``; a local file is written under a temporary name and renamed on
:meth:`ParquetSink.close`, so a crashed build never leaves a half file that looks whole.
:func:`safe_name` turns a dataset name into a path component (``SCPOS:N&Adj`` → ``SCPOS_NAdj``).
"""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

from giellm_ray import io
from giellm_ray.schema import DATASET_SCHEMA, dataset_table


def safe_name(dataset: str) -> str:
    """A path-safe dataset name: ``:`` → ``_``, other non-word characters dropped.

    ``SCNM`` → ``SCNM``, ``SCPOS:RW`` → ``SCPOS_RW``, ``SCPOS:N&Adj`` → ``SCPOS_NAdj``.
    """
    return re.sub(r"[^\w.-]", "", dataset.replace(":", "_")) or "dataset"


class ParquetSink:
    """Append rows (dicts) or tables to one Parquet file; call :meth:`close` to finish it."""

    def __init__(self, path: str, schema: pa.Schema = DATASET_SCHEMA) -> None:
        self.path = str(path)
        self.schema = schema
        self.rows = 0
        fs, p = io.resolve(self.path)
        parent = p.rsplit("/", 1)[0]
        if parent and parent != p:
            fs.create_dir(parent, recursive=True)
        self._final = p
        self._tmp = p if io.is_s3(self.path) else f"{p}.tmp-{os.getpid()}"
        self._writer = pq.ParquetWriter(self._tmp, schema, filesystem=fs)

    def write_rows(self, rows: list[dict]) -> None:
        if rows:
            self.write_table(
                dataset_table(rows)
                if self.schema == DATASET_SCHEMA
                else pa.Table.from_pylist(rows, schema=self.schema)
            )

    def write_table(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.select(self.schema.names).cast(self.schema))
            self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        if self._tmp != self._final:
            os.replace(self._tmp, self._final)

    def abort(self) -> None:
        """Close and remove the partial file (local only)."""
        self._writer.close()
        if self._tmp != self._final and os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self) -> ParquetSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
