"""Throughput of the whole ``giellm score`` process (Ray start-up included) vs a naive loop.

    .venv/bin/python benchmarks/score_throughput.py [--rows 2000] [--naive-rows 2000]

Builds the tiny model, writes ``--rows`` rows (Stockmark texts, datasets round-robin over the six
tasks so output bounds differ per row), then prints JSON lines:

* ``naive``: one row at a time through ``model.generate`` (greedy, the task's bound), all cores;
* ``engine_static`` / ``engine_continuous``: the engine in-process with static batches of 32
  (refill only when a whole batch is done) and with refill (finished-slot waste, padding);
* ``giellm_score``: wall-clock of a ``giellm score`` subprocess with ``jobs/configs/score/cpu.yaml``;
* ``speedup``: giellm score rows/s over naive rows/s (goal on 2 cores: >= 5x).

A random-init model never emits EOS, so output lengths vary only through the per-task bounds;
they are scaled by ``--bound-scale`` (default 1/8: 12-28 tokens) to keep the naive run short.
Decoding is unconstrained on both sides so the same tokens are generated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NER = ROOT.parent / "shared" / "data" / "stockmark-ner-wikipedia" / "ner.json"


def emit(**kw) -> None:
    print(json.dumps(kw, ensure_ascii=False), flush=True)


def build(workdir: str, rows: int, scale: float):
    import pyarrow.parquet as pq

    from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, build_prompt
    from giellm_ray.model.tiny import TinyConfig, build_tiny
    from giellm_ray.schema import dataset_table

    texts = [r["text"] for r in json.loads(NER.read_text(encoding="utf-8"))]
    registry = TaskRegistry([t.replace(max_new_tokens=max(4, int(t.max_new_tokens * scale)))
                             for t in DEFAULT_REGISTRY.values()])
    seed = texts + [build_prompt("", t) for t in registry.values()]
    model_dir = build_tiny(f"{workdir}/model", seed, TinyConfig(vocab_size=1500))
    names = sorted(registry)
    data = [{"id": str(i), "dataset": names[i % len(names)], "text": texts[i % len(texts)]}
            for i in range(rows)]
    os.makedirs(f"{workdir}/in")
    pq.write_table(dataset_table(data), f"{workdir}/in/rows.parquet")
    Path(f"{workdir}/tasks.json").write_text(json.dumps(registry.to_dict(), ensure_ascii=False))
    prompts = [(build_prompt(r["text"], registry[r["dataset"]]),
                registry[r["dataset"]].max_new_tokens) for r in data]
    return model_dir, prompts


def run_naive(model_dir: str, prompts, n: int) -> dict:
    import torch

    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = ModelConfig(name_or_path=model_dir)
    tok, model = load_tokenizer(cfg), load_model(cfg, "cpu")
    start, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for prompt, bound in prompts[:n]:
            ids = tok(prompt, return_tensors="pt")
            out = model.generate(**ids, max_new_tokens=bound, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    secs = time.perf_counter() - start
    return {"rows": n, "seconds": secs, "rows_per_s": n / secs, "tokens_per_s": tokens / secs}


def run_engine(model_dir: str, prompts, n: int, refill: bool) -> dict:
    import torch

    from giellm_ray.infer.engine import GenerationConfig, GenerationEngine, GenerationRequest
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    torch.set_num_threads(1)
    cfg = ModelConfig(name_or_path=model_dir)
    gen = GenerationConfig(batch_size=32, refill_threshold=0.1 if refill else 1.0)
    engine = GenerationEngine(load_model(cfg, "cpu"), load_tokenizer(cfg), gen)
    start = time.perf_counter()
    engine.generate([GenerationRequest(p, b) for p, b in prompts[:n]])
    secs = time.perf_counter() - start
    st = engine.stats
    return {"rows": n, "seconds": secs, "rows_per_s": n / secs,
            "tokens_per_s": st.generated_tokens / secs, "padding_fraction": st.padding_fraction,
            "waste_fraction": st.waste_fraction, "threads": 1}


def run_cli(workdir: str, model_dir: str) -> dict:
    cmd = [sys.executable, "-m", "giellm_ray.cli", "score", "--model", model_dir,
           "--input", f"{workdir}/in", "--output", f"{workdir}/out",
           "--config", str(ROOT / "jobs/configs/score/cpu.yaml"),
           "--set", f"tasks={workdir}/tasks.json", "--set", "constrained=false",
           "--set", "progress_bars=false", "--set", "num_actors=2"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"giellm score failed:\n{proc.stderr[-4000:]}")
    summary = json.loads(Path(f"{workdir}/out/_score.json").read_text())
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rows": summary["output_rows"], "seconds": secs,
            "rows_per_s": summary["output_rows"] / secs,
            "tokens_per_s": summary["engine"]["generated_tokens"] / secs,
            "padding_fraction": summary["engine"]["padding_fraction"],
            "waste_fraction": summary["engine"]["waste_fraction"],
            "driver_peak_rss_mib": child}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--naive-rows", type=int, default=2000)
    ap.add_argument("--engine-rows", type=int, default=256)
    ap.add_argument("--bound-scale", type=float, default=0.125)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        model_dir, prompts = build(workdir, args.rows, args.bound_scale)
        cli = run_cli(workdir, model_dir)
        emit(run="giellm_score", **cli)
        naive = run_naive(model_dir, prompts, min(args.naive_rows, args.rows))
        emit(run="naive", **naive)
        emit(run="engine_static", **run_engine(model_dir, prompts, args.engine_rows, False))
        emit(run="engine_continuous", **run_engine(model_dir, prompts, args.engine_rows, True))
        emit(run="speedup", giellm_score_over_naive=cli["rows_per_s"] / naive["rows_per_s"],
             goal=5.0)


if __name__ == "__main__":
    main()
