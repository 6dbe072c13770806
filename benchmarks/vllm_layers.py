"""Our layers against the raw engine: a whole ``giellm score --set engine=vllm`` process against
vLLM's own ``LLM.generate`` in a fresh process on the same rows: same prompt token ids, same
per-row grammars (``row_lark``, ``guidance`` backend), same caps, same engine settings, one
engine. Both are timed from process start to the last output (start-up included: a job pays it),
and the raw run's generate call alone is reported too. ``ratio`` = raw seconds / job seconds
(goal >= 0.9: our layers, Ray Data, the extractor and the commit, cost at most 10%). The job
scores confidence by default (``generation.scores``: vLLM returns each sampled token's logprob),
so the raw run asks for the same ``logprobs=0``; ``--scores both`` adds the pair without them
(``generation.scores=false`` / no logprobs). Then, with ``--hf``, the same whole job on the HF
engine, constrained and not (goal: vLLM >= 1.2x).

    python -m benchmarks.vllm_layers [--rows 1000] [--model compute] [--dtype bfloat16]
        [--scores on|off|both] [--hf]
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

from benchmarks.common import ROOT, emit, source_texts
from benchmarks.engine_runs import CAPS, run_whole_job
from benchmarks.engines import VLLM_CPU, build_model

RAW = r"""
import json, os, sys, time
t0 = time.perf_counter()
# The engine settings the job's VLLMEngine uses on this machine (all cores, none reserved).
from giellm_ray.generation.cpu_cores import bind_string
os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind_string(sorted(os.sched_getaffinity(0)))
os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
from vllm import LLM, SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.sampling_params import StructuredOutputsParams
from giellm_ray.decoding.lark_grammar import row_lark
from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt
from giellm_ray.generation.config import VLLMConfig
from giellm_ray.generation.vllm_engine import lead_space
from transformers import AutoTokenizer
a = json.loads(open(sys.argv[1], encoding="utf-8").read())
tok = AutoTokenizer.from_pretrained(a["model"])
kw = VLLMConfig(**a["vllm"]).engine_kwargs(a["dtype"], False)
llm = LLM(model=a["model"], tokenizer=a["model"], disable_log_stats=True,
          structured_outputs_config=StructuredOutputsConfig(backend="guidance"), **kw)
lead = lead_space(tok)
prompts, params = [], []
for r in a["rows"]:
    task = DEFAULT_REGISTRY[r["dataset"]]
    prompts.append({"prompt_token_ids": tok(build_prompt(r["text"], task))["input_ids"]})
    params.append(SamplingParams(max_tokens=r["cap"], temperature=0.0, detokenize=False,
        logprobs=0 if a["scores"] else None, structured_outputs=StructuredOutputsParams(grammar=row_lark(task, r["text"], lead))))
t1 = time.perf_counter()
outs = llm.generate(prompts, params, use_tqdm=False)
t2 = time.perf_counter()
toks = [tok.decode(o.outputs[0].token_ids, skip_special_tokens=True) for o in outs]
print("RAW", json.dumps({"total_s": time.perf_counter() - t0, "generate_s": t2 - t1,
      "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}), flush=True)
"""


def raw_generate(work: str, path: str, args, rows: list[dict], scores: bool) -> dict:
    """vLLM's own ``LLM.generate`` on ``rows`` in a fresh process, timed from its start."""
    arg = Path(work, f"raw-scores{int(scores)}.json")
    arg.write_text(
        json.dumps(
            {"model": path, "dtype": args.dtype, "vllm": VLLM_CPU, "rows": rows, "scores": scores}
        ),
        encoding="utf-8",
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", RAW, str(arg)],
        capture_output=True,
        text=True,
        cwd=ROOT,  # the child imports giellm_ray: from the repo root, as `python -m` runs
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall = time.perf_counter() - started
    line = [x for x in proc.stdout.splitlines() if x.startswith("RAW ")]
    if not line:
        raise SystemExit(f"raw LLM.generate failed:\n{proc.stderr[-4000:]}")
    return {**json.loads(line[0][4:]), "wall_s": wall}


def main() -> None:
    from giellm_ray.formats import DEFAULT_REGISTRY

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--model", default="compute", choices=["tiny", "compute"])
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--scores",
        choices=["on", "off", "both"],
        default="on",
        help="confidence scores in the job (logprobs in the raw run): the job's default is on",
    )
    ap.add_argument("--hf", action="store_true", help="also the whole job on the HF engine")
    args = ap.parse_args()
    texts = source_texts()
    names = sorted(DEFAULT_REGISTRY)
    with tempfile.TemporaryDirectory() as work:
        path = build_model(work, args.model, texts[:2000])
        settings = {**VLLM_CPU, "dtype": args.dtype}
        extra = [a for k, v in settings.items() for a in ("--set", f"vllm.{k}={json.dumps(v)}")]
        extra += ["--set", f"model.dtype={args.dtype}"]
        rows = [
            {"dataset": names[i % 6], "text": texts[i % len(texts)], "cap": CAPS[i % len(CAPS)]}
            for i in range(args.rows)
        ]
        for scores in {"on": [True], "off": [False], "both": [True, False]}[args.scores]:
            sub = f"{work}/layers-scores{int(scores)}"
            os.makedirs(sub)
            sets = ["--set", f"generation.scores={str(scores).lower()}"]
            job = run_whole_job(path, "vllm", args.rows, texts, sub, extra=extra + sets)
            emit(**job, model=args.model, dtype=args.dtype, constrained=True, scores=scores)
            raw = raw_generate(work, path, args, rows, scores)
            emit(
                run="raw_llm_generate",
                rows=args.rows,
                seconds=round(raw["wall_s"], 2),
                generate_s=round(raw["generate_s"], 2),
                tokens=raw["tokens"],
                model=args.model,
                dtype=args.dtype,
                scores=scores,
            )
            emit(
                run="summary",
                ratio_raw_over_job=round(raw["wall_s"] / job["seconds"], 3),
                goal=">= 0.9",
                job_s=round(job["seconds"], 2),
                raw_s=round(raw["wall_s"], 2),
                scores=scores,
            )
        if args.hf:
            for engine, constrained in (("hf", True), ("vllm", False), ("hf", False)):
                sub = f"{work}/{engine}{int(constrained)}"
                os.makedirs(sub)
                sets = ["--set", f"constrained={str(constrained).lower()}"]
                r = run_whole_job(
                    path,
                    engine,
                    args.rows,
                    texts,
                    sub,
                    extra=(extra if engine == "vllm" else ["--set", f"model.dtype={args.dtype}"])
                    + sets,
                )
                emit(**r, model=args.model, dtype=args.dtype, constrained=constrained)


if __name__ == "__main__":
    main()
