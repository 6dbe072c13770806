"""Training throughput on CPU with 1 and 2 Ray Train workers (DeepSpeed ZeRO-2, FP32).

    .venv/bin/python -m benchmarks.train_throughput [--rows 512] [--epochs 1] [--workers 1 2]

Builds a small random-init Llama from the shipped sample corpus, fine-tunes it for one epoch with
each worker count (the same global batch: per-device batch x workers is kept at 8 rows), and
prints one JSON line per run: target+prompt tokens per second of pure training time (forward,
backward, optimizer step; summed over workers), wall time of the whole run (Ray Train start,
DeepSpeed init, checkpoints), rank 0's peak RSS, and — on the last line — scaling efficiency
``tps(N) / (N * tps(1))`` against the 1-worker baseline from the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import tiny_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=512, help="training rows (from the sample)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args()

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from giellm_ray.config import load_config
    from giellm_ray.model.tiny import TinyConfig
    from giellm_ray.sample import sample_path
    from giellm_ray.train.config import TrainConfig
    from giellm_ray.train.driver import run_training

    tmp = tempfile.mkdtemp(prefix="giellm-train-bench-")
    table = pq.read_table(sample_path("train"))
    reps = -(-args.rows // table.num_rows)
    table = pa.concat_tables([table] * reps).slice(0, args.rows)
    train = os.path.join(tmp, "train.parquet")
    pq.write_table(table, train)
    texts = [t for c in ("prompt", "target") for t in table.column(c).to_pylist()]
    model = tiny_model(
        os.path.join(tmp, "model"),
        texts,
        TinyConfig(
            hidden_size=args.hidden,
            intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers,
            vocab_size=2000,
        ),
    )
    ray.init(num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    results: dict[int, float] = {}
    for n in args.workers:
        cfg = load_config(
            TrainConfig,
            None,
            [
                f"model.name_or_path={model}",
                f"data.train={train}",
                f"storage_path={tmp}/runs",
                f"run_name=w{n}",
                f"num_workers={n}",
                f"epochs={args.epochs}",
                "zero_stage=2",
                f"per_device_batch_size={args.global_batch // n}",
                "export=false",
                "log_every_steps=1000",
                "lr=1e-3",
                "data.max_length=256",
                f"resources_per_worker={{CPU: {0.75 if n > 1 else 1}}}",
            ],
        )
        t0 = time.perf_counter()
        m = run_training(cfg).metrics
        wall = time.perf_counter() - t0
        results[n] = m["train_tokens_per_s"]
        print(
            json.dumps(
                {
                    "bench": "train_throughput",
                    "device": "cpu",
                    "workers": n,
                    "zero_stage": 2,
                    "model": f"llama h{args.hidden} l{args.layers}",
                    "rows": args.rows,
                    "epochs": args.epochs,
                    "steps": m["step"],
                    "train_tokens": m["train_tokens"],
                    "tokens_per_s": round(m["train_tokens_per_s"], 1),
                    "wall_s": round(wall, 1),
                    "peak_rss_mb_rank0": round(m["peak_rss_mb_rank0"], 1),
                    "final_loss": m["final_loss"],
                }
            ),
            flush=True,
        )
    if 1 in results:
        base = results[1]
        print(
            json.dumps(
                {
                    "bench": "train_throughput",
                    "baseline": "1 worker",
                    "scaling_efficiency": {
                        str(n): round(tps / (n * base), 3) for n, tps in results.items()
                    },
                }
            ),
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
