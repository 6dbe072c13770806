"""Registers ``giellm mre``: mixed vs single-task training and scoring as one command.

    giellm mre --data MIX_DIR --config TRAIN_YAML [--score-config SCORE_YAML] --output DIR
               [--datasets NAME ...] [--set k=v ...] [--score-set k=v ...] [--repeats N]
               [--parallel N]
    giellm mre --quick                  # the shipped sample, tiny model, CPU, ~2-3 minutes

Argparse only; Ray, torch and the drivers are imported inside the handler, so ``giellm --help``
stays instant. ``jobs/mre.py`` calls the same handler through ``giellm_ray.cli.main``.
"""

from __future__ import annotations

import argparse

from giellm_ray.errors import UserError


def handle(args: argparse.Namespace) -> int:
    from giellm_ray.mre import plan
    from giellm_ray.mre.report import markdown
    from giellm_ray.mre.runner import run_mre

    output = args.output or ("runs/mre-quick" if args.quick else None)
    if output is None:
        raise UserError("--output is required (a local directory or s3:// prefix)")
    cfg = plan.MreConfig(
        output=output,
        data=args.data,
        train_config=args.config,
        score_config=args.score_config,
        datasets=args.datasets,
        train_overrides=args.overrides or [],
        score_overrides=args.score_overrides or [],
        repeats=args.repeats,
        parallel=args.parallel,
        quick=args.quick,
        sample_train_rows=args.sample_train_rows,
        sample_test_rows=args.sample_test_rows,
    )
    if cfg.quick:
        print(plan.QUICK_DISCLAIMER, flush=True)
    mre = run_mre(cfg)
    print(markdown(mre))
    print(f"wrote {cfg.output.rstrip('/')}/mre.json, mre.md, mre.png in {mre['seconds']:.0f} s")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mre",
        help="the paper's MRE experiment: mixed vs single-task training, trained and scored",
        description="Train one model on the whole mix and one per dataset on that dataset alone, "
        "with the same recipe and seeds; score each on the dataset's own test split (both sides "
        "on the same rows); write OUTPUT/mre.json (per dataset: mixed, single, delta; every "
        "number traced to its scored Parquet), mre.md (beside the paper's MRE figures) and "
        "mre.png. Resumes: exported runs are not retrained, committed scores not redone.",
    )
    p.add_argument(
        "--data",
        default=None,
        help="mix directory from `giellm data mix` (local or s3://); default: a mix "
        "of the shipped sample built into OUTPUT/data",
    )
    p.add_argument(
        "--config", default=None, help="TrainConfig YAML for every run (required unless --quick)"
    )
    p.add_argument(
        "--score-config",
        default=None,
        help="ScoreConfig YAML (default: jobs/configs/score/gpu.yaml when the recipe "
        "uses GPUs, else cpu.yaml)",
    )
    p.add_argument(
        "--output",
        default=None,
        help="output directory, local or s3:// (s3:// on a multi-node cluster); "
        "--quick default: runs/mre-quick",
    )
    p.add_argument(
        "--datasets",
        nargs="+",
        default=None,
        metavar="NAME",
        help="datasets to compare (default: all with train and test rows; --quick: "
        "SCNM SCPOS:RW); the mixed model always trains on the whole mix",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a train config key for every run (repeatable)",
    )
    p.add_argument(
        "--score-set",
        dest="score_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a score config key (repeatable)",
    )
    p.add_argument(
        "--repeats",
        type=_positive,
        default=1,
        help="runs per side with seeds 0..N-1; the table shows mean ± sample std",
    )
    p.add_argument(
        "--parallel",
        type=_positive,
        default=1,
        help="runs side by side, each with the recipe's own resources (default 1: "
        "sequential; on a cluster: the number of nodes one run fills)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="laptop run: shipped sample, tiny model, CPU, two datasets, a few dozen "
        "rows; shows the mechanics, says nothing about the effect's size",
    )
    p.add_argument(
        "--sample-train-rows",
        type=_positive,
        default=None,
        help="training rows per dataset when mixing the shipped sample",
    )
    p.add_argument(
        "--sample-test-rows",
        type=_positive,
        default=None,
        help="test rows per dataset when mixing the shipped sample",
    )
    p.set_defaults(handler=handle)
