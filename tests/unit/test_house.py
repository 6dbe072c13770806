"""The shared plumbing every command uses: shipped configs and sample from any directory, the task
registry loader, verbosity flags, the dependency check before Ray starts, and what a joined Ray
cluster's workers are sent of the environment, and the third-party notices we drop."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from giellm_ray.config import load_config
from giellm_ray.configs import config_path
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.ray_session import JOB_CONFIG_ENV, forwarded_env
from giellm_ray.sample import sample_path
from giellm_ray.score.config import ScoreConfig
from giellm_ray.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def _giellm(*args: str, cwd: str | None = None, prelude: str = "pass") -> subprocess.CompletedProcess:
    """``giellm ARGS`` in a fresh interpreter (``prelude`` runs first, e.g. to hide a module)."""
    code = (f"import sys; {prelude}; from giellm_ray.cli import main; rc = main({list(args)!r}); "
            "print('RAY_IMPORTED' if 'ray' in sys.modules else 'NO_RAY', file=sys.stderr); "
            "sys.exit(rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GIELLM_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_shipped_configs_and_sample_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the repository root
    cfg = load_config(TrainConfig, config_path("train", "tiny-cpu.yaml"))
    assert cfg.data.train == sample_path("train") and os.path.isfile(cfg.data.train)
    assert cfg.data.eval == sample_path("test") and os.path.isfile(cfg.data.eval)
    score = load_config(ScoreConfig, config_path("score", "cpu.yaml"), ['input=["sample:test"]'])
    assert score.input == [sample_path("test")]
    # jobs/configs (what the README and `ray job submit` name) is the same directory.
    assert (ROOT / "jobs" / "configs" / "train" / "tiny-cpu.yaml").read_bytes() == \
        Path(config_path("train", "tiny-cpu.yaml")).read_bytes()
    with pytest.raises(ValueError, match="unknown sample split"):
        load_config(TrainConfig, None, ["data.train=sample:validation"])
    with pytest.raises(FileNotFoundError, match="no shipped config"):
        config_path("train", "nope.yaml")


def test_task_registry_load(tmp_path):
    assert TaskRegistry.load(None) is DEFAULT_REGISTRY
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps(DEFAULT_REGISTRY.to_dict(), ensure_ascii=False), encoding="utf-8")
    assert TaskRegistry.load(str(path)).to_dict() == DEFAULT_REGISTRY.to_dict()
    with pytest.raises(FileNotFoundError, match="tasks file not found"):
        TaskRegistry.load(str(tmp_path / "missing.json"))
    path.write_text('{"SCNM": {"tl_labels": []}}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a tasks.json"):
        TaskRegistry.load(str(path))


def test_quiet_flag_drops_progress_lines(tmp_path):
    args = ["data", "mix", "--input", sample_path("train"), "--sizes", "SCNM=5"]
    loud = _giellm(*args, "--output", str(tmp_path / "a"))
    quiet = _giellm("-q", *args, "--output", str(tmp_path / "b"))
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "rows/s" in loud.stderr  # the progress line people rely on, by default
    assert "rows/s" not in quiet.stderr and " INFO " not in quiet.stderr
    assert json.loads(quiet.stdout)["train_rows"] == json.loads(loud.stdout)["train_rows"]


def test_missing_extra_is_one_line_before_ray_starts(tmp_path):
    proc = _giellm("train", "--config", config_path("train", "tiny-cpu.yaml"),
                   "--set", f"storage_path={tmp_path}", cwd=str(tmp_path),
                   prelude="sys.modules['deepspeed'] = None")  # as if DeepSpeed were absent
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("giellm: error:")]
    assert len(errors) == 1 and "deepspeed" in errors[0] and "extra" in errors[0]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("NO_RAY")  # Ray was never imported, let alone started
    assert not any(tmp_path.iterdir())


def test_forwarded_env_for_a_joined_cluster():
    environ = {"HF_TOKEN": "hf_x", "AWS_ACCESS_KEY_ID": "a", "AWS_ENDPOINT_URL": "http://s3",
               "GIELLM_LOG_LEVEL": "INFO", "DS_ACCELERATOR": "cuda", "HOME": "/root",
               "PATH": "/bin", "SECRET": "no"}
    env = forwarded_env(environ)
    assert env["HF_TOKEN"] == "hf_x" and env["AWS_ACCESS_KEY_ID"] == "a"
    assert env["GIELLM_LOG_LEVEL"] == "INFO" and env["DS_ACCELERATOR"] == "cuda"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert not {"HOME", "PATH", "SECRET"} & set(env)
    # Under `ray job submit`, a key the job's runtime env sets is left to it (Ray refuses a merge
    # that sets the same variable twice).
    job = {"runtime_env": {"working_dir": ".", "env_vars": {"HF_TOKEN": "from-job"}}}
    env = forwarded_env({**environ, JOB_CONFIG_ENV: json.dumps(job)})
    assert "HF_TOKEN" not in env and env["AWS_ACCESS_KEY_ID"] == "a"


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
        notice = ("`max_batch_size` (16) * `max_concurrent_batches` (32) is larger than "
                  "`max_ongoing_requests` (64). This means the replica will never achieve ...")
        serve_log.warning(notice)
        assert seen == [notice]
        quiet_serve_batch_bound_notice()
        quiet_serve_batch_bound_notice()
        serve_log.warning(notice)
        serve_log.warning("Replica failed its health check")
        assert seen == [notice, "Replica failed its health check"]
