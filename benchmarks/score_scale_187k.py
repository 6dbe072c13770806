"""Scale check: 187,028 rows of synthetic review-length Japanese text stream with flat memory.

    .venv/bin/python -m benchmarks.score_scale_187k [--rows 187028] [--max-new-tokens 4]

Writes ``--rows`` synthetic SCPOS-style reviews (80-200 characters each) into Parquet files of
10,000 rows, runs ``giellm score`` (``jobs/configs/score/cpu.yaml``) as a subprocess while sampling
the resident memory of the whole process tree (driver, raylet, workers) every second, and prints
JSON lines: rows/s and peak RSS for this run, plus the RSS at 25/50/75/100% of the run, so flat
memory is visible. The baseline is the same job at ``--rows / 10`` in the same run: peak RSS should
not grow with the input. Generation is bounded by ``--max-new-tokens`` to keep a 2-core run finite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.common import ROOT, tree_rss_mib

PIECES = [
    "この商品は",
    "値段の割に",
    "画面が",
    "とても",
    "使いやすくて",
    "すぐに壊れて",
    "残念です。",
    "満足しています。",
    "配送が早く",
    "説明書が分かりにくい。",
    "デザインは良いが",
    "音が大きい。",
    "また買いたいです。",
    "期待外れでした。",
    "家族にも好評です。",
    "電池の持ちが悪い。",
]
TASKS = ["SCPOS:RW", "SCPOS:N", "SCPOS:Adj", "SCPOS:N&Adj"]


def write_rows(directory: str, rows: int, seed: int = 0) -> None:
    import pyarrow.parquet as pq

    from giellm_ray.schema import dataset_table

    rng = random.Random(seed)
    os.makedirs(directory)
    for start in range(0, rows, 10_000):
        part = []
        for i in range(start, min(rows, start + 10_000)):
            text = ""
            while len(text) < rng.randint(80, 200):
                text += rng.choice(PIECES)
            part.append({"id": str(i), "dataset": TASKS[i % 4], "text": text})
        pq.write_table(dataset_table(part), f"{directory}/part-{start // 10_000:05d}.parquet")


def run(workdir: str, model_dir: str, rows: int, max_new: int) -> dict:
    inp, out = f"{workdir}/in-{rows}", f"{workdir}/out-{rows}"
    write_rows(inp, rows)
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
        f"generation.max_new_tokens={max_new}",
        "--set",
        "constrained=false",
        "--set",
        "progress_bars=false",
        "--set",
        "progress_interval_s=60",
    ]
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.perf_counter() - start, tree_rss_mib(proc.pid)))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    stop.set()
    secs = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"giellm score exited {rc}")
    rss = [r for _, r in samples] or [0.0]
    quart = {
        f"rss_mib_at_{q}pct": rss[min(len(rss) - 1, int(len(rss) * q / 100))]
        for q in (25, 50, 75, 100)
    }
    return {
        "rows": rows,
        "seconds": secs,
        "rows_per_s": rows / secs,
        "peak_rss_mib": max(rss),
        **quart,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=187_028)
    ap.add_argument("--max-new-tokens", type=int, default=4)
    args = ap.parse_args()
    from giellm_ray.model.tiny import TinyConfig, build_tiny, tokenizer_texts

    with tempfile.TemporaryDirectory() as workdir:
        seed = tokenizer_texts(PIECES) * 20  # the pieces and the format strings, weighted alike
        model_dir = build_tiny(f"{workdir}/model", seed, TinyConfig(vocab_size=600))
        small = run(workdir, model_dir, max(1, args.rows // 10), args.max_new_tokens)
        print(json.dumps({"run": "baseline_tenth", **small}), flush=True)
        full = run(workdir, model_dir, args.rows, args.max_new_tokens)
        print(json.dumps({"run": "full", **full}), flush=True)
        print(
            json.dumps(
                {
                    "run": "memory_growth",
                    "peak_ratio": full["peak_rss_mib"] / max(small["peak_rss_mib"], 1e-9),
                    "rows_ratio": args.rows / max(1, args.rows // 10),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
