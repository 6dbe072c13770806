"""``giellm_ray.perf``: CUDA device names map to the right datasheet peaks (others to None), and
the MFU, roofline and Llama-size arithmetic the GPU benchmarks report."""

from __future__ import annotations

import pytest

from giellm_ray.perf import (
    ONE_B_LLAMA,
    decode_roofline_tokens_per_s,
    llama_params,
    lookup,
    mfu,
    roofline,
)


@pytest.mark.parametrize(
    ("name", "tflops", "tb_s"),
    [
        ("NVIDIA A100-SXM4-80GB", 312, 2.039),
        ("NVIDIA A800-SXM4-80GB", 312, 2.039),
        ("NVIDIA A100-SXM4-40GB", 312, 1.555),
        ("NVIDIA A100 80GB PCIe", 312, 1.935),
        ("NVIDIA H100 80GB HBM3", 989, 3.35),
        ("NVIDIA H100 PCIe", 756, 2.0),
        ("NVIDIA H200", 989, 4.8),
        ("NVIDIA GH200 480GB", 989, 4.0),
        ("NVIDIA L40S", 362, 0.864),
        ("NVIDIA A10G", 125, 0.6),
        ("NVIDIA L4", 121, 0.3),
    ],
)
def test_known_devices(name, tflops, tb_s):
    spec = lookup(name)
    assert (spec.bf16_dense_tflops, spec.hbm_tb_s) == (tflops, tb_s)


def test_unknown_device_has_no_peak():
    assert lookup("Tesla V100-SXM2-16GB") is None and lookup("cpu") is None
    assert mfu(1e9, 1e3, "cpu") is None
    assert decode_roofline_tokens_per_s(2e9, 16, "cpu") is None


def test_mfu_and_roofline_arithmetic():
    # 13B: 6 x 13e9 FLOPs/token at 2,000 tokens/s on an A100 = 156 / 312 TFLOP/s.
    assert mfu(6 * 13e9, 2000, "NVIDIA A100-SXM4-80GB") == pytest.approx(0.5)
    # 26 GB of bf16 weights streamed per step at 2.039 TB/s, batch 16: ~1,255 tokens/s.
    assert decode_roofline_tokens_per_s(26e9, 16, "NVIDIA A100-SXM4-80GB") == pytest.approx(
        16 * 2.039e12 / 26e9
    )


def test_the_benchmark_model_is_about_one_billion_parameters():
    from transformers import LlamaConfig, LlamaForCausalLM

    params = llama_params(
        ONE_B_LLAMA["hidden_size"],
        ONE_B_LLAMA["intermediate_size"],
        ONE_B_LLAMA["num_hidden_layers"],
        8000,
    )
    assert 0.95e9 < params < 1.1e9
    small = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=3,
        num_attention_heads=4,
        tie_word_embeddings=False,
    )
    counted = sum(p.numel() for p in LlamaForCausalLM(small).parameters())
    assert llama_params(64, 176, 3, 300) == counted  # the formula is the model's own count
    tied = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=176,
            num_hidden_layers=3,
            num_attention_heads=4,
            tie_word_embeddings=True,
        )
    )
    assert llama_params(64, 176, 3, 300, tied=True) == sum(p.numel() for p in tied.parameters())


def test_roofline_fraction_against_the_device_table():
    # H100 SXM: 3.35 TB/s; 2 GB of weights streamed per step at 64 rows: 107,200 tok/s.
    r = roofline(53_600.0, 64, 2_000_000_000, "NVIDIA H100 80GB HBM3")
    assert r["roofline_tok_s"] == pytest.approx(107_200.0) and r["roofline_fraction"] == 0.5
    assert "unknown device" in roofline(1.0, 8, 10**9, "NVIDIA Quadro 4000")["roofline_note"]
    assert "no decode batch" in roofline(1.0, None, 10**9, "NVIDIA H200")["roofline_note"]
