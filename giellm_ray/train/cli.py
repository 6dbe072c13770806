"""Registers ``giellm train --config PATH [--set k=v ...]`` (also what ``jobs/train.py`` runs)."""

from __future__ import annotations

import argparse


def run(config_path: str | None, overrides: list[str]) -> int:
    """Load the config, connect to Ray, train, print where the exported model is."""
    from giellm_ray.config import load_config
    from giellm_ray.train.config import TrainConfig
    from giellm_ray.train.driver import connect_ray, run_training

    cfg = load_config(TrainConfig, config_path, overrides)
    connect_ray()
    result = run_training(cfg)
    print(f"last checkpoint: {result.checkpoint}")
    if result.export_dir:
        print(f"exported model: {result.export_dir}")
    return 0


def _handler(args: argparse.Namespace) -> int:
    return run(args.config, args.set or [])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML TrainConfig (jobs/configs/train/*.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set lr=2e-5 (repeatable)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a causal LM with Ray Train + DeepSpeed",
        description="Full fine-tuning on Ray Train with DeepSpeed ZeRO; connects to RAY_ADDRESS "
        "if set, else starts a local Ray. Prints the exported Hugging Face model directory.",
    )
    add_arguments(p)
    p.set_defaults(handler=_handler)
