"""The GPU optimizer choice when DeepSpeed's FusedAdam cannot be built (no nvcc, a CUDA minor
mismatch): DeepSpeed must be handed ``torch_adam`` and build ``torch.optim.AdamW(fused=True)``
instead of JIT-compiling FusedAdam. Run for real in a fresh process: the FusedAdam builder is made
incompatible, the GPU recipe's optimizer section is built from what the probe says, and
``deepspeed.initialize`` (ZeRO-2, one gloo rank on CPU) takes one optimizer step with it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import build_ds_config

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import json, sys
import torch
from deepspeed.ops.op_builder import FusedAdamBuilder
import deepspeed.git_version_info as info
from giellm_ray.train import deepspeed_init
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import build_ds_config

out = {}
FusedAdamBuilder.is_compatible = lambda self, verbose=False: False
info.installed_ops["fused_adam"] = False
out["usable_incompatible"] = deepspeed_init.fused_adam_usable()
info.installed_ops["fused_adam"] = True
out["usable_prebuilt"] = deepspeed_init.fused_adam_usable()
info.installed_ops["fused_adam"] = False

import deepspeed
from transformers import AutoModelForCausalLM

# The GPU recipe's optimizer section (fp32 so it runs on this CPU), from the probe's answer.
cfg = TrainConfig(use_gpu=True, precision="fp32", zero_stage=2, lr=1e-2, warmup_ratio=0,
                  scheduler="constant")
ds = build_ds_config(cfg, total_steps=4, world_size=1,
                     fused_adam=deepspeed_init.fused_adam_usable())
ds["zero_optimization"]["overlap_comm"] = False
out["section"] = ds["optimizer"]
deepspeed.init_distributed(dist_backend="gloo")
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
before = [p.detach().clone() for p in model.parameters()]
engine, _, _, _ = deepspeed.initialize(model=model, config=ds,
                                       model_parameters=[p for p in model.parameters()])
inner = engine.optimizer.optimizer
out["optimizer"] = f"{type(inner).__module__}.{type(inner).__name__}"
out["fused"] = inner.defaults.get("fused")
ids = torch.randint(3, 100, (2, 16))
for _ in range(3):  # the warmup starts at lr 0
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
out["changed"] = any(not torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
print("RESULT " + json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpu_recipe_asks_fused_adam_only_when_it_can_be_had():
    cfg = TrainConfig(use_gpu=True, zero_stage=2)
    fused = build_ds_config(cfg, 10, 8, fused_adam=True)["optimizer"]
    assert fused["type"] == "AdamW" and "torch_adam" not in fused["params"]
    torch_adam = build_ds_config(cfg, 10, 8, fused_adam=False)["optimizer"]["params"]
    assert torch_adam["torch_adam"] is True and torch_adam["fused"] is True
    # CPU offload builds DeepSpeedCPUAdam (no CUDA compiler involved) either way.
    offload = TrainConfig(use_gpu=True, cpu_offload=True)
    assert (
        "torch_adam" not in build_ds_config(offload, 10, 8, fused_adam=False)["optimizer"]["params"]
    )


@pytest.mark.slow
def test_incompatible_fused_adam_builder_gives_torch_adamw_under_zero2(tiny_model_dir):
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
        [sys.executable, "-c", WORKER, tiny_model_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["usable_incompatible"] is False and out["usable_prebuilt"] is True
    assert out["section"]["params"]["torch_adam"] is True
    assert out["optimizer"] == "torch.optim.adamw.AdamW" and out["fused"] is True
    assert out["changed"], "the optimizer step did not move the weights"
