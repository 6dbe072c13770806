"""Training tokens/s and model FLOPs utilisation (MFU) for a 7B-shaped Llama on one GPU, ZeRO-3.

    python -m benchmarks.gpu_train_7b [--seq 2048] [--steps 6] [--peak-tflops N]

Random-init ``LlamaForCausalLM`` with Llama-2-7B's shape (hidden 4096, 32 layers, 32 heads, MLP
11008, vocab 32000), built partitioned under ``deepspeed.zero.Init``, trained with the same
DeepSpeed config the project uses (``build_ds_config``: ZeRO-3, BF16, AdamW, warmup schedule) and
activation checkpointing. Full fine-tuning of 7B needs ~112 GB for weights + Adam state, so the
full-depth run offloads the optimizer to CPU (``cpu_adam`` is JIT-compiled on first use); the
baseline in the same invocation is the same width with 8 layers and no offload (fits on the GPU).
MFU = (6·N + 12·L·h·s)·tokens/s ÷ the device's dense BF16 peak, looked up by device name in
``giellm_ray/perf.py`` (A100/A800 312, H100/H200 989, L40S 362, A10G 125 TFLOP/s, ...); an unknown
device gets ``"mfu": null`` and ``"peak": "unknown device: NAME"`` unless ``--peak-tflops`` is
given. One JSON line per run. Without CUDA it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from giellm_ray.perf import lookup


def run(layers: int, offload: bool, args) -> dict:
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from giellm_ray.train.config import TrainConfig
    from giellm_ray.train.deepspeed_config import build_ds_config

    cfg = TrainConfig(
        zero_stage=3,
        use_gpu=True,
        cpu_offload=offload,
        precision="bf16",
        per_device_batch_size=args.batch,
        lr=1e-5,
        activation_checkpointing=True,
    )
    ds = build_ds_config(cfg, total_steps=args.steps + 10, world_size=1)
    conf = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=max(4096, args.seq),
    )
    torch.cuda.reset_peak_memory_stats()
    with deepspeed.zero.Init(config_dict_or_path=ds, dtype=torch.bfloat16):
        model = LlamaForCausalLM(conf)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    engine, *_ = deepspeed.initialize(
        model=model, config=ds, model_parameters=[p for p in model.parameters()]
    )
    ids = torch.randint(0, conf.vocab_size, (args.batch, args.seq), device="cuda")
    times = []
    for i in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    tokens_per_s = args.batch * args.seq / (sum(times) / len(times))
    flops_per_token = 6 * n_params + 12 * layers * conf.hidden_size * args.seq
    device = torch.cuda.get_device_name()
    spec = lookup(device)
    peak_tflops = args.peak_tflops or (spec.bf16_dense_tflops if spec else None)
    result = {
        "bench": "gpu_train_7b",
        "device": device,
        "layers": layers,
        "params_b": round(n_params / 1e9, 2),
        "zero_stage": 3,
        "offload_optimizer": offload,
        "seq": args.seq,
        "batch": args.batch,
        "measured_steps": len(times),
        "tokens_per_s": round(tokens_per_s, 1),
        "peak": (
            f"{peak_tflops:g} TFLOP/s bf16 dense" + ("" if args.peak_tflops else f" ({spec.name})")
            if peak_tflops
            else f"unknown device: {device}"
        ),
        "mfu": round(flops_per_token * tokens_per_s / (peak_tflops * 1e12), 4)
        if peak_tflops
        else None,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "final_loss": round(float(loss), 3),
    }
    engine.destroy()
    del engine, model
    torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="GPU peak BF16 dense TFLOP/s (default: looked up by device name)",
    )
    p.add_argument("--skip-full", action="store_true", help="only the 8-layer baseline")
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_train_7b: no CUDA device here; run it on a GPU machine "
            "(needs ~80 GB GPU memory and ~120 GB host memory for the offloaded 7B run)",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl")
    print(json.dumps({**run(8, False, args), "role": "baseline (7B width, 8 layers)"}), flush=True)
    if not args.skip_full:
        print(json.dumps({**run(32, True, args), "role": "7B shape"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
