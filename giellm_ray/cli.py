"""The ``giellm`` command: one entry point whose subcommands are plain functions.

Each area registers its own subcommands from a light ``cli`` module (argparse only; heavy imports
happen inside the handlers), so ``giellm --help`` is instant and ``jobs/*.py`` reuse the same
functions. Errors a user can fix (bad config, missing file, malformed input) print one clear
``giellm: error: ...`` line and exit 2; anything else is a bug and keeps its traceback.

    giellm data scnm|scpos|authors|mix ...
    giellm eval PREDICTIONS --output DIR
    giellm train --config PATH [--set k=v ...]
    giellm score --model PATH --input PATH... --output PATH
    giellm serve --model PATH [--config YAML]
    giellm demo
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that each define ``register(subparsers)``; a missing one is skipped so a partial
# install still offers the rest.
COMMAND_MODULES = (
    "giellm_ray.data.cli",
    "giellm_ray.metrics.cli",
    "giellm_ray.train.cli",
    "giellm_ray.infer.cli",
    "giellm_ray.serve.cli",
    "giellm_ray.demo_cli",
)


class UserError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giellm",
        description="GIELLM on Ray: data building, training, bulk scoring, serving, evaluation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from giellm_ray.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except (UserError, ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"giellm: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("giellm: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
