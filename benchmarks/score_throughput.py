"""Throughput of the whole ``giellm score`` process (Ray start-up included) vs a naive loop.

    .venv/bin/python -m benchmarks.score_throughput [--rows 2000] [--workload gold short]

Two workloads on the same tiny model (built here, tokenizer trained on the Stockmark texts):

* ``gold`` (the headline): ``--rows`` Stockmark SCNM sentences with their gold targets. A
  random-init model never emits EOS, so each row gets ``max_new_tokens`` = its gold target's
  length + 1 (the per-row cap column ``giellm score`` reads): every row generates exactly as many
  tokens as a fine-tuned model that writes its gold answer and stops (mean ~41, p90 ~66, max 177).
  The input has ``target``, so ``giellm score`` also writes its metrics report, as a real job does.
* ``short``: the six tasks round-robin over the same texts, per-task bounds scaled by
  ``--bound-scale`` (default 1/8: 12-28 tokens every row, no targets). Little work per row, so
  the fixed start-up dominates; reported to show where the ratio comes from.
* ``full`` (opt-in, ~6 min of naive loop): as ``short`` with the tasks' real bounds (96-224
  tokens every row): much work per row, so the start-up is amortised.

Per workload, JSON lines:

* ``giellm_score``: wall-clock of a ``giellm score`` subprocess with
  ``jobs/configs/score/cpu.yaml`` (unconstrained, so both sides generate the same tokens);
* ``naive``: one row at a time through ``model.generate`` (greedy, same per-row caps), default
  torch threads (all cores), model already loaded (its start-up is not counted);
* ``speedup``: giellm score rows/s over naive rows/s (goal on 2 cores: >= 5x).

Then, once: ``engine_static`` / ``engine_continuous`` (the engine in-process on ``--engine-rows``
gold rows: static batches of 32 vs refill; padding and finished-slot waste), and the start-up
floor a ``giellm score`` process cannot go below on this machine: ``ray_start_stop`` (a fresh
process: import Ray, start a local cluster, one task, shut down) and ``model_process_start`` (a
fresh process: import torch + transformers, load the model), each measured alone.
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

from benchmarks.common import (
    ROOT,
    STOCKMARK_NER,
    emit,
    stockmark_records,
    stockmark_texts,
    tiny_model,
)

ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}


def build_model(workdir: str) -> str:
    return tiny_model(f"{workdir}/model", stockmark_texts())


def gold_rows(model_dir: str, rows: int) -> tuple[list[dict], str | None]:
    """SCNM rows with gold targets; ``max_new_tokens`` = gold length in tokens + 1 (EOS)."""
    from giellm_ray.data.scnm import build_row
    from giellm_ray.model.loader import ModelConfig, load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=model_dir))
    records = stockmark_records()
    # Stockmark has no article categories; one TL label for all (it does not change the cost).
    built = [build_row(r, {str(r["curid"]): "社会"}) for r in records]
    built = [r for r in built if r.get("target")]
    out = []
    for i in range(rows):
        r = built[i % len(built)]
        cap = len(tok(r["target"], add_special_tokens=False)["input_ids"]) + 1
        out.append(
            {
                "id": f"{r['id']}#{i}",
                "dataset": "SCNM",
                "text": r["text"],
                "prompt": r["prompt"],
                "target": r["target"],
                "max_new_tokens": cap,
            }
        )
    return out, None


def short_rows(workdir: str, rows: int, scale: float) -> tuple[list[dict], str]:
    """The six tasks round-robin; every row runs to its task's scaled bound (no targets)."""
    from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, build_prompt

    texts = stockmark_texts()
    registry = TaskRegistry(
        [
            t.replace(max_new_tokens=max(4, int(t.max_new_tokens * scale)))
            for t in DEFAULT_REGISTRY.values()
        ]
    )
    tasks = f"{workdir}/tasks-{scale}.json"
    Path(tasks).write_text(json.dumps(registry.to_dict(), ensure_ascii=False))
    names = sorted(registry)
    out = []
    for i in range(rows):
        task = registry[names[i % len(names)]]
        text = texts[i % len(texts)]
        out.append(
            {
                "id": str(i),
                "dataset": task.name,
                "text": text,
                "prompt": build_prompt(text, task),
                "max_new_tokens": task.max_new_tokens,
            }
        )
    return out, tasks


def write_input(rows: list[dict], directory: str, with_caps: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = ["id", "dataset", "text", "prompt"] + (["target"] if "target" in rows[0] else [])
    table = pa.table({c: [r[c] for r in rows] for c in cols})
    if with_caps:
        table = table.append_column(
            "max_new_tokens", pa.array([r["max_new_tokens"] for r in rows], pa.int32())
        )
    os.makedirs(directory)
    pq.write_table(table, f"{directory}/rows.parquet")


def run_naive(model_dir: str, rows: list[dict]) -> dict:
    import torch

    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = ModelConfig(name_or_path=model_dir)
    tok, model = load_tokenizer(cfg), load_model(cfg, "cpu")
    start, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for r in rows:
            ids = tok(r["prompt"], return_tensors="pt")
            out = model.generate(
                **ids,
                max_new_tokens=r["max_new_tokens"],
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            tokens += out.shape[1] - ids["input_ids"].shape[1]
    secs = time.perf_counter() - start
    return {
        "rows": len(rows),
        "seconds": secs,
        "rows_per_s": len(rows) / secs,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / secs,
        "threads": torch.get_num_threads(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_engine(model_dir: str, rows: list[dict], refill: bool) -> dict:
    import torch

    from giellm_ray.generation.base import GenerationRequest
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.generation.hf import HFEngine
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    torch.set_num_threads(1)
    cfg = ModelConfig(name_or_path=model_dir)
    gen = GenerationConfig(batch_size=32, refill_threshold=0.1 if refill else 1.0)
    engine = HFEngine(load_model(cfg, "cpu"), load_tokenizer(cfg), gen)
    start = time.perf_counter()
    engine.generate([GenerationRequest(r["prompt"], r["max_new_tokens"]) for r in rows])
    secs = time.perf_counter() - start
    st = engine.stats
    return {
        "rows": len(rows),
        "seconds": secs,
        "rows_per_s": len(rows) / secs,
        "tokens_per_s": st.generated_tokens / secs,
        "padding_fraction": st.padding_fraction,
        "waste_fraction": st.waste_fraction,
        "threads": 1,
    }


def run_cli(model_dir: str, inp: str, out: str, tasks: str | None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "giellm_ray.cli",
        "score",
        "--model",
        model_dir,
        "--input",
        inp,
        "--output",
        out,
        "--config",
        str(ROOT / "jobs/configs/score/cpu.yaml"),
        "--set",
        "constrained=false",
        "--set",
        "progress_bars=false",
    ]
    if tasks:
        cmd += ["--set", f"tasks={tasks}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"giellm score failed:\n{proc.stderr[-4000:]}")
    summary = json.loads(Path(f"{out}/_score.json").read_text())
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "rows": summary["output_rows"],
        "seconds": secs,
        "rows_per_s": summary["output_rows"] / secs,
        "generated_tokens": summary["engine"]["generated_tokens"],
        "tokens_per_s": summary["engine"]["generated_tokens"] / secs,
        "padding_fraction": summary["engine"]["padding_fraction"],
        "waste_fraction": summary["engine"]["waste_fraction"],
        "metrics_report": "metrics" in summary,
        "driver_peak_rss_mib": child,
    }


def timed_subprocess(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, capture_output=True)
    return time.perf_counter() - start


def run_floor(model_dir: str) -> None:
    ray_s = timed_subprocess(
        "import ray; ray.init(include_dashboard=False, logging_level='ERROR');"
        "ray.get(ray.remote(lambda: 1).remote()); ray.shutdown()"
    )
    emit(run="ray_start_stop", seconds=ray_s)
    model_s = timed_subprocess(
        "from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer;"
        f"c = ModelConfig(name_or_path={model_dir!r}); load_tokenizer(c); load_model(c, 'cpu')"
    )
    emit(run="model_process_start", seconds=model_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument(
        "--workload", nargs="+", choices=["gold", "short", "full"], default=["gold", "short"]
    )
    ap.add_argument("--engine-rows", type=int, default=512)
    ap.add_argument("--bound-scale", type=float, default=0.125)
    args = ap.parse_args()
    if not STOCKMARK_NER.exists():
        raise SystemExit(
            f"needs the Stockmark data at {STOCKMARK_NER} (../shared beside the project)"
        )
    with tempfile.TemporaryDirectory() as workdir:
        model_dir = build_model(workdir)
        gold = None
        for workload in args.workload:
            if workload == "gold":
                rows, tasks = gold_rows(model_dir, args.rows)
            else:
                scale = args.bound_scale if workload == "short" else 1.0
                rows, tasks = short_rows(workdir, args.rows, scale)
            gold = rows if workload == "gold" else gold
            write_input(rows, f"{workdir}/{workload}-in", with_caps=workload == "gold")
            cli = run_cli(model_dir, f"{workdir}/{workload}-in", f"{workdir}/{workload}-out", tasks)
            emit(run="giellm_score", workload=workload, **cli)
            naive = run_naive(model_dir, rows)
            emit(run="naive", workload=workload, **naive)
            # Batched and single-row float sums differ slightly, so a random model may hit EOS
            # on a few rows on one side only: the token ratio shows how close the work was.
            emit(
                run="speedup",
                workload=workload,
                giellm_score_over_naive=cli["rows_per_s"] / naive["rows_per_s"],
                goal=5.0,
                token_ratio=cli["generated_tokens"] / max(1, naive["generated_tokens"]),
            )
        rows = (gold or short_rows(workdir, args.rows, args.bound_scale)[0])[: args.engine_rows]
        emit(run="engine_static", **run_engine(model_dir, rows, False))
        emit(run="engine_continuous", **run_engine(model_dir, rows, True))
        run_floor(model_dir)


if __name__ == "__main__":
    main()
