"""LoRA under Ray Train + DeepSpeed on 2 CPU workers with the tiny model: 3 optimizer steps (the
warmup schedule runs the first two at lr 0 in DeepSpeed, so the third is the one that moves), a
worker failing after the step-1 adapter checkpoint and the group resuming from it, the
trainable-parameter count the config implies, checkpoints without the base, and the export: an
adapter directory PEFT loads (naming its base) and, with ``export.merge``, a merged model whose
logits match base + adapter. QLoRA needs CUDA (``gpu``)."""

from __future__ import annotations

import glob
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray.config import load_config
from giellm_ray.sample import sample_path
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.driver import run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LORA = "lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}"


def _corpus(tmp_path, rows: int) -> str:
    table = pq.read_table(sample_path("train")).slice(0, rows)
    path = tmp_path / "train.parquet"
    pq.write_table(pa.concat_tables([table] * 2), path)
    return str(path)


def _state(ckpt: str) -> dict:
    with open(os.path.join(ckpt, "train_state.json")) as f:
        return json.load(f)


def _implied(model, r: int, targets: list[str]) -> int:
    import torch

    return sum(
        r * (m.in_features + m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets
    )


@pytest.mark.timeout(600)
def test_lora_two_steps_resume_and_export(ray_cluster, tiny_model_dir, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    marker = tmp_path / "failed-once"
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"storage_path={tmp_path / 'runs'}",
            f"data.train={_corpus(tmp_path, 8)}",
            "num_workers=2",
            "per_device_batch_size=2",
            "resources_per_worker={CPU: 0.75}",
            "data.max_length=256",
            "lr=1e-2",
            "max_steps=3",
            "epochs=1",
            "log_every_steps=1",
            "checkpoint_every_steps=1",
            "max_failures=1",
            "run_name=lora",
            "keep_checkpoints=3",
            LORA,
            "export.merge=true",
            f"fault_injection={{fail_at_step: 1, marker: {marker}, rank: 1}}",
        ],
    )
    result = run_training(cfg)
    m = result.metrics
    assert marker.exists() and m["resumed_from_step"] == 1 and m["step"] == 3
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert m["trainable_params"] == _implied(base, 4, ["q_proj", "v_proj"]) > 0
    # The step-1 checkpoint holds the adapter and its optimizer state, not the base.
    base_bytes = os.path.getsize(os.path.join(tiny_model_dir, "model.safetensors"))
    full = [
        d
        for d in glob.glob(str(tmp_path / "runs" / "lora") + "/checkpoint_*/")
        if not _state(d)["weights_only"]
    ]
    assert full, "no adapter checkpoint was kept"
    for d in full:
        size = sum(os.path.getsize(f) for f in glob.glob(f"{d}/ds/*.pt"))
        assert 0 < size < base_bytes / 4

    adapter = os.path.join(result.export_dir, "adapter")
    with open(os.path.join(adapter, "adapter_config.json")) as f:
        acfg = json.load(f)
    assert acfg["base_model_name_or_path"] == tiny_model_dir and acfg["r"] == 4
    assert os.path.exists(os.path.join(adapter, "adapter_model.safetensors"))
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    merged = AutoModelForCausalLM.from_pretrained(
        os.path.join(result.export_dir, "merged"), dtype=torch.float32
    ).eval()
    ids = torch.randint(3, 100, (2, 12))
    with torch.no_grad():
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
        adapted = peft_model(input_ids=ids).logits
        merged_logits = merged(input_ids=ids).logits
    assert not torch.allclose(plain, adapted)  # the adapter was trained (B moved off zero)
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_qlora_two_steps_on_gpu(ray_cluster, tiny_model_dir, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = load_config(
        TrainConfig,
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"storage_path={tmp_path / 'runs'}",
            f"data.train={_corpus(tmp_path, 8)}",
            "num_workers=1",
            "use_gpu=true",
            "max_steps=2",
            "epochs=1",
            "run_name=qlora",
            "data.max_length=256",
            "lora={r: 4, target_modules: [q_proj, v_proj], quantize: 4bit}",
        ],
    )
    result = run_training(cfg)
    assert result.metrics["step"] == 2
    assert os.path.exists(os.path.join(result.export_dir, "adapter", "adapter_config.json"))
