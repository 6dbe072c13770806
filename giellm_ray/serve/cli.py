"""``giellm serve``: the online extraction service from the command line (argparse only here).

    giellm serve --model PATH [--config jobs/configs/serve/giellm.yaml] [--set k=v ...]
                 [--host 127.0.0.1] [--port 8000]

Blocks until Ctrl-C or SIGTERM, then drains in-flight requests and stops.
"""

from __future__ import annotations

import argparse

from giellm_ray.errors import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve extraction over HTTP with Ray Serve (blocks until Ctrl-C)",
        description="Start the GIELLM extraction service (POST /v1/extract, docs at /docs).",
    )
    p.add_argument(
        "--model", help="model directory, s3:// prefix or hub id (overrides model.name_or_path)"
    )
    p.add_argument("--config", help="ServeConfig YAML (e.g. jobs/configs/serve/giellm.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set batching.max_batch_size=32",
    )
    p.add_argument("--host", help="bind address (overrides http.host; default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (overrides http.port; default 8000)")
    p.set_defaults(handler=handle)


def resolve_config(args: argparse.Namespace):
    """The ServeConfig from ``--config``, ``--set`` and the shortcut flags (flags win)."""
    from giellm_ray.config import flag_overrides, load_config
    from giellm_ray.serve.config import ServeConfig

    flags = flag_overrides(
        [("model.name_or_path", args.model), ("http.host", args.host), ("http.port", args.port)]
    )
    cfg = load_config(ServeConfig, args.config, [*args.overrides, *flags])
    if not args.model and not args.config:
        raise UserError("give --model PATH (or a --config whose model.name_or_path is set)")
    return cfg


def handle(args: argparse.Namespace) -> int:
    from giellm_ray.deps import require

    cfg = resolve_config(args)
    require("serve", engine=cfg.engine)
    from giellm_ray.serve.driver import serve_forever

    return serve_forever(cfg)
