"""``benchmarks/gpu_specs.py``: CUDA device names map to the right datasheet peaks; others to None."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from gpu_specs import decode_roofline_tokens_per_s, lookup, mfu  # noqa: E402


@pytest.mark.parametrize(("name", "tflops", "tb_s"), [
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
])
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
        16 * 2.039e12 / 26e9)
