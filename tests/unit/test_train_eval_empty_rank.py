"""ZeRO-3 evaluation with a rank that has no eval rows (1 row, 2 workers), under a real 2-process
gloo group on CPU: the empty rank must still run as many forwards as the others (a dummy row,
uncounted), or the other rank's parameter all-gathers wait on it forever (30 min under NCCL).
Before the fix, rank 1 skipped its forward and this test hung until its timeout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

WORKER = r"""
import json, sys
import pyarrow.parquet as pq
import deepspeed
from giellm_ray.model.loader import load_tokenizer
from giellm_ray.model.sft import build_examples
from giellm_ray.sample import sample_path
from giellm_ray.train.config import TrainConfig
from giellm_ray.train.deepspeed_config import build_ds_config
from giellm_ray.train.deepspeed_init import build_ds_engine
from giellm_ray.train.evaluation import eval_loss

rank, model = int(sys.argv[1]), sys.argv[2]
deepspeed.init_distributed(dist_backend="gloo")
cfg = TrainConfig.model_validate({"model": {"name_or_path": model}, "zero_stage": 3,
                                  "num_workers": 2, "eval": {"batch_size": 2}})
engine, _keep = build_ds_engine(cfg, model, build_ds_config(cfg, 4, 2))
tokenizer = load_tokenizer(cfg.model)
row = pq.read_table(sample_path("test")).slice(0, 1).to_pylist()[0]
rows = [row][rank::2]  # rank 0 has the row, rank 1 none
loss, n_tok = eval_loss(engine, rows, tokenizer, cfg, "cpu")
examples, _ = build_examples([(row["prompt"], row["target"])], tokenizer, cfg.data.max_length,
                             cfg.data.overlong)
expected = sum(1 for t in examples[0].labels[1:] if t != -100)
print("RESULT " + json.dumps({"rank": rank, "rows": len(rows), "loss": loss, "n_tok": n_tok,
                              "expected_tok": expected}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_zero3_eval_loss_with_an_empty_rank_does_not_hang(tiny_model_dir):
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "DS_ACCELERATOR": "cpu",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(rank), tiny_model_dir],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=360)
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            assert p.returncode == 0 and lines, err[-3000:]
            results.append(json.loads(lines[-1][len("RESULT ") :]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [r["rows"] for r in results] == [1, 0]
    # Both ranks agree, and only the real row's target tokens are counted (the dummy is not).
    assert results[0]["n_tok"] == results[1]["n_tok"] == results[0]["expected_tok"] > 0
    assert results[0]["loss"] == results[1]["loss"] > 0
