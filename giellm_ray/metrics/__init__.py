"""Metrics for GIELLM outputs: summable counts, ratios, and readable reports.

Pure (no torch, no ray): ``count_rows`` over shards, ``merge_counts`` to sum them, ``ratios`` once
at the end, ``write_report`` for JSON + Markdown + PNG; ``format_validity`` for outputs without gold;
``count_scored`` for scored Parquet files.
"""

from giellm_ray.metrics.counts import (
    COUNT_KEYS,
    count_rows,
    empty_counts,
    merge_counts,
    ratios,
    score_row,
)
from giellm_ray.metrics.report import build_metrics, markdown_table, write_report
from giellm_ray.metrics.scored import count_scored
from giellm_ray.metrics.validity import format_validity

__all__ = [
    "COUNT_KEYS",
    "build_metrics",
    "count_rows",
    "count_scored",
    "empty_counts",
    "format_validity",
    "markdown_table",
    "merge_counts",
    "ratios",
    "score_row",
    "write_report",
]
