"""Scoring throughput with LoRA adapters on CPU: 1 adapter vs 4 adapters vs the merged model.

    PYTHONPATH=. .venv/bin/python benchmarks/lora_scoring.py [--rows 128] [--repeats 2]
        [--model compute] [--rank 16] [--engines hf vllm]

One base model built here from config (``compute``: hidden 512, 8 layers, ~29M parameters, as
``benchmarks/engines.py``; or ``tiny``), four random all-linear LoRA adapters of rank
``--rank`` (PEFT, ``init_lora_weights=False``) and the first one merged into the base with PEFT's
``merge_and_unload``. The same rows (Stockmark texts, the six tasks round-robin, per-row caps
24-72, constrained) are scored, steady state (engine up, one warm-up call), fastest of
``--repeats``, in these configurations per engine:

* ``merged``: the merged model, no adapter machinery (the baseline: what shipping a merged model
  per adapter costs per row);
* ``base``: the base model alone (the same step cost as ``merged``: a check on the noise);
* ``adapters_1``: an engine holding adapter ``a``, every row on it;
* ``adapters_4``: an engine holding ``a``-``d``, rows round-robin over them (HF: four groups
  decoded one after another; vLLM: one running batch, a LoRARequest per row).

JSON lines: one per configuration (``tok_s``, ``rows_s``, ``vs_merged`` = tok/s over the merged
model's, from the same run), then a ``summary`` per engine. Wall-clock figures: run on a quiet
machine (``load1`` is printed with each line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
MODELS = {"tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                   "num_attention_heads": 2},
          "compute": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
                      "num_attention_heads": 8}}
VLLM_CPU = {"enforce_eager": True, "gpu_memory_utilization": 0.1, "max_num_seqs": 128,
            "max_num_batched_tokens": 8192}
NAMES = ("a", "b", "c", "d")


def emit(**kw) -> None:
    print(json.dumps({"bench": "lora_scoring", **kw, "load1": round(os.getloadavg()[0], 2)}),
          flush=True)


def build(workdir: str, model: str, rank: int, texts: list[str]) -> tuple[str, dict, str]:
    """``(base dir, {name: adapter dir}, merged dir)``."""
    from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt
    from giellm_ray.model.tiny import TinyConfig, build_tiny
    from giellm_ray.model.tiny_lora import build_tiny_adapter, merge_adapter

    seed = texts + [build_prompt("", t) for t in DEFAULT_REGISTRY.values()]
    base = build_tiny(f"{workdir}/base", seed, TinyConfig(vocab_size=1500, **MODELS[model]))
    adapters = {n: build_tiny_adapter(base, f"{workdir}/lora-{n}", seed=k + 1, r=rank,
                                      alpha=2 * rank) for k, n in enumerate(NAMES)}
    return base, adapters, merge_adapter(base, adapters["a"], f"{workdir}/merged")


def extractor(engine: str, model_dir: str, adapters: dict | None, rank: int):
    from giellm_ray.generation.build import build_extractor
    from giellm_ray.generation.config import GenerationConfig, VLLMConfig
    from giellm_ray.model.loader import ModelConfig

    vllm = VLLMConfig(**VLLM_CPU, max_lora_rank=rank)
    return build_extractor(engine, ModelConfig(name_or_path=model_dir),
                           GenerationConfig(batch_size=32), vllm, device="cpu",
                           adapters=adapters or None)


def timed(ex, rows: list[dict], repeats: int) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = ex.extract(rows)
        best = min(best, time.perf_counter() - start)
        tokens = sum(o["num_generated_tokens"] for o in out)
    return best, tokens


def run_engine(engine: str, base: str, adapters: dict, merged: str, rows: list[dict],
               warm: list[dict], args) -> None:
    plans = [("merged", merged, None, None), ("base", base, None, None),
             ("adapters_1", base, {"a": adapters["a"]}, ["a"]),
             ("adapters_4", base, adapters, list(NAMES))]
    results = {}
    for config, model_dir, held, cycle in plans:
        ex = extractor(engine, model_dir, held, args.rank)
        mine = [{**r, "adapter": cycle[i % len(cycle)] if cycle else None}
                for i, r in enumerate(rows)]
        ex.extract(warm)
        seconds, tokens = timed(ex, mine, args.repeats)
        results[config] = tokens / seconds
        emit(engine=engine, config=config, rows=len(rows), tokens=tokens,
             seconds=round(seconds, 3), tok_s=round(tokens / seconds, 1),
             rows_s=round(len(rows) / seconds, 2),
             vs_merged=round(tokens / seconds / results["merged"], 3))
        ex.shutdown()
        del ex
    emit(engine=engine, config="summary",
         adapter_1_vs_merged=round(results["adapters_1"] / results["merged"], 3),
         adapters_4_vs_1=round(results["adapters_4"] / results["adapters_1"], 3),
         base_vs_merged=round(results["base"] / results["merged"], 3))


def main() -> None:
    from engine_runs import make_rows, source_texts

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=128, help="rows per timed run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration (fastest kept)")
    ap.add_argument("--model", choices=sorted(MODELS), default="compute")
    ap.add_argument("--rank", type=int, default=16, choices=(8, 16, 32))
    ap.add_argument("--engines", nargs="+", choices=("hf", "vllm"), default=["hf"])
    args = ap.parse_args()
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    texts = source_texts()
    as_rows = [{"dataset": r["dataset"], "text": r["text"], "max_new_tokens": r["cap"]}
               for r in make_rows(texts, args.rows)]
    warm = [{"dataset": r["dataset"], "text": r["text"], "max_new_tokens": 8}
            for r in make_rows(texts[::-1], 8)]
    with tempfile.TemporaryDirectory() as work:
        base, adapters, merged = build(work, args.model, args.rank, texts)
        emit(config="setup", model=args.model, rank=args.rank, adapters=len(adapters),
             adapter_bytes=os.path.getsize(os.path.join(adapters["a"],
                                                        "adapter_model.safetensors")))
        for engine in args.engines:
            run_engine(engine, base, adapters, merged, as_rows, warm, args)


if __name__ == "__main__":
    main()
