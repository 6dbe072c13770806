"""Registers ``giellm train [--model PATH] --config PATH [--set k=v ...]`` (also what
``jobs/train.py`` runs). ``--model`` is ``model.name_or_path``, applied after ``--set``, as in
``giellm score`` / ``giellm serve``."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def run(config_path: str | None, overrides: list[str], model: str | None = None) -> int:
    """Load the config, check dependencies, train (the driver joins or starts Ray), report the
    exported model."""
    from giellm_ray.config import flag_overrides, load_config
    from giellm_ray.deps import require
    from giellm_ray.train.config import TrainConfig

    cfg = load_config(
        TrainConfig, config_path, [*overrides, *flag_overrides([("model.name_or_path", model)])]
    )
    require("train")  # before Ray starts: a missing DeepSpeed is one line, not N worker crashes
    from giellm_ray.train.driver import run_training

    result = run_training(cfg)
    log.info("last checkpoint: %s", result.checkpoint)
    if result.export_dir:
        print(f"exported model: {result.export_dir}")
    return 0


def handle(args: argparse.Namespace) -> int:
    return run(args.config, args.set or [], getattr(args, "model", None))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML TrainConfig (jobs/configs/train/*.yaml)")
    p.add_argument(
        "--model",
        default=None,
        help="base model dir, s3:// prefix, hub id or `tiny` (model.name_or_path)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set lr=2e-5 (repeatable)",
    )


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a causal LM with Ray Train + DeepSpeed",
        description="Full fine-tuning on Ray Train with DeepSpeed ZeRO; connects to RAY_ADDRESS "
        "if set, else starts a local Ray. Prints the exported Hugging Face model directory.",
    )
    add_arguments(p)
    p.set_defaults(handler=handle)
