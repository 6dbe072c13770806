"""Both engines on one GPU: a ~1B random-init Llama in bf16, tok/s and the HBM roofline fraction.

    python -m benchmarks.gpu_score [--rows 2048] [--model DIR] [--job-rows 0]

Needs CUDA (exits with a clear message otherwise). Builds a random-init Llama of ~1.03B
parameters (hidden 2048, MLP 5632, 20 layers, 16 heads of 128, no grouped KV) with a tokenizer
trained on the sample shipped in the package (no reads of ../shared, no downloads; ``--model``
uses a checkpoint instead), then on the same ``--rows`` rows (six tasks round-robin, per-row caps
24-72 tokens) runs our HF engine (batch 128) and the vLLM engine (``gpu.yaml``'s vLLM settings,
CUDA graphs), each constrained and unconstrained after a warm-up. Per run, one JSON line:
generated tok/s, rows/s, start-up seconds, the mean decode batch (HF: running slots per decode
step; vLLM: generated tokens per engine step, from its Prometheus iteration histogram) and the
HBM roofline: ``batch x bandwidth / weight bytes`` tok/s (each step streams the weights once;
KV reads ignored, so the fraction is an upper bound of what the weights alone allow), from
``giellm_ray/perf.py``'s device table. ``--job-rows N`` also times a whole ``giellm score`` per engine
(``gpu.yaml``, one actor). About 4-6 minutes on one H100/H200 without ``--job-rows``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, source_texts
from giellm_ray.perf import ONE_B_LLAMA, llama_params, roofline

SHAPE = ONE_B_LLAMA
NO_CUDA = (
    "gpu_score.py needs a CUDA GPU (torch.cuda.is_available() is False); on CPU run "
    "python -m benchmarks.engines"
)


def build_model(workdir: str) -> str:
    """The ~1B random-init Llama (on the GPU: seconds) and its tokenizer, saved in bf16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from giellm_ray.model.tiny import tokenizer_texts, train_tokenizer

    tok = train_tokenizer(tokenizer_texts(source_texts()), 8000)
    tok.model_max_length = 2048
    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=len(tok),
        num_key_value_heads=SHAPE["num_attention_heads"],
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        **SHAPE,
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(conf).to(torch.bfloat16)
    out = f"{workdir}/model-1b"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def run_hf(model_dir: str, rows: list[dict], warm: list[dict], device: str) -> list[dict]:
    import torch

    from benchmarks.engine_runs import run_engine
    from giellm_ray.decoding import build_constraint_factory
    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.generation.hf import HFEngine
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    started = time.perf_counter()
    mc = ModelConfig(name_or_path=model_dir, dtype="bfloat16")
    tok, model = load_tokenizer(mc), load_model(mc, "cuda")
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    startup = time.perf_counter() - started
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    engine = HFEngine(model, tok, GenerationConfig(batch_size=128, max_prefill_tokens=32768))
    run_engine(engine, warm, "constrained", factory.for_row)
    out = []
    for mode in ("constrained", "free"):
        engine.reset_stats()
        torch.cuda.synchronize()
        r = run_engine(engine, rows, mode, factory.for_row)
        st = engine.stats
        batch = st.decode_slot_steps / st.decode_steps if st.decode_steps else None
        out.append(
            record("hf_engine", mode, r, rows, startup, device)
            | roofline(r["tokens"] / r["seconds"], batch, weight_bytes, device)
        )
    del engine, model
    torch.cuda.empty_cache()
    return out


def run_vllm(
    model_dir: str, rows: list[dict], warm: list[dict], device: str, weight_bytes: int
) -> list[dict]:
    from benchmarks.engine_runs import run_engine
    from giellm_ray.config import load_config
    from giellm_ray.configs import config_path
    from giellm_ray.generation.build import constraint_spec
    from giellm_ray.generation.vllm_engine import VLLMEngine
    from giellm_ray.model.loader import ModelConfig
    from giellm_ray.score.config import ScoreConfig

    cfg = load_config(ScoreConfig, config_path("score", "gpu.yaml")).vllm
    started = time.perf_counter()
    engine = VLLMEngine(
        ModelConfig(name_or_path=model_dir, dtype="bfloat16"), cfg, on_gpu=True, log_stats=True
    )
    startup = time.perf_counter() - started
    out = []
    try:
        run_engine(engine, warm, "constrained", constraint_spec)
        for mode in ("constrained", "free"):
            before = engine.iteration_count()
            r = run_engine(engine, rows, mode, constraint_spec)
            steps = engine.iteration_count() - before
            batch = r["tokens"] / steps if steps else None
            out.append(
                record("vllm", mode, r, rows, startup, device)
                | roofline(r["tokens"] / r["seconds"], batch, weight_bytes, device)
            )
    finally:
        engine.shutdown()
    return out


def record(engine: str, mode: str, r: dict, rows: list[dict], startup: float, device: str) -> dict:
    return {
        "run": "engine",
        "engine": engine,
        "mode": mode,
        "gpu": device,
        "rows": len(rows),
        "tokens": r["tokens"],
        "tok_s": round(r["tokens"] / r["seconds"], 1),
        "rows_s": round(len(rows) / r["seconds"], 2),
        "startup_s": round(startup, 1),
    }


def run_job(model_dir: str, engine: str, n: int, workdir: str, device: str) -> dict:
    """A whole ``giellm score`` process with ``gpu.yaml`` and one actor, timed."""
    from benchmarks.engine_runs import run_whole_job

    res = run_whole_job(
        model_dir,
        engine,
        n,
        source_texts(),
        workdir,
        config=str(ROOT / "jobs/configs/score/gpu.yaml"),
    )
    return {**res, "gpu": device}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--model", default=None, help="a checkpoint instead of the built 1B model")
    ap.add_argument("--job-rows", type=int, default=0)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(NO_CUDA)
    from benchmarks.engine_runs import make_rows

    device = torch.cuda.get_device_name(0)
    texts = source_texts()
    rows, warm = make_rows(texts, args.rows), make_rows(texts[::-1], 64)
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        model_dir = args.model or build_model(workdir)
        conf = json.loads(Path(model_dir, "config.json").read_text())
        params = llama_params(
            conf["hidden_size"],
            conf["intermediate_size"],
            conf["num_hidden_layers"],
            conf["vocab_size"],
        )
        print(
            json.dumps(
                {
                    "run": "setup",
                    "gpu": device,
                    "params_b": round(params / 1e9, 3),
                    "build_s": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )
        for rec in run_hf(model_dir, rows, warm, device):
            print(json.dumps(rec), flush=True)
        for rec in run_vllm(model_dir, rows, warm, device, params * 2):
            print(json.dumps(rec), flush=True)
        for engine in ("hf", "vllm") if args.job_rows else ():
            print(
                json.dumps(run_job(model_dir, engine, args.job_rows, workdir, device)), flush=True
            )
    subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader"],
        check=False,
    )


if __name__ == "__main__":
    main()
