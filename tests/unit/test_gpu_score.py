"""``benchmarks/gpu_score.py`` off the GPU: its model is ~1B parameters, its roofline arithmetic
uses the device table, and without CUDA it stops at once with a message saying what to run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_score import NO_CUDA, SHAPE, llama_params, roofline  # noqa: E402


def test_the_benchmark_model_is_about_one_billion_parameters():
    from transformers import LlamaConfig, LlamaForCausalLM

    params = llama_params(SHAPE["hidden_size"], SHAPE["intermediate_size"],
                          SHAPE["num_hidden_layers"], 8000)
    assert 0.95e9 < params < 1.1e9
    small = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=176,
                        num_hidden_layers=3, num_attention_heads=4, tie_word_embeddings=False)
    counted = sum(p.numel() for p in LlamaForCausalLM(small).parameters())
    assert llama_params(64, 176, 3, 300) == counted  # the formula is the model's own count


def test_roofline_fraction_against_the_device_table():
    # H100 SXM: 3.35 TB/s; 2 GB of weights streamed per step at 64 rows: 107,200 tok/s.
    r = roofline(53_600.0, 64, 2_000_000_000, "NVIDIA H100 80GB HBM3")
    assert r["roofline_tok_s"] == pytest.approx(107_200.0) and r["roofline_fraction"] == 0.5
    assert "unknown device" in roofline(1.0, 8, 10**9, "NVIDIA Quadro 4000")["roofline_note"]
    assert "no decode batch" in roofline(1.0, None, 10**9, "NVIDIA H200")["roofline_note"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_it_exits_with_a_clear_message():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_score.py")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and NO_CUDA in proc.stderr
    assert "Traceback" not in proc.stderr
