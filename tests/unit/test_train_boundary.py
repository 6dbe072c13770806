"""The train driver's typed boundary with its workers, the shared tiny-base builder and
``io.absolute``, ``giellm train --model``, and training's evaluation through the Extractor with the
run's own task inventory (a dataset the default registry does not know is generated and counted
only when ``TrainConfig.tasks`` names it)."""

from __future__ import annotations

import json
import os
import pickle

import pyarrow.parquet as pq
import pytest

from giellm_ray import io
from giellm_ray.cli import build_parser
from giellm_ray.config import ConfigError, load_config
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.sample import sample_path
from giellm_ray.train.config import TrainConfig, WorkerConfig


def _registry_with(name: str, like: str = "TCREE") -> dict:
    tasks = DEFAULT_REGISTRY.to_dict()
    tasks[name] = {**tasks[like], "name": name}
    return tasks


def test_worker_config_is_typed_and_survives_pickling():
    cfg = load_config(TrainConfig, None, ["model.name_or_path=tiny", "num_workers=2"])
    worker = WorkerConfig(
        train=cfg,
        model_path="/m",
        export_dir="/e",
        has_eval=True,
        eval_metrics=True,
        eval_max_rows_per_rank=3,
        tasks=_registry_with("MYTASK"),
    )
    back = pickle.loads(pickle.dumps(worker))
    assert back.train == cfg and back.model_path == "/m" and back.eval_max_rows_per_rank == 3
    assert "MYTASK" in back.registry() and "MYTASK" not in DEFAULT_REGISTRY
    assert WorkerConfig(train=cfg, model_path="/m", export_dir="/e").registry() is DEFAULT_REGISTRY
    with pytest.raises(ValueError, match="extra"):
        WorkerConfig(train=cfg, model_path="/m", export_dir="/e", has_evl=True)


def test_train_config_tasks_field_and_cli_model_flag():
    cfg = load_config(TrainConfig, None, ["tasks=/x/tasks.json"])
    assert cfg.tasks == "/x/tasks.json"
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, None, ["task=/x/tasks.json"])
    args = build_parser().parse_args(["train", "--model", "tiny", "--set", "lr=1e-3"])
    assert args.model == "tiny" and args.set == ["lr=1e-3"]


def test_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert io.absolute("runs") == str(tmp_path / "runs")
    assert io.absolute("~/x") == os.path.expanduser("~/x")
    assert io.absolute("s3://b/p/") == "s3://b/p"


def test_tiny_from_corpus_is_reused_only_with_the_same_settings(tmp_path):
    from giellm_ray.model.tiny import TINY_MARKER, TinyConfig, build_tiny_from_corpus

    corpus = tmp_path / "c.parquet"
    pq.write_table(pq.read_table(sample_path("train")).slice(0, 20), corpus)
    small = TinyConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=300,
    )
    dest = str(tmp_path / "base")
    assert build_tiny_from_corpus(dest, [str(corpus)], small) == dest
    marker = os.path.join(dest, TINY_MARKER)
    assert json.loads(io.read_text(marker))["hidden_size"] == 32
    t0 = os.path.getmtime(os.path.join(dest, "config.json"))
    build_tiny_from_corpus(dest, [str(corpus)], small, reuse=True)
    assert os.path.getmtime(os.path.join(dest, "config.json")) == t0  # reused
    build_tiny_from_corpus(dest, [str(corpus)], small.model_copy(update={"seed": 1}), reuse=True)
    assert json.loads(io.read_text(marker))["seed"] == 1  # other settings: rebuilt


def test_training_eval_generates_through_the_extractor_with_the_runs_tasks(tiny_model_dir):
    from giellm_ray.formats import build_prompt
    from giellm_ray.metrics import count_rows
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer
    from giellm_ray.train.evaluation import greedy_generate

    rows = pq.read_table(sample_path("test")).to_pylist()
    base = [r for r in rows if r["dataset"] == "SCNM"][:2]
    # A task the default registry lacks (as TCREE's learned labels are in a tasks.json).
    registry = TaskRegistry.from_dict(_registry_with("MYTASK", like="SCNM"))
    mine = [
        {**r, "dataset": "MYTASK", "prompt": build_prompt(r["text"], registry["MYTASK"])}
        for r in base
    ]
    cfg = load_config(
        TrainConfig,
        None,
        [f"model.name_or_path={tiny_model_dir}", "eval.max_new_tokens=24", "eval.batch_size=2"],
    )
    model_cfg = ModelConfig(name_or_path=tiny_model_dir)
    model, tok = load_model(model_cfg, "cpu"), load_tokenizer(model_cfg)
    preds = greedy_generate(model, tok, mine, cfg, 1, False, "cpu", registry)
    default = greedy_generate(model, tok, mine, cfg, 1, False, "cpu")
    assert all(isinstance(p, str) for p in preds)  # generated, under MYTASK's constraint
    assert default == [None, None]  # the default registry does not know MYTASK
    counts = count_rows([r["dataset"] for r in mine], [r["target"] for r in mine], preds, registry)
    assert counts["MYTASK"]["n"] == 2 and counts["MYTASK"]["invalid_targets"] == 0
