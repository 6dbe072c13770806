"""The engine runners of ``benchmarks/engines.py`` (CPU) and ``benchmarks/gpu_score.py`` (GPU).

Each runner takes rows (``prompt``, ``text``, ``task``, ``cap``) and a mode (``constrained``,
``free``: unconstrained to each cap, or ``free_equal``: unconstrained to given per-row lengths)
and returns ``{"tokens", "seconds", "lengths"}`` for the generation alone: ``naive`` (one row at a
time through ``model.generate``), ``hf_static`` (``model.generate`` on padded batches),
``hf_engine`` (our loop) and ``vllm`` (``VLLMEngine``). Tokens are counted the way the engines'
contract does (``giellm_ray.generation.base``): each row's tokens up to and including its EOS,
never past its cap. Not a test, not imported by the package.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT

CAPS = (24, 40, 56, 72)


def make_rows(texts: list[str], n: int) -> list[dict]:
    """``n`` rows: the six tasks round-robin over ``texts``, caps ``CAPS`` by row."""
    from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt

    names = sorted(DEFAULT_REGISTRY)
    out = []
    for i in range(n):
        task = DEFAULT_REGISTRY[names[i % len(names)]]
        text = texts[i % len(texts)]
        out.append(
            {
                "id": str(i),
                "dataset": task.name,
                "text": text,
                "task": task,
                "prompt": build_prompt(text, task),
                "cap": CAPS[i % len(CAPS)],
            }
        )
    return out


class ConstrainLogits:
    """The format constraint as a ``transformers`` logits processor for ``model.generate``."""

    def __init__(self, constraints: list, prompt_len: int, eos: int) -> None:
        from giellm_ray.generation.masks import MaskCache

        self.cs, self.start, self.eos = constraints, prompt_len, eos
        self.done = [False] * len(constraints)
        self.masks = MaskCache(fallback_id=eos)

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.start
        allowed = []
        for i, c in enumerate(self.cs):
            if step > 0 and not self.done[i]:
                tok = int(input_ids[i, -1])
                self.done[i] = tok == self.eos
                if not self.done[i]:
                    c.advance(tok)
            allowed.append((self.eos,) if self.done[i] or c.is_done() else c.allowed_tokens())
        return self.masks.apply(scores, allowed)


def _count(seq: list[int], cap: int, eos: int) -> int:
    seq = seq[:cap]
    return seq.index(eos) + 1 if eos in seq else len(seq)


def _caps(rows: list[dict], lengths: list[int] | None) -> list[int]:
    return [r["cap"] for r in rows] if lengths is None else list(lengths)


def run_generate(
    model, tok, factory, rows: list[dict], mode: str, batch: int, lengths: list[int] | None = None
) -> dict:
    """``model.generate`` on batches of ``batch`` rows (1: the naive loop), greedy."""
    import torch

    caps, eos = _caps(rows, lengths), tok.eos_token_id
    out_lengths: list[int] = []
    start = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(rows), batch):
            part, part_caps = rows[k : k + batch], caps[k : k + batch]
            enc = tok([r["prompt"] for r in part], return_tensors="pt", padding=True)
            procs = None
            if mode == "constrained":
                cs = [
                    factory.for_row(r["text"], r["task"], c)
                    for r, c in zip(part, part_caps, strict=True)
                ]
                procs = [ConstrainLogits(cs, enc["input_ids"].shape[1], eos)]
            out = model.generate(
                **enc,
                max_new_tokens=max(part_caps),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos,
                logits_processor=procs,
            )
            gen = out[:, enc["input_ids"].shape[1] :].tolist()
            out_lengths += [_count(g, c, eos) for g, c in zip(gen, part_caps, strict=True)]
    return {
        "tokens": sum(out_lengths),
        "seconds": time.perf_counter() - start,
        "lengths": out_lengths,
    }


def _requests(rows: list[dict], mode: str, lengths, constrain) -> list:
    from giellm_ray.generation.base import GenerationRequest

    return [
        GenerationRequest(
            r["prompt"], c, constrain(r["text"], r["task"], c) if mode == "constrained" else None
        )
        for r, c in zip(rows, _caps(rows, lengths), strict=True)
    ]


def run_engine(
    engine, rows: list[dict], mode: str, constrain, lengths: list[int] | None = None
) -> dict:
    """Our HF engine or the vLLM engine (``engine.generate``); ``constrain(text, task, cap)``
    makes a row's constraint in the form the engine takes."""
    reqs = _requests(rows, mode, lengths, constrain)
    start = time.perf_counter()
    results = engine.generate(reqs)
    seconds = time.perf_counter() - start
    bad = [r.error for r in results if r.error]
    if bad:
        raise RuntimeError(f"{len(bad)} rows failed, e.g. {bad[0]}")
    out_lengths = [r.num_generated_tokens for r in results]
    return {
        "tokens": sum(out_lengths),
        "seconds": seconds,
        "lengths": out_lengths,
        "texts": [r.text for r in results],
    }


def replay_constraint(factory, tok, rows: list[dict], texts: list[str], repeats: int = 3) -> dict:
    """The constraint's own CPU cost, without a model: each row's constrained output (re-encoded)
    stepped through a fresh constraint (``for_row``, then ``allowed_tokens``/``advance``/``is_done``
    per token, as an engine calls them), best of ``repeats``. One thread of pure Python, so far
    less exposed to a shared machine's noise than the wall-clock gap between two engine runs."""
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    best = float("inf")
    steps = 0
    for _ in range(repeats):
        steps = 0
        start = time.perf_counter()
        for row, out in zip(rows, ids, strict=True):
            c = factory.for_row(row["text"], row["task"], row["cap"])
            for t in out:
                c.allowed_tokens()
                c.advance(t)
                c.is_done()
            c.allowed_tokens()  # the step that picks EOS
            steps += len(out) + 1
        best = min(best, time.perf_counter() - start)
    return {"steps": steps, "us_per_token": best / max(steps, 1) * 1e6}


def run_whole_job(
    model_dir: str,
    engine: str,
    n: int,
    texts: list[str],
    workdir: str,
    config: str = str(ROOT / "jobs/configs/score/cpu.yaml"),
    extra: list[str] | None = None,
) -> dict:
    """A whole ``giellm score`` process (``config``, constrained) on ``n`` rows, timed; vLLM with
    one actor (one engine per machine: on CPU two would split its cores)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from giellm_ray.formats import DEFAULT_REGISTRY

    names = sorted(DEFAULT_REGISTRY)
    inp, out = Path(workdir, f"job-in-{engine}"), Path(workdir, f"job-out-{engine}")
    inp.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": [str(i) for i in range(n)],
                "dataset": [names[i % 6] for i in range(n)],
                "text": [texts[i % len(texts)] for i in range(n)],
                "max_new_tokens": pa.array([CAPS[i % len(CAPS)] for i in range(n)], pa.int32()),
            }
        ),
        inp / "rows.parquet",
    )
    cmd = [
        sys.executable,
        "-m",
        "giellm_ray.cli",
        "score",
        "--model",
        model_dir,
        "--input",
        str(inp),
        "--output",
        str(out),
        "--config",
        config,
        "--set",
        "progress_bars=false",
        "--set",
        "progress_interval_s=0",
        "--set",
        f"engine={engine}",
        *(extra or ()),
    ]
    if engine == "vllm":
        cmd += ["--set", "num_actors=1"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    secs = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"giellm score ({engine}) failed:\n{proc.stderr[-4000:]}")
    s = json.loads((out / "_score.json").read_text())
    return {
        "run": "whole_job",
        "engine": engine,
        "rows": s["output_rows"],
        "seconds": secs,
        "rows_s": s["output_rows"] / secs,
        "errors": s["error_rows"],
        "tok_s_job": s["engine"]["generated_tokens"] / secs,
        "job_20k_est_s": secs if n >= 20000 else None,
    }
