"""Metrics for GIELLM outputs: summable counts, ratios, and readable reports.

Pure (no torch, no ray): ``count_rows`` over shards, ``merge_counts`` to sum them, ``ratios`` once
at the end, ``write_report`` for JSON + Markdown + PNG.
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

__all__ = [
    "COUNT_KEYS",
    "build_metrics",
    "count_rows",
    "empty_counts",
    "markdown_table",
    "merge_counts",
    "ratios",
    "score_row",
    "write_report",
]
