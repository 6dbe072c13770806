"""The ``giellm`` command: one entry point whose subcommands are plain functions.

Each area registers its subcommands from a light ``cli`` module (argparse only; heavy imports
happen inside the handlers, each named ``handle`` or ``handle_<subcommand>``), so
``giellm --help`` is instant and ``jobs/*.py`` reuse the same functions. ``-v``/``-q`` (or
``GIELLM_LOG_LEVEL``) set the verbosity of the ``giellm_ray`` loggers (see :mod:`giellm_ray.log`).
Errors a user can fix (:class:`~giellm_ray.errors.UserError`: bad config, bad option, malformed
input; a missing file or dependency) print one clear ``giellm: error: ...`` line and exit 2;
anything else is a bug and keeps its traceback. A bare ``ValueError``/``KeyError`` not marked as
the user's is printed the same way but says so, and ``-v`` shows its traceback.

    giellm [-v | -q] data scnm|scpos|authors|mix ...
    giellm eval PREDICTIONS --output DIR
    giellm train --config PATH [--set k=v ...]
    giellm score --model PATH --input PATH... --output PATH
    giellm serve --model PATH [--config YAML]
    giellm demo
    giellm mre --data MIX_DIR --config PATH --output DIR   (or: giellm mre --quick)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from giellm_ray.data import cli as data_cli
from giellm_ray.demo import cli as demo_cli
from giellm_ray.errors import UserError
from giellm_ray.metrics import cli as metrics_cli
from giellm_ray.mre import cli as mre_cli
from giellm_ray.score import cli as score_cli
from giellm_ray.serve import cli as serve_cli
from giellm_ray.train import cli as train_cli

COMMANDS = (data_cli, metrics_cli, train_cli, score_cli, serve_cli, demo_cli, mre_cli)
__all__ = ["UserError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giellm",
        description="GIELLM on Ray: data building, training, bulk scoring, serving, evaluation.",
    )
    level = parser.add_mutually_exclusive_group()
    level.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="debug logging (also GIELLM_LOG_LEVEL=DEBUG)",
    )
    level.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        help="warnings and errors only, no progress lines (-qq: errors only)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from giellm_ray.config import ConfigError
    from giellm_ray.deps import MissingDependency
    from giellm_ray.log import level_from_flags, setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(level_from_flags(args.verbose, args.quiet))
    try:
        result = args.handler(args)
    except (UserError, ConfigError, MissingDependency, FileNotFoundError) as exc:
        print(f"giellm: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError) as exc:  # not marked as the user's: maybe a bug
        if args.verbose:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(
            f"giellm: error: {msg} ({type(exc).__name__}; if this looks like a bug, "
            "giellm -v shows the traceback)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("giellm: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
