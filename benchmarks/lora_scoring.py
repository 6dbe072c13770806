"""Scoring throughput with LoRA adapters on CPU: 1 adapter vs 4 adapters vs the merged model.

    python -m benchmarks.lora_scoring [--rows 128] [--repeats 2]
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
model's, from the same run), then a ``summary`` per engine with
``adapter_1_same_outputs_as_merged`` (share of rows where adapter ``a`` on the base and the merged
model wrote the same output: merging changes the arithmetic's order, not the model). Wall-clock figures: run on a quiet
machine (``load1`` is printed with each line).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import emit as _emit
from benchmarks.common import source_texts, tiny_model
from benchmarks.engine_runs import make_rows
from benchmarks.engines import MODELS, VLLM_CPU  # the same model shapes and vLLM settings

NAMES = ("a", "b", "c", "d")


def emit(**kw) -> None:
    """One JSON line tagged ``bench: lora_scoring``."""
    _emit({"bench": "lora_scoring"}, **kw)


def build(workdir: str, model: str, rank: int, texts: list[str]) -> tuple[str, dict, str]:
    """``(base dir, {name: adapter dir}, merged dir)``."""
    from giellm_ray.model.tiny import TinyConfig
    from giellm_ray.model.tiny_lora import build_tiny_adapter, merge_adapter

    base = tiny_model(f"{workdir}/base", texts, TinyConfig(vocab_size=1500, **MODELS[model]))
    adapters = {
        n: build_tiny_adapter(base, f"{workdir}/lora-{n}", seed=k + 1, r=rank, alpha=2 * rank)
        for k, n in enumerate(NAMES)
    }
    return base, adapters, merge_adapter(base, adapters["a"], f"{workdir}/merged")


def extractor(engine: str, model_dir: str, adapters: dict | None, rank: int):
    from giellm_ray.generation.build import build_extractor
    from giellm_ray.generation.config import GenerationConfig, VLLMConfig
    from giellm_ray.model.loader import ModelConfig

    vllm = VLLMConfig(**VLLM_CPU, max_lora_rank=rank)
    return build_extractor(
        engine,
        ModelConfig(name_or_path=model_dir),
        GenerationConfig(batch_size=32),
        vllm,
        device="cpu",
        adapters=adapters or None,
    )


def run_engine(
    engine: str, base: str, adapters: dict, merged: str, rows: list[dict], warm: list[dict], args
) -> None:
    """Every configuration on ``engine``. HF: all four engines held at once and the repeats
    interleaved (a shared machine's load shifts between configurations otherwise); vLLM: one
    engine at a time (each takes its share of RAM for KV), repeats back to back."""
    plans = [
        ("merged", merged, None, None),
        ("base", base, None, None),
        ("adapters_1", base, {"a": adapters["a"]}, ["a"]),
        ("adapters_4", base, adapters, list(NAMES)),
    ]

    def rows_for(cycle):
        return [
            {**r, "adapter": cycle[i % len(cycle)] if cycle else None} for i, r in enumerate(rows)
        ]

    best: dict[str, tuple[float, int, list]] = {}

    def once(config, ex, mine):
        start = time.perf_counter()
        out = ex.extract(mine)
        seconds = time.perf_counter() - start
        if config not in best or seconds < best[config][0]:
            best[config] = (
                seconds,
                sum(o["num_generated_tokens"] for o in out),
                [o["prediction"] for o in out],
            )

    if engine == "hf":
        held = [(c, extractor(engine, m, h, args.rank), rows_for(cy)) for c, m, h, cy in plans]
        for _, ex, _ in held:
            ex.extract(warm)
        for _ in range(args.repeats):
            for config, ex, mine in held:
                once(config, ex, mine)
    else:
        for config, model_dir, held_adapters, cycle in plans:
            ex = extractor(engine, model_dir, held_adapters, args.rank)
            ex.extract(warm)
            for _ in range(args.repeats):
                once(config, ex, rows_for(cycle))
            ex.shutdown()
            del ex
    merged_tok_s = best["merged"][1] / best["merged"][0]
    for config, (seconds, tokens, _) in best.items():
        emit(
            engine=engine,
            config=config,
            rows=len(rows),
            tokens=tokens,
            seconds=round(seconds, 3),
            tok_s=round(tokens / seconds, 1),
            rows_s=round(len(rows) / seconds, 2),
            vs_merged=round(tokens / seconds / merged_tok_s, 3),
        )
    tok_s = {c: t / s for c, (s, t, _) in best.items()}
    same = sum(a == b for a, b in zip(best["adapters_1"][2], best["merged"][2], strict=True))
    emit(
        engine=engine,
        config="summary",
        adapter_1_vs_merged=round(tok_s["adapters_1"] / tok_s["merged"], 3),
        adapters_4_vs_1=round(tok_s["adapters_4"] / tok_s["adapters_1"], 3),
        base_vs_merged=round(tok_s["base"] / tok_s["merged"], 3),
        adapter_1_same_outputs_as_merged=round(same / len(rows), 3),
    )


def main() -> None:
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
    as_rows = [
        {"dataset": r["dataset"], "text": r["text"], "max_new_tokens": r["cap"]}
        for r in make_rows(texts, args.rows)
    ]
    warm = [
        {"dataset": r["dataset"], "text": r["text"], "max_new_tokens": 8}
        for r in make_rows(texts[::-1], 8)
    ]
    with tempfile.TemporaryDirectory() as work:
        base, adapters, merged = build(work, args.model, args.rank, texts)
        emit(
            config="setup",
            model=args.model,
            rank=args.rank,
            adapters=len(adapters),
            adapter_bytes=os.path.getsize(os.path.join(adapters["a"], "adapter_model.safetensors")),
        )
        for engine in args.engines:
            run_engine(engine, base, adapters, merged, as_rows, warm, args)


if __name__ == "__main__":
    main()
