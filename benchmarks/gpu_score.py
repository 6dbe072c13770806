"""GPU variant of the scoring benchmark: ``giellm score`` with ``jobs/configs/score/gpu.yaml``.

    python benchmarks/gpu_score.py --model PATH_OR_HUB_ID [--rows 20000] [--num-actors N]

Needs CUDA: exits with a clear message otherwise. Writes ``--rows`` Stockmark-text rows (datasets
round-robin), runs the engine in-process on 512 rows once with static batches and once with refill
(finished-slot waste and padding on the GPU), then the whole ``giellm score`` process with one GPU
per actor, and prints JSON lines (rows/s, generated tokens/s, fractions, GPU name).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--num-actors", type=int, default=None)
    ap.add_argument("--engine-rows", type=int, default=512)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_score.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "on CPU run benchmarks/score_throughput.py instead")
    import pyarrow.parquet as pq

    from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt
    from giellm_ray.generation.base import GenerationRequest
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.generation.hf import HFEngine
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer
    from giellm_ray.schema import dataset_table

    ner = ROOT.parent / "shared" / "data" / "stockmark-ner-wikipedia" / "ner.json"
    texts = [r["text"] for r in json.loads(ner.read_text(encoding="utf-8"))]
    names = sorted(DEFAULT_REGISTRY)
    rows = [{"id": str(i), "dataset": names[i % len(names)], "text": texts[i % len(texts)]}
            for i in range(args.rows)]
    gpu = torch.cuda.get_device_name(0)
    cfg = ModelConfig(name_or_path=args.model, dtype="bfloat16")
    model, tok = load_model(cfg, "cuda"), load_tokenizer(cfg)
    for refill in (False, True):
        eng = HFEngine(model, tok, GenerationConfig(
            batch_size=128, refill_threshold=0.1 if refill else 1.0))
        reqs = [GenerationRequest(build_prompt(r["text"], DEFAULT_REGISTRY[r["dataset"]]),
                                  DEFAULT_REGISTRY[r["dataset"]].max_new_tokens)
                for r in rows[:args.engine_rows]]
        torch.cuda.synchronize()
        start = time.perf_counter()
        eng.generate(reqs)
        torch.cuda.synchronize()
        secs = time.perf_counter() - start
        print(json.dumps({"run": "engine_refill" if refill else "engine_static", "gpu": gpu,
                          "rows_per_s": len(reqs) / secs,
                          "tokens_per_s": eng.stats.generated_tokens / secs,
                          "padding_fraction": eng.stats.padding_fraction,
                          "waste_fraction": eng.stats.waste_fraction}), flush=True)
    del model
    torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as workdir:
        os.makedirs(f"{workdir}/in")
        pq.write_table(dataset_table(rows), f"{workdir}/in/rows.parquet")
        cmd = [sys.executable, "-m", "giellm_ray.cli", "score", "--model", args.model,
               "--input", f"{workdir}/in", "--output", f"{workdir}/out",
               "--config", str(ROOT / "jobs/configs/score/gpu.yaml"),
               "--set", f"num_actors={args.num_actors or torch.cuda.device_count()}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        secs = time.perf_counter() - start
        summary = json.loads(Path(f"{workdir}/out/_score.json").read_text())
        print(json.dumps({"run": "giellm_score_gpu", "gpu": gpu, "rows": args.rows,
                          "seconds": secs, "rows_per_s": args.rows / secs,
                          "tokens_per_s": summary["engine"]["generated_tokens"] / secs,
                          "padding_fraction": summary["engine"]["padding_fraction"],
                          "waste_fraction": summary["engine"]["waste_fraction"]}), flush=True)


if __name__ == "__main__":
    main()
