"""Throughput cost of grammar-constrained decoding: tokens/s with and without, same rows, same run.

Builds the tiny random-init Llama (or loads ``--model``), runs the real ``Extractor`` over the same
Stockmark rows with ``constrained=False`` and ``constrained=True`` (alternating, best of
``--repeats``), then, since constrained outputs are shorter (so per-row prefill is spread over
fewer tokens), the engine alone with and without constraints at the same per-row lengths
(``slowdown_same_lengths_pct``: the constraint's own cost), and replays the constrained outputs
through fresh constraints (``engine_runs.replay_constraint``, as ``engines.py`` does) to time the
constraint's own Python work per token. Prints JSON lines; not run by pytest::

    .venv/bin/python -m benchmarks.constraint_cost --rows 256 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

from benchmarks.common import stockmark_records, tiny_model


def run(extractor, rows: list[dict]) -> dict:
    start = time.perf_counter()
    outs = extractor.extract(rows)
    seconds = time.perf_counter() - start
    tokens = sum(o["num_generated_tokens"] for o in outs)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds, "outs": outs}


def same_lengths(engine, factory, task, rows, outs, budget: int, repeats: int) -> dict:
    """Best tokens/s of the engine alone, each row capped at its constrained output's length,
    without and with a (fresh) constraint: equal work per row, so the gap is the constraint's."""
    from giellm_ray.formats import build_prompt
    from giellm_ray.generation.base import GenerationRequest

    prompts = [build_prompt(r["text"], task) for r in rows]
    lengths = [max(1, o["num_generated_tokens"]) for o in outs]
    best = {"unconstrained": 0.0, "constrained": 0.0}
    for _ in range(repeats):
        for mode in best:
            reqs = [
                GenerationRequest(
                    p,
                    n,
                    factory.for_row(r["text"], task, budget) if mode == "constrained" else None,
                )
                for p, n, r in zip(prompts, lengths, rows, strict=True)
            ]
            start = time.perf_counter()
            res = engine.generate(reqs)
            tps = sum(x.num_generated_tokens for x in res) / (time.perf_counter() - start)
            best[mode] = max(best[mode], tps)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model dir (default: build the tiny one)")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from benchmarks.engine_runs import replay_constraint
    from giellm_ray.decoding import build_constraint_factory
    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.generation.build import hf_extractor
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    records = stockmark_records()
    rows = [{"text": r["text"], "dataset": "SCNM"} for r in records[: args.rows]]
    model_dir = args.model or tiny_model(
        tempfile.mkdtemp(prefix="giellm-cost-"), [r["text"] for r in records]
    )
    mcfg = ModelConfig(name_or_path=model_dir)
    tokenizer, model = load_tokenizer(mcfg), load_model(mcfg, "cpu")
    gcfg = GenerationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    start = time.perf_counter()
    factory = build_constraint_factory(tokenizer, DEFAULT_REGISTRY)
    factory_s = time.perf_counter() - start
    extractors = {
        mode: hf_extractor(
            mcfg,
            gcfg,
            constrained=(mode == "constrained"),
            device="cpu",
            model=model,
            tokenizer=tokenizer,
        )
        for mode in ("unconstrained", "constrained")
    }
    best: dict[str, dict] = {}
    for rep in range(args.repeats):
        for mode, ex in extractors.items():
            r = run(ex, rows)
            print(
                json.dumps(
                    {
                        "bench": "constraint_cost",
                        "mode": mode,
                        "repeat": rep,
                        "rows": len(rows),
                        "tokens": r["tokens"],
                        "seconds": round(r["seconds"], 3),
                        "tokens_per_s": round(r["tokens_per_s"], 1),
                    }
                ),
                flush=True,
            )
            if mode not in best or r["tokens_per_s"] > best[mode]["tokens_per_s"]:
                best[mode] = r
    task = DEFAULT_REGISTRY["SCNM"]
    budget = min(task.max_new_tokens, args.max_new_tokens or task.max_new_tokens)
    same = same_lengths(
        extractors["unconstrained"].engine,
        factory,
        task,
        rows,
        best["constrained"]["outs"],
        budget,
        args.repeats,
    )
    outs = best["constrained"]["outs"]
    rp = replay_constraint(
        factory,
        tokenizer,
        [{**r, "task": task, "cap": budget} for r in rows],
        [o["prediction"] or "" for o in outs],
        repeats=1,
    )
    base, con = best["unconstrained"]["tokens_per_s"], best["constrained"]["tokens_per_s"]
    print(
        json.dumps(
            {
                "bench": "constraint_cost",
                "summary": True,
                "model": args.model or "tiny random-init",
                "vocab": len(tokenizer),
                "rows": len(rows),
                "batch_size": args.batch_size,
                "unconstrained_tokens_per_s": round(base, 1),
                "constrained_tokens_per_s": round(con, 1),
                "slowdown_pct": round((1 - con / base) * 100, 1),
                "same_lengths_unconstrained_tokens_per_s": round(same["unconstrained"], 1),
                "same_lengths_constrained_tokens_per_s": round(same["constrained"], 1),
                "slowdown_same_lengths_pct": round(
                    (1 - same["constrained"] / same["unconstrained"]) * 100, 1
                ),
                "constraint_us_per_token": round(rp["us_per_token"], 1),
                "factory_build_s": round(factory_s, 3),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
