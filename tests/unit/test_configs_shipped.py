"""Shipped configs and the synthetic sample resolve from any directory; the task registry loader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from giellm_ray.config import load_config
from giellm_ray.configs import config_path
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.sample import sample_path
from giellm_ray.score.config import ScoreConfig
from giellm_ray.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_configs_and_sample_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the repository root
    cfg = load_config(TrainConfig, config_path("train", "tiny-cpu.yaml"))
    assert cfg.data.train == sample_path("train") and os.path.isfile(cfg.data.train)
    assert cfg.data.eval == sample_path("test") and os.path.isfile(cfg.data.eval)
    score = load_config(ScoreConfig, config_path("score", "cpu.yaml"), ['input=["sample:test"]'])
    assert score.input == [sample_path("test")]
    # jobs/configs (what the README and `ray job submit` name) is the same directory.
    assert (ROOT / "jobs" / "configs" / "train" / "tiny-cpu.yaml").read_bytes() == Path(
        config_path("train", "tiny-cpu.yaml")
    ).read_bytes()
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
