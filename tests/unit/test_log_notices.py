"""The third-party notices we drop (DeepSpeed's scheduler notice, Serve's batch-bound notice), and
only those."""

from __future__ import annotations

import logging
from contextlib import contextmanager


@contextmanager
def _messages(logger_name: str):
    """The messages that reach ``logger_name``'s handlers while inside; its filters restored."""
    log = logging.getLogger(logger_name)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    collect, old_filters = Collect(), list(log.filters)
    log.addHandler(collect)
    try:
        yield log, seen
    finally:
        log.removeHandler(collect)
        log.filters[:] = old_filters


def test_deepspeed_scheduler_notice_dropped_other_warnings_kept():
    """DeepSpeed's warmup schedulers warn from their own constructor; the filter the training
    engine installs drops that line only (checked on the real scheduler class)."""
    import torch
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    from giellm_ray.log import quiet_deepspeed_scheduler_notice

    def build():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        WarmupDecayLR(opt, total_num_steps=10, warmup_num_steps=2)

    with _messages("DeepSpeed") as (ds, seen):
        old_filters = len(ds.filters)
        build()
        assert any(m.startswith("Attempting to get learning rate") for m in seen)  # the notice
        seen.clear()
        quiet_deepspeed_scheduler_notice()
        quiet_deepspeed_scheduler_notice()  # idempotent: one filter
        build()
        ds.warning("a real DeepSpeed warning")
        assert seen == ["a real DeepSpeed warning"]
        assert len(ds.filters) == old_filters + 1


def test_serve_batch_bound_notice_dropped_other_serve_warnings_kept():
    """The model replica drops Serve's max_batch_size * max_concurrent_batches notice (the
    coalescer makes that product meaningless) and nothing else Serve says; the prefix we match is
    read from Ray's own source, so a Ray upgrade that rewords the notice fails here."""
    import inspect

    from ray.serve.batching import _BatchQueue

    from giellm_ray.log import SERVE_BATCH_BOUND_NOTICE, quiet_serve_batch_bound_notice

    source = inspect.getsource(_BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests)
    assert f'f"{SERVE_BATCH_BOUND_NOTICE}{{self.max_batch_size}})' in source
    with _messages("ray.serve") as (serve_log, seen):
        notice = (
            "`max_batch_size` (16) * `max_concurrent_batches` (32) is larger than "
            "`max_ongoing_requests` (64). This means the replica will never achieve ..."
        )
        serve_log.warning(notice)
        assert seen == [notice]
        quiet_serve_batch_bound_notice()
        quiet_serve_batch_bound_notice()
        serve_log.warning(notice)
        serve_log.warning("Replica failed its health check")
        assert seen == [notice, "Replica failed its health check"]


def test_verbosity_reaches_the_serve_modules_logger(monkeypatch):
    """The replica-side Serve modules log to "ray.serve": -q / -v set its level too, here and (as
    the replicas' logging_config) in the replicas."""
    from giellm_ray.log import ENV_LEVEL, ROOT, serve_log_level, setup_logging

    serve_log, ours = logging.getLogger("ray.serve"), logging.getLogger(ROOT)
    old = (serve_log.level, ours.level)
    monkeypatch.delenv(ENV_LEVEL, raising=False)
    try:
        assert serve_log_level() == "INFO"
        for level in ("WARNING", "DEBUG", "INFO"):
            setup_logging(level, handler=False)
            assert logging.getLevelName(serve_log.level) == level == serve_log_level()
    finally:
        serve_log.setLevel(old[0])
        ours.setLevel(old[1])
