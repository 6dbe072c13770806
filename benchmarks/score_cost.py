"""What confidence scores cost: the Extractor on the HF engine with ``scores`` on and off, same run.

    python -m benchmarks.score_cost [--rows 256] [--repeats 3]
        [--models tiny compute] [--threads N]

Models built here from config (no downloads), tokenizer trained on the Stockmark texts: ``tiny``
(hidden 64, 2 layers: a decode step costs so little that the per-token bookkeeping is the most
visible it can be) and ``compute`` (hidden 512, 8 layers, ~29M parameters). Rows: Stockmark texts
(the shipped sample if ../shared is absent), the six tasks round-robin, caps 24/40/56/72 tokens,
format-constrained and batch 32, as ``giellm score`` runs them. One warm-up call per setting, then
``--repeats`` rounds that run both settings back to back, alternating which goes first (drift on
a shared machine falls on both). JSON lines:

* ``run``: one timed call (``scores`` on/off, rows/s, generated tokens/s, ``load1``);
* ``mapping``: the token-to-item mapping and aggregation alone (``confidence.score_output`` over
  the rows of one scored call), microseconds per row;
* ``summary`` per model: ``overhead`` = 1 - (fastest rows/s with scores) / (fastest without), the
  same from the medians, ``overhead_cpu`` from this process's CPU seconds instead of wall-clock,
  the mapping's share of a row's time, and whether both settings wrote the same outputs (they
  must: scores never change a pick). Goal: overhead < 3%.

The wall-clock figures carry whatever else the machine runs (read ``load1`` beside them); on a
shared machine the CPU-time figure, with ``--threads 1``, is the steadier one.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from benchmarks.common import emit, source_texts, tiny_model

MODELS = {
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    },
    "compute": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
    },
}
CAPS = (24, 40, 56, 72)


def build(workdir: str, name: str, corpus: list[str]) -> str:
    from giellm_ray.model.tiny import TinyConfig

    return tiny_model(f"{workdir}/{name}", corpus, TinyConfig(vocab_size=1500, **MODELS[name]))


def make_rows(corpus: list[str], n: int) -> list[dict]:
    from giellm_ray.formats import DEFAULT_REGISTRY

    names = sorted(DEFAULT_REGISTRY)
    return [
        {
            "text": corpus[i % len(corpus)],
            "dataset": names[i % len(names)],
            "max_new_tokens": CAPS[i % len(CAPS)],
        }
        for i in range(n)
    ]


def make_extractor(model_dir: str, model, tok, scores: bool):
    """The one place this benchmark builds an Extractor."""
    from giellm_ray.generation.build import hf_extractor
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.model.loader import ModelConfig

    return hf_extractor(
        ModelConfig(name_or_path=model_dir),
        GenerationConfig(batch_size=32, scores=scores),
        model=model,
        tokenizer=tok,
    )


def timed(ex, rows: list[dict]) -> tuple[float, float, list[dict]]:
    """Wall-clock and this process's CPU seconds of one call, and its outputs."""
    start, cpu = time.perf_counter(), time.process_time()
    out = ex.extract(rows)
    return time.perf_counter() - start, time.process_time() - cpu, out


def mapping_us_per_row(ex, rows: list[dict]) -> float:
    """The confidence mapping alone over one scored call's engine results."""
    from giellm_ray.formats import parse
    from giellm_ray.generation.confidence import score_output

    _, ready = ex._plan(rows)
    results = ex._generate(ready)
    parsed = [(r, parse(r.text, t[2]), t[2]) for r, t in zip(results, ready, strict=True)]
    start = time.perf_counter()
    for res, p, task in parsed:
        score_output(
            ex.tokenizer, res.token_ids, res.token_logprobs, res.text, p.tl_label, p.items, task
        )
    return (time.perf_counter() - start) / max(len(parsed), 1) * 1e6


def measure(name: str, model_dir: str, rows: list[dict], repeats: int) -> None:
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=model_dir)
    tok, model = load_tokenizer(cfg), load_model(cfg, "cpu")
    extractors = {s: make_extractor(model_dir, model, tok, s) for s in (True, False)}
    for ex in extractors.values():
        timed(ex, rows[:32])  # warm-up
    rates: dict[bool, list[float]] = {True: [], False: []}
    cpu_rates: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, list] = {}
    tokens = 0
    for k in range(repeats):
        for scores in (True, False) if k % 2 == 0 else (False, True):
            secs, cpu, out = timed(extractors[scores], rows)
            tokens = sum(o["num_generated_tokens"] for o in out)
            rates[scores].append(len(rows) / secs)
            cpu_rates[scores].append(len(rows) / cpu)
            outputs[scores] = [o["prediction"] for o in out]
            emit(
                kind="run",
                model=name,
                scores=scores,
                repeat=k,
                rows=len(rows),
                seconds=round(secs, 3),
                cpu_s=round(cpu, 3),
                rows_s=round(len(rows) / secs, 2),
                tok_s=round(tokens / secs, 1),
            )
    us = mapping_us_per_row(extractors[True], rows)
    emit(kind="mapping", model=name, us_per_row=round(us, 1), rows=len(rows))
    best_on, best_off = max(rates[True]), max(rates[False])
    med_on, med_off = statistics.median(rates[True]), statistics.median(rates[False])
    emit(
        kind="summary",
        model=name,
        rows=len(rows),
        generated_tokens=tokens,
        rows_s_scores_on=round(best_on, 2),
        rows_s_scores_off=round(best_off, 2),
        overhead=round(1 - best_on / best_off, 4),
        overhead_median=round(1 - med_on / med_off, 4),
        overhead_cpu=round(1 - max(cpu_rates[True]) / max(cpu_rates[False]), 4),
        mapping_share=round(us * 1e-6 * best_off, 4),
        same_outputs=outputs[True] == outputs[False],
        goal="overhead < 0.03",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "compute"])
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own; 1 is steadier on a busy machine)",
    )
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    corpus = source_texts()
    rows = make_rows(corpus, args.rows)
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            measure(name, build(work, name, corpus), rows, args.repeats)


if __name__ == "__main__":
    main()
