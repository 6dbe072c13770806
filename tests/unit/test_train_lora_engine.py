"""LoRA under DeepSpeed in one real process (ZeRO-2, gloo, CPU): the trainable-parameter count is
what the config implies (``r x (in + out)`` per adapted linear layer), the frozen base weights are
bitwise unchanged after optimizer steps while the adapter moved, and a checkpoint holds the
adapter and its optimizer state only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import glob, json, os, sys
import torch
import deepspeed
from transformers import AutoModelForCausalLM
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import build_ds_config
from giellm_ray.train.deepspeed_init import build_ds_engine
from giellm_ray.train.lora import drop_frozen_aliases, parameter_counts

model_dir, ckpt = sys.argv[1], sys.argv[2]
deepspeed.init_distributed(dist_backend="gloo")
cfg = TrainConfig.model_validate({
    "model": {"name_or_path": model_dir}, "zero_stage": 2, "num_workers": 1, "lr": 1e-2,
    "warmup_ratio": 0, "scheduler": "constant",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}})
base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
implied = sum(cfg.lora.r * (m.in_features + m.out_features) for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in cfg.lora.target_modules)
base_state = {k: v.clone() for k, v in base.state_dict().items()}
engine, _ = build_ds_engine(cfg, model_dir, build_ds_config(cfg, 8, 1))
trainable, total = parameter_counts(engine.module)
adapter0 = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
ids = torch.randint(3, 100, (2, 16))
for _ in range(3):
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
after = engine.module.get_base_model().state_dict()
frozen = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
unchanged = sorted(base_state) == sorted(frozen) and all(
    torch.equal(base_state[k], frozen[k]) for k in base_state)
moved = any(not torch.equal(adapter0[n], p) for n, p in engine.module.named_parameters()
            if p.requires_grad)
engine.save_checkpoint(ckpt, tag="ds", exclude_frozen_parameters=True)
drop_frozen_aliases(ckpt, "ds", engine.module)  # what the Checkpointer does on rank 0
files = {os.path.relpath(f, ckpt): os.path.getsize(f)
         for f in glob.glob(f"{ckpt}/ds/*.pt")}
saved = torch.load(f"{ckpt}/ds/mp_rank_00_model_states.pt", weights_only=False)["module"]
print("RESULT " + json.dumps({
    "implied": implied, "trainable": trainable, "total": total,
    "base_total": sum(v.numel() for v in base.parameters()), "unchanged": unchanged,
    "moved": moved, "files": files, "saved_keys": sorted(saved)}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lora_trains_the_adapter_only_and_checkpoints_it_alone(tiny_model_dir, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DS_ACCELERATOR": "cpu",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
    }
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, tiny_model_dir, str(tmp_path / "ck")],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["trainable"] == out["implied"] > 0
    assert out["total"] == out["base_total"] + out["implied"]
    assert out["unchanged"], "a frozen base weight changed"
    assert out["moved"], "the adapter did not train"
    assert out["saved_keys"] and all("lora_" in k for k in out["saved_keys"])
    base_bytes = os.path.getsize(os.path.join(tiny_model_dir, "model.safetensors"))
    assert sum(out["files"].values()) < base_bytes / 4  # adapter + its Adam state, no base
