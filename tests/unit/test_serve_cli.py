"""``giellm serve`` argument handling: flags and ``--set`` reach the typed config, typos and
missing models are clean exit-2 errors (no Ray started), and ``build_app`` args parse like
``serve run`` passes them."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from giellm_ray.cli import build_parser, main
from giellm_ray.config import ConfigError
from giellm_ray.serve.cli import resolve_config

CONFIG = str(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "serve" / "giellm.yaml")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_flags_and_overrides_reach_the_config():
    cfg = resolve_config(
        _args(
            "--model",
            "/m",
            "--config",
            CONFIG,
            "--set",
            "batching.max_batch_size=32",
            "--port",
            "8123",
        )
    )
    assert cfg.model.name_or_path == "/m" and cfg.http.port == 8123
    assert cfg.http.host == "127.0.0.1" and cfg.batching.max_batch_size == 32
    assert cfg.served_model_name == "m" and cfg.concurrent_batches == 64


def test_typo_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config(_args("--model", "/m", "--set", "batching.max_batchsize=4"))
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        resolve_config(_args("--model", "/m", "--set", "batching.max_batch_size=128"))
    with pytest.raises(ValueError, match="--model"):
        resolve_config(_args())


def test_missing_model_dir_exits_2_before_ray(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope"), "--port", "1"]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_build_app_args_like_serve_run():
    from giellm_ray.serve.app import config_from_args

    cfg = config_from_args(
        {
            "model": "/m",
            "batching.max_batch_size": "8",
            "replica": {"num_cpus": 0.5, "max_replicas": 3},
            "http.port": 9000,
        }
    )
    assert (
        cfg.batching.max_batch_size,
        cfg.replica.num_cpus,
        cfg.replica.max_replicas,
        cfg.http.port,
    ) == (8, 0.5, 3, 9000)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_args({"model": "/m", "batching.size": "8"})
