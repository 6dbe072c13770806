"""LoRA against full fine-tuning: measured on a ~29M-parameter Llama on CPU, and the arithmetic
for 7B and 13B.

    python -m benchmarks.lora [--sections train arithmetic] [--rows 96]

Sections (each prints JSON lines; ``--sections`` picks them, all by default):

- ``train``: the same model (hidden 512, 8 layers, MLP 1536: the ``compute`` model of
  ``benchmarks/engines.py``), the same rows and steps through ``run_training`` (Ray Train +
  DeepSpeed ZeRO-2, 1 CPU worker, FP32), once full fine-tuning (the baseline, measured in the same
  invocation) and once LoRA r 16 on every attention and MLP projection: tokens/s of pure training
  time, rank 0's peak RSS, the bytes of the epoch-1 (full, resumable) checkpoint, the trainable
  parameters; the last line is LoRA / full ratios.
- ``arithmetic``: weights, gradients and Adam state per GPU for Llama-2-7B / 13B, full FT on
  8 x 80 GB (ZeRO-2) against LoRA and QLoRA on one GPU, and the checkpoint sizes.

A section is a function in ``SECTIONS``; another (e.g. scoring throughput with 1 and 4 adapters
against the merged model) is added there.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time

from benchmarks.common import emit as _emit

MODEL = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "vocab_size": 1500,
}
LORA = "lora={r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear}"
LLAMA = {
    "7B": {"layers": 32, "hidden": 4096, "mlp": 11008, "vocab": 32000, "params": 6.74e9},
    "13B": {"layers": 40, "hidden": 5120, "mlp": 13824, "vocab": 32000, "params": 13.0e9},
}


def emit(**record) -> None:
    """One JSON line tagged ``bench: lora``."""
    _emit({"bench": "lora"}, **record)


def _checkpoint_bytes(run_dir: str) -> int | None:
    """Bytes of the run's full (resumable) checkpoint, the epoch-1 one."""
    for d in sorted(glob.glob(f"{run_dir}/checkpoint_*/")):
        with open(f"{d}/train_state.json") as f:
            if not json.load(f).get("weights_only"):
                return sum(
                    os.path.getsize(p)
                    for p in glob.glob(f"{d}/**", recursive=True)
                    if os.path.isfile(p)
                )
    return None


def section_train(args) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from giellm_ray.config import load_config
    from giellm_ray.model.tiny import TinyConfig, build_tiny_from_corpus
    from giellm_ray.sample import sample_path
    from giellm_ray.train.config import TrainConfig
    from giellm_ray.train.driver import run_training

    tmp = tempfile.mkdtemp(prefix="giellm-lora-bench-")
    table = pq.read_table(sample_path("train"))
    table = pa.concat_tables([table] * -(-args.rows // table.num_rows)).slice(0, args.rows)
    train = os.path.join(tmp, "train.parquet")
    pq.write_table(table, train)
    model = build_tiny_from_corpus(os.path.join(tmp, "model"), [train], TinyConfig(**MODEL))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        for kind, extra in (("full", []), ("lora", [LORA])):
            cfg = load_config(
                TrainConfig,
                None,
                [
                    f"model.name_or_path={model}",
                    f"data.train={train}",
                    f"storage_path={tmp}/runs",
                    f"run_name={kind}",
                    "num_workers=1",
                    "epochs=2",
                    "zero_stage=2",
                    f"per_device_batch_size={args.batch}",
                    "export=false",
                    "log_every_steps=1000",
                    "lr=1e-3",
                    "data.max_length=256",
                    "keep_checkpoints=2",
                    "resources_per_worker={CPU: 1}",
                    *extra,
                ],
            )
            t0 = time.perf_counter()
            m = run_training(cfg).metrics
            results[kind] = rec = {
                "kind": kind,
                "steps": m["step"],
                "train_tokens": m["train_tokens"],
                "tokens_per_s": round(m["train_tokens_per_s"], 1),
                "peak_rss_mb_rank0": round(m["peak_rss_mb_rank0"], 1),
                "checkpoint_bytes": _checkpoint_bytes(f"{tmp}/runs/{kind}"),
                "trainable_params": m.get("trainable_params"),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            emit(section="train", device="cpu", model="llama h512 l8 (~29M)", rows=args.rows, **rec)
    finally:
        ray.shutdown()
    full, lora = results["full"], results["lora"]
    emit(
        section="train",
        baseline="full fine-tuning, same run",
        tokens_per_s_ratio=round(lora["tokens_per_s"] / full["tokens_per_s"], 3),
        peak_rss_ratio=round(lora["peak_rss_mb_rank0"] / full["peak_rss_mb_rank0"], 3),
        checkpoint_bytes_ratio=round(lora["checkpoint_bytes"] / full["checkpoint_bytes"], 4),
    )


def lora_params(shape: dict, r: int) -> int:
    """Adapter parameters for r on every linear layer of a Llama block (q, k, v, o, gate, up,
    down): r x (in + out) each."""
    h, f = shape["hidden"], shape["mlp"]
    return shape["layers"] * r * (4 * (h + h) + 3 * (h + f))


def section_arithmetic(args) -> None:
    gb = 1e9
    for name, s in LLAMA.items():
        n = s["params"]
        a = lora_params(s, 16)
        act = 3.0  # GB: seq 2048, batch 1, activation checkpointing (see the 13B configs)
        full_total = 16 * n / gb  # bf16 weights + grads (4 B), fp32 master + m + v (12 B)
        full_per_gpu = (2 * n + (2 + 12 + 4) * n / 8) / gb + act  # ZeRO-2 on 8 GPUs
        lora_gpu = (2 * n + 16 * a) / gb + act
        qlora_gpu = (0.53 * n + 16 * a + 2 * 2 * s["vocab"] * s["hidden"] * 2) / gb + act
        emit(
            section="arithmetic",
            model=f"Llama-2-{name}",
            params=n,
            lora_r16_params=a,
            full_ft_state_gb=round(full_total, 1),
            full_ft_zero2_8gpu_gb_per_gpu=round(full_per_gpu, 1),
            lora_1gpu_gb=round(lora_gpu, 1),
            qlora_1gpu_gb=round(qlora_gpu, 1),
            full_checkpoint_gb=round((2 + 12) * n / gb, 1),
            lora_checkpoint_gb=round((2 + 12) * a / gb, 2),
        )


SECTIONS = {"train": section_train, "arithmetic": section_arithmetic}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--rows", type=int, default=96, help="training rows (from the sample)")
    p.add_argument("--batch", type=int, default=4, help="rows per step")
    args = p.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for name in args.sections:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
