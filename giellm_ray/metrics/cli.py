"""Registers ``giellm eval PREDICTIONS --output DIR [--tasks tasks.json]``."""

from __future__ import annotations

import argparse


def handle(args: argparse.Namespace) -> int:
    from giellm_ray import io
    from giellm_ray.formats import TaskRegistry
    from giellm_ray.metrics.evaluate import evaluate
    from giellm_ray.metrics.report import markdown_table

    metrics = evaluate(args.predictions, args.output, TaskRegistry.load(args.tasks))
    print(markdown_table(metrics))
    print(
        f"wrote {io.join(args.output, 'metrics.json')}, metrics.md, metrics.png, rows.parquet, "
        "report.html (+ report-*.html pages; reliability.png when the output has scores)"
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score predictions against targets: TL/WL/ALL accuracy, item P/R/F1, report",
        description="Evaluate a Parquet file or directory with dataset, target and prediction "
        "columns (pred_items scores and tl_score used when present). Writes DIR/metrics.json, "
        "metrics.md, metrics.png, rows.parquet, report.html with report-*.html pages (a sample of the "
        "wrong rows) and, with scores, reliability.png.",
    )
    p.add_argument("predictions", help="Parquet file or directory (local or s3://)")
    p.add_argument("--output", required=True, help="report directory (local or s3://)")
    p.add_argument(
        "--tasks",
        default=None,
        help="tasks.json with label inventories (default: the built-in registry)",
    )
    p.set_defaults(handler=handle)
