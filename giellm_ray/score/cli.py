"""Registers ``giellm score --model PATH --input PATH... --output PATH [--config YAML] [--set k=v]``.

``--fresh`` discards an interrupted run staged in ``OUTPUT/_staging`` instead of resuming it
(``--set resume=false``); ``--cleanup`` only cleans: it ends the processes a killed run left
running, discards its staging directory and exits.

Argparse only; the Ray pipeline is imported inside the handler so ``giellm --help`` stays instant.
``jobs/score.py`` calls the same handler through ``giellm_ray.cli.main``. The shortcut flags are
overrides applied after ``--set`` (see :func:`giellm_ray.config.flag_overrides`).
"""

from __future__ import annotations

import argparse


def build_config(args: argparse.Namespace):
    """The resolved ``ScoreConfig``: YAML, then ``--set`` overrides, then the shortcut flags."""
    from giellm_ray.config import flag_overrides, load_config
    from giellm_ray.score.config import ScoreConfig

    flags = flag_overrides(
        [
            ("model.name_or_path", args.model),
            ("input", list(args.input) if args.input else None),
            ("output", args.output),
            ("resume", False if getattr(args, "fresh", False) else None),
        ]
    )
    return load_config(ScoreConfig, args.config, [*(args.overrides or ()), *flags])


def handle(args: argparse.Namespace) -> int:
    import json

    from giellm_ray.deps import require
    from giellm_ray.score.driver import cleanup_output, run_score

    cfg = build_config(args)
    if args.cleanup:
        print(json.dumps(cleanup_output(cfg), ensure_ascii=False))
        return 0
    require("score", engine=cfg.engine)
    summary = run_score(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}, ensure_ascii=False))
    if "metrics" in summary:
        from giellm_ray.metrics import markdown_table

        print(markdown_table(summary["metrics"]))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score",
        help="bulk extraction over Parquet with Ray Data (local or s3://), metrics if targets",
        description="Score Parquet rows (columns dataset and text or prompt) with a model in a "
        "Ray Data actor pool. Writes OUTPUT/*.parquet (input columns + prediction, pred_tl_label, "
        "pred_items, error, num_generated_tokens), OUTPUT/_SUCCESS, _score.json, _config.yaml and, "
        "when the input has targets, OUTPUT/_metrics/.",
    )
    p.add_argument("--model", default=None, help="model dir, s3:// prefix or hub id")
    p.add_argument("--input", nargs="+", default=None, help="Parquet file(s) or directories")
    p.add_argument("--output", default=None, help="output directory (local or s3://)")
    p.add_argument("--config", default=None, help="ScoreConfig YAML (jobs/configs/score/*.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set num_actors=4 (repeatable)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard an interrupted run in OUTPUT/_staging and start over "
        "(default: resume it, scoring only the rows not yet committed)",
    )
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="only clean up after a killed run (end the processes it left, discard "
        "OUTPUT/_staging) and exit; the committed result is kept",
    )
    p.set_defaults(handler=handle)
