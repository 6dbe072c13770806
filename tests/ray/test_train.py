"""Ray Train + DeepSpeed on 2 CPU workers with the tiny model: loss falls, a worker dies and the
run resumes from its last checkpoint, ZeRO-3 exports a model that loads and generates, and an
explicit ``resume_from`` continues an earlier run."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray.config import load_config
from giellm_ray.sample import sample_path
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.driver import run_training

pytestmark = pytest.mark.ray

BASE = [
    "epochs=3", "lr=1e-2", "per_device_batch_size=4", "num_workers=2", "log_every_steps=1",
    "resources_per_worker={CPU: 0.75}", "data.max_length=256", "keep_checkpoints=2",
]


def _corpus(tmp_path, rows: int, name: str) -> str:
    """A small memorisable corpus: ``rows`` distinct rows of the shipped sample, repeated x4."""
    table = pq.read_table(sample_path("train")).slice(0, rows)
    path = tmp_path / name
    pq.write_table(pa.concat_tables([table] * 4), path)
    return str(path)


def _cfg(tmp_path, model: str, *extra: str) -> TrainConfig:
    return load_config(TrainConfig, None, [
        *BASE, f"model.name_or_path={model}", f"storage_path={tmp_path / 'runs'}", *extra])


@pytest.fixture(scope="module")
def zero2_run(ray_cluster, tiny_model_dir, tmp_path_factory):
    """ZeRO-2, 64 rows, 3 epochs; worker 1 raises once at step 7 (after the step-5 checkpoint)."""
    tmp = tmp_path_factory.mktemp("zero2")
    marker = tmp / "failed-once"
    cfg = _cfg(tmp, tiny_model_dir, f"data.train={_corpus(tmp, 16, 'train.parquet')}",
               "zero_stage=2", "checkpoint_every_steps=5", "max_failures=1", "run_name=z2",
               f"fault_injection={{fail_at_step: 7, marker: {marker}, rank: 1}}")
    return cfg, run_training(cfg), marker


@pytest.mark.timeout(240)
def test_zero2_loss_falls_and_failed_worker_resumes(zero2_run):
    cfg, result, marker = zero2_run
    m = result.metrics
    assert marker.exists(), "the fault hook never fired"
    assert m["resumed_from_step"] == 5  # restarted from the last checkpoint, not from scratch
    assert m["step"] == m["total_steps"] == 24  # 64 rows / (2 workers x 4) = 8 steps x 3 epochs
    ckpts = sorted(os.listdir(cfg.run_dir()))
    assert len([c for c in ckpts if c.startswith("checkpoint_2")]) <= cfg.keep_checkpoints
    with open(os.path.join(result.checkpoint, "train_state.json")) as f:
        state = json.load(f)
    assert (state["epoch"], state["batch"], state["step"]) == (3, 0, 24)
    assert m["data_kept"] == 64


@pytest.mark.timeout(240)
def test_zero2_loss_falls_on_memorisable_corpus(zero2_run):
    _, result, _ = zero2_run
    first, last = result.metrics["first_loss"], result.metrics["final_loss"]
    assert last < 0.6 * first, f"loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.timeout(240)
def test_explicit_resume_continues_earlier_run(zero2_run, tmp_path):
    cfg, result, _ = zero2_run
    more = cfg.model_copy(update={"epochs": 4, "run_name": "z2-more", "resume_from":
                                  result.checkpoint, "fault_injection": None, "export": False})
    again = run_training(more)
    assert again.metrics["resumed_from_step"] == 24
    assert again.metrics["step"] == 32


@pytest.mark.timeout(240)
def test_zero3_tiny_preset_eval_and_export_loads(ray_cluster, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    eval_path = tmp_path / "eval.parquet"
    pq.write_table(pq.read_table(sample_path("test")).slice(0, 8), eval_path)
    cfg = _cfg(tmp_path, "tiny", f"data.train={_corpus(tmp_path, 8, 'train.parquet')}",
               f"data.eval={eval_path}", "zero_stage=3", "epochs=1", "run_name=z3",
               "eval.max_new_tokens=8", "eval.batch_size=4",
               "tiny={vocab_size: 600, hidden_size: 32, intermediate_size: 64}")
    result = run_training(cfg)
    m = result.metrics
    assert m["eval_loss"] > 0 and m["eval_target_tokens"] > 0
    counts = json.loads(m["eval_counts"])
    assert sum(c["n"] for c in counts.values()) == 8  # both workers' shards merged
    export = result.export_dir
    assert os.path.exists(os.path.join(export, "model.safetensors"))
    assert os.path.exists(os.path.join(export, "eval", "metrics.json"))
    resolved = load_config(TrainConfig, os.path.join(export, "train_config.yaml"))
    assert resolved.model.name_or_path.endswith("base-model") and resolved.zero_stage == 3
    model = AutoModelForCausalLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert model.config.hidden_size == 32
    ids = tok(["鈴木一郎の小説は"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # The export is the trained model, not the base: ZeRO-3 shards were gathered, not lost.
    base = AutoModelForCausalLM.from_pretrained(resolved.model.name_or_path)
    diff = [not torch.equal(p, q) for p, q in zip(model.parameters(), base.parameters(),
                                                   strict=True)]
    assert any(diff) and all(p.abs().sum() > 0 for p in model.parameters())


@pytest.mark.timeout(300)
def test_cli_train_shipped_config_from_another_directory(ray_cluster, tmp_path, monkeypatch):
    """``giellm train --config <abs>/tiny-cpu.yaml`` from a directory that is not the clone:
    the config names the shipped sample as ``sample:train``, so nothing is cwd-relative."""
    from pathlib import Path

    from giellm_ray.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GIELLM_LOG_LEVEL", raising=False)  # main() writes it; undone after
    config = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "train" / "tiny-cpu.yaml"
    rc = main(["train", "--config", str(config), "--set", "max_steps=2",
               "--set", "storage_path=runs", "--set", "data.eval=null",
               "--set", "checkpoint_every_steps=null", "--set", "log_every_steps=1"])
    assert rc == 0
    export = tmp_path / "runs" / "tiny-cpu" / "export"
    assert (export / "model.safetensors").is_file() and (export / "train_config.yaml").is_file()
    resolved = load_config(TrainConfig, str(export / "train_config.yaml"))
    assert resolved.data.train == sample_path("train") and resolved.max_steps == 2
