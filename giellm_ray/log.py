"""Logging for the whole package: one ``giellm_ray`` logger hierarchy, one switch for verbosity.

Every module logs to ``logging.getLogger(__name__)``, except the three that run inside Serve
replicas (``serve/http.py``, ``serve/deployment.py``, ``serve/coalescer.py``): they log to Serve's
own ``"ray.serve"`` logger, so their lines land in Serve's per-replica log files beside Serve's
with the replica and request ids. :func:`setup_logging` gives the ``giellm_ray`` root one stderr
handler and a level from ``-v``/``-q`` or ``GIELLM_LOG_LEVEL`` (``DEBUG``, ``INFO`` (default),
``WARNING``, ``ERROR``), and gives ``"ray.serve"`` the same level; the Serve app passes it to its
replicas as their ``logging_config`` (:func:`serve_log_level`), so ``-q``/``-v`` reach those lines
too. The ``giellm`` command calls it first and
writes the level back to ``GIELLM_LOG_LEVEL`` so Ray workers (Train workers, Data actors, Serve
replicas), which inherit or are forwarded ``GIELLM_*`` variables, call it the same way and log at
the same level. ``-q`` also quiets the third-party loggers we start (Ray Data's plan and progress
bars, transformers) to warnings. Command results (summaries, tables) still go to stdout.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "giellm_ray"
ENV_LEVEL = "GIELLM_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
SERVE_LOGGER = "ray.serve"
# Libraries whose INFO chatter is not ours: quiet unless the user asks for DEBUG.
THIRD_PARTY = ("ray.data", "ray.train", "ray.tune", "transformers", "deepspeed", "vllm")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so captured or redirected stderr works)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; always follow sys.stderr
        pass


def level_from_flags(verbose: int = 0, quiet: int = 0) -> str:
    """``-v`` → DEBUG, ``-q`` → WARNING, ``-qq`` → ERROR, neither → ``GIELLM_LOG_LEVEL`` or INFO."""
    if verbose:
        return "DEBUG"
    if quiet:
        return "WARNING" if quiet == 1 else "ERROR"
    return os.environ.get(ENV_LEVEL, "INFO").upper()


def setup_logging(level: str | None = None, *, handler: bool = True) -> str:
    """Configure the ``giellm_ray`` logger once per process (idempotent); return the level name.

    ``handler=False`` in Ray worker processes (Train workers, Data actors, Serve replicas): Ray
    gives their root logger a handler that already streams to the driver, so ours would print
    every line twice; there only the level is set.
    """
    name = (level or os.environ.get(ENV_LEVEL) or "INFO").upper()
    if not isinstance(logging.getLevelName(name), int):  # not a level name
        name = "INFO"
    root = logging.getLogger(ROOT)
    if handler and not any(isinstance(h, _StderrHandler) for h in root.handlers):
        stderr = _StderrHandler()
        stderr.setFormatter(logging.Formatter(FORMAT, DATEFMT))
        root.addHandler(stderr)
    root.setLevel(name)
    os.environ[ENV_LEVEL] = name
    quiet_level = (
        logging.DEBUG if name == "DEBUG" else max(logging.WARNING, logging.getLevelName(name))
    )
    for other in THIRD_PARTY:
        logging.getLogger(other).setLevel(quiet_level)
    logging.getLogger(SERVE_LOGGER).setLevel(name)  # our replica modules log there (see above)
    return name


def serve_log_level() -> str:
    """The level for Serve replicas' ``logging_config``: this process's, as set by
    :func:`setup_logging` (``GIELLM_LOG_LEVEL``), else INFO."""
    name = os.environ.get(ENV_LEVEL, "INFO").upper()
    return name if isinstance(logging.getLevelName(name), int) else "INFO"


def quiet_ray_data_console() -> None:
    """Keep Ray Data's plan and progress blocks off the console (its log file keeps them).

    ``import ray.data`` installs its own console handler at INFO, so this runs after that import
    (the score and train drivers call it): the console then shows Ray Data's warnings only, or
    everything at ``-v``. Our own progress line (rows, rows/s, ETA) replaces its blocks. Its
    notice that the bars are off is dropped: we turn them off on purpose.
    """
    ours = logging.getLogger(ROOT).getEffectiveLevel()
    level = logging.DEBUG if ours <= logging.DEBUG else logging.WARNING
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):  # the console, not the session log file
            handler.setLevel(level)
            drop_notice(handler, "Progress bars disabled")


def quiet_deepspeed_scheduler_notice() -> None:
    """Drop DeepSpeed's "get learning rate ... before it has started" warning: its WarmupLR,
    WarmupDecayLR and WarmupCosineLR constructors call ``get_lr`` themselves, so every training
    run printed it once per rank, about nothing we did. Its other warnings stay."""
    # deepspeed.utils.logging's logger (its own handler, no propagation)
    drop_notice(logging.getLogger("DeepSpeed"), "Attempting to get learning rate from scheduler")


SERVE_BATCH_BOUND_NOTICE = "`max_batch_size` ("


def quiet_serve_batch_bound_notice() -> None:
    """Drop Serve's "``max_batch_size`` * ``max_concurrent_batches`` is larger than
    ``max_ongoing_requests``" warning in a model replica. Our coalescer hands ``@serve.batch``
    one-row fragments, so that product is not a row count (``serve.config.BatchingConfig``);
    every replica start printed the warning, suggesting a misconfiguration that is not one."""
    drop_notice(
        logging.getLogger(SERVE_LOGGER), SERVE_BATCH_BOUND_NOTICE, contains="max_ongoing_requests"
    )


def drop_notice(target: logging.Filterer, prefix: str, contains: str = "") -> None:
    """Drop records whose message starts with ``prefix`` (and holds ``contains``) at ``target``,
    a logger or a handler; adding the same notice twice adds one filter."""
    if not any(
        isinstance(f, _DropNotice) and (f.prefix, f.contains) == (prefix, contains)
        for f in target.filters
    ):
        target.addFilter(_DropNotice(prefix, contains))


class _DropNotice(logging.Filter):
    """Drops one third-party notice, matched on its text (see :func:`drop_notice`)."""

    def __init__(self, prefix: str, contains: str = "") -> None:
        super().__init__()
        self.prefix, self.contains = prefix, contains

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith(self.prefix) and self.contains in msg)


def is_quiet() -> bool:
    """True when progress (INFO) lines are off, e.g. to turn progress bars off too."""
    return not logging.getLogger(ROOT).isEnabledFor(logging.INFO)
