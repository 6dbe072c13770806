"""Registers ``giellm demo``: the whole system on one CPU machine (see :mod:`giellm_ray.demo`).

Argparse only; Ray, torch and the demo's steps are imported inside the handler.
"""

from __future__ import annotations

import argparse


def handle(args: argparse.Namespace) -> int:
    from giellm_ray.demo.run import QUICK, DemoConfig, run_demo

    values = dict(QUICK) if args.quick else {}
    values["workdir"] = args.workdir
    if args.epochs is not None:
        values["epochs"] = args.epochs
    if args.port is not None:
        values["serve_port"] = args.port
    run_demo(DemoConfig(**values))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="build data, fine-tune, bulk-score, report and serve a tiny model on this machine",
        description="The whole job on one CPU machine, no GPU and no downloads: mixes the shipped "
        "synthetic sample, fine-tunes a tiny random-init Llama with Ray Train + DeepSpeed, "
        "bulk-scores the held-out Parquet with Ray Data, prints the TL/WL/ALL table beside the "
        "paper's (chart in WORKDIR/scored/_metrics), answers one request from Ray Serve, and shuts "
        "down. A demonstration of the system; paper-level accuracy needs a pretrained 7B/13B base "
        "on GPUs.",
    )
    p.add_argument(
        "--workdir",
        default="runs/demo",
        help="where the demo writes everything (default: runs/demo; reruns replace it)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs (default 12; more: better scores, longer run)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run (tiny corpus, 2 epochs) that checks the path, as CI does",
    )
    p.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free one)")
    p.set_defaults(handler=handle)
