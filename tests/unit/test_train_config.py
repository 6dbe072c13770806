"""Training config: every shipped YAML validates, typos are errors, the DeepSpeed dict is right."""

from __future__ import annotations

from pathlib import Path

import pytest

from giellm_ray.config import ConfigError, load_config
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import (
    build_ds_config,
    total_optimizer_steps,
    uses_ds_optimizer,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "train"
SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
PAPER = {
    "giellm-7b": "meta-llama/Llama-2-7b-hf",
    "giellm-13b": "meta-llama/Llama-2-13b-hf",
    "giellm-13b-jp": "llm-jp/llm-jp-13b-instruct-full-jaster-dolly-oasst-v1.0",
}


def test_all_expected_configs_are_shipped():
    assert {p.stem for p in SHIPPED} >= {"tiny-cpu", *PAPER}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_validates(path):
    cfg = load_config(TrainConfig, str(path))
    assert cfg.data.train
    build_ds_config(cfg, total_steps=100, world_size=cfg.num_workers)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes(name):
    cfg = load_config(TrainConfig, str(CONFIG_DIR / f"{name}.yaml"))
    assert cfg.model.name_or_path == PAPER[name]
    assert (cfg.epochs, cfg.lr, cfg.per_device_batch_size, cfg.num_workers) == (3, 1e-5, 1, 8)
    # ZeRO-2: it fits 13B on 8 x 80 GB (~59 GB/GPU) and moves 45.5 GB/step/GPU vs ZeRO-3's 68
    # (the arithmetic is in the config's header).
    assert cfg.use_gpu and cfg.zero_stage == 2 and cfg.resolved_precision() == "bf16"
    assert cfg.storage_path.startswith("s3://")
    # A 13B checkpoint is 156-182 GB: epoch ends only, staged on NVMe, uploaded in the background.
    assert cfg.checkpoint_every_steps is None and cfg.checkpoint_upload_mode == "async"
    assert cfg.checkpoint_staging_dir == "auto" and not cfg.trust_checkpoint
    assert cfg.generation_eval(1000)  # ZeRO-2: the constrained HF engine generates
    zero3 = cfg.model_copy(update={"zero_stage": 3})
    assert not zero3.generation_eval(1000)  # ZeRO-3: eval loss only; `giellm score` the export


def test_tiny_cpu_uses_shipped_sample_and_zero2():
    cfg = load_config(TrainConfig, str(CONFIG_DIR / "tiny-cpu.yaml"))
    root = CONFIG_DIR.parents[2]
    assert (root / cfg.data.train).exists() and (root / cfg.data.eval).exists()
    assert cfg.zero_stage == 2 and not cfg.use_gpu and cfg.num_workers == 2


@pytest.mark.parametrize("override", ["lr_rate=1e-5", "data.trian=x.parquet", "model.nme=tiny"])
def test_unknown_key_is_an_error(override):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, str(CONFIG_DIR / "tiny-cpu.yaml"), [override])


def test_bad_values_are_errors():
    with pytest.raises(ConfigError, match="zero_stage"):
        load_config(TrainConfig, None, ["zero_stage=1"])
    with pytest.raises(ConfigError, match="overlong"):
        load_config(TrainConfig, None, ["data.overlong=cut_target"])


def test_ds_config_zero3_gpu_bf16():
    cfg = TrainConfig(
        zero_stage=3, use_gpu=True, grad_accum=4, per_device_batch_size=1, warmup_ratio=0.1, lr=1e-5
    )
    ds = build_ds_config(cfg, total_steps=200, world_size=8)
    assert ds["train_batch_size"] == 32 and ds["gradient_accumulation_steps"] == 4
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert ds["optimizer"]["type"] == "AdamW" and ds["optimizer"]["params"]["lr"] == 1e-5
    sched = ds["scheduler"]
    assert sched["type"] == "WarmupDecayLR"
    assert sched["params"]["total_num_steps"] == 200 and sched["params"]["warmup_num_steps"] == 20
    assert sched["params"]["warmup_max_lr"] == 1e-5


def test_ds_config_zero2_cpu_fp32_uses_torch_optimizer():
    cfg = TrainConfig(zero_stage=2, use_gpu=False)
    ds = build_ds_config(cfg, total_steps=10, world_size=2)
    assert not ds["bf16"]["enabled"] and cfg.resolved_precision() == "fp32"
    assert ds["zero_optimization"]["stage"] == 2
    assert "stage3_gather_16bit_weights_on_model_save" not in ds["zero_optimization"]
    assert not uses_ds_optimizer(cfg) and "optimizer" not in ds


def test_ds_config_offload_and_schedules():
    cfg = TrainConfig(zero_stage=3, cpu_offload=True, scheduler="warmup_cosine")
    ds = build_ds_config(cfg, total_steps=50, world_size=2)
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert uses_ds_optimizer(cfg) and ds["optimizer"]["type"] == "AdamW"
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    const = build_ds_config(TrainConfig(scheduler="constant"), 50, 2)["scheduler"]
    assert const["type"] == "WarmupLR"


def test_total_steps_use_whole_accumulation_windows():
    assert total_optimizer_steps(batches_per_epoch=10, grad_accum=4, epochs=3) == 6
    assert total_optimizer_steps(batches_per_epoch=8, grad_accum=1, epochs=3) == 24


def test_storage_path_defaults_to_giellm_storage(monkeypatch):
    monkeypatch.delenv("GIELLM_STORAGE", raising=False)
    assert load_config(TrainConfig).storage_path == "./runs"
    monkeypatch.setenv("GIELLM_STORAGE", "s3://bucket/giellm/")
    cfg = load_config(TrainConfig)
    assert cfg.storage_path == "s3://bucket/giellm/runs"
    assert cfg.run_dir() == "s3://bucket/giellm/runs/giellm-sft"
    assert load_config(TrainConfig, None, ["storage_path=/data/runs"]).storage_path == "/data/runs"
    tiny = load_config(TrainConfig, str(CONFIG_DIR / "tiny-cpu.yaml"))
    assert tiny.storage_path == "./runs"  # set in the file, so the environment does not apply


def test_checkpoints_at_epoch_ends_by_default():
    from giellm_ray.train.loop import checkpoint_due

    cfg = TrainConfig()
    assert cfg.checkpoint_every_steps is None and cfg.checkpoint_upload_mode == "async"
    assert not any(checkpoint_due(cfg, step) for step in range(1, 2000))
    every = cfg.model_copy(update={"checkpoint_every_steps": 500})
    assert [s for s in range(1, 1200) if checkpoint_due(every, s)] == [500, 1000]


def test_generation_eval_policy():
    cfg = TrainConfig(zero_stage=2)
    assert cfg.generation_eval(2000) and not cfg.generation_eval(2001)  # auto_max_rows
    assert not cfg.generation_eval(0)
    z3 = TrainConfig(zero_stage=3)
    assert not z3.generation_eval(10)  # auto at ZeRO-3: no per-token model gathers
    on = z3.model_copy(update={"eval": z3.eval.model_copy(update={"metrics": "on"})})
    assert on.generation_eval(10)
    off = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"metrics": "off"})})
    assert not off.generation_eval(10)
    # YAML's bare on/off are booleans: `--set eval.metrics=on` still means "on".
    assert load_config(TrainConfig, None, ["eval.metrics=on"]).eval.metrics == "on"
    assert load_config(TrainConfig, None, ["eval.metrics=off"]).eval.metrics == "off"


def test_fault_injection_modes():
    cfg = load_config(
        TrainConfig,
        None,
        ["fault_injection={fail_at_step: 8, marker: /tmp/m, mode: kill_after_checkpoint}"],
    )
    assert cfg.fault_injection.mode == "kill_after_checkpoint"
    with pytest.raises(ConfigError, match="mode"):
        load_config(TrainConfig, None, ["fault_injection={fail_at_step: 8, marker: m, mode: x}"])
    with pytest.raises(ConfigError, match="checkpoint_upload_mode"):
        load_config(TrainConfig, None, ["checkpoint_upload_mode=later"])


@pytest.mark.parametrize(
    "name,quantize", [("giellm-13b-jp-lora", "none"), ("giellm-13b-jp-qlora", "4bit")]
)
def test_lora_configs_run_on_one_gpu(name, quantize):
    cfg = load_config(TrainConfig, str(CONFIG_DIR / f"{name}.yaml"))
    assert cfg.lora is not None and cfg.lora.quantize == quantize and cfg.lora.r == 16
    assert cfg.num_workers == 1 and cfg.use_gpu and cfg.zero_stage == 2
    assert cfg.export.enabled and not cfg.export.merge


def test_lora_and_export_settings():
    cfg = load_config(TrainConfig, None, ["lora.r=8", "export=false"])
    assert cfg.lora.r == 8 and cfg.lora.target_modules is None and not cfg.export.enabled
    merged = load_config(TrainConfig, None, ["lora.r=8", "export.merge=true"])
    assert merged.export.enabled and merged.export.merge
    with pytest.raises(ConfigError, match="needs CUDA"):
        load_config(TrainConfig, None, ["lora.quantize=4bit"])
    with pytest.raises(ConfigError, match="needs lora"):
        load_config(TrainConfig, None, ["export.merge=true"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(TrainConfig, None, ["lora.rank=8"])
