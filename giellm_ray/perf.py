"""Performance arithmetic: datasheet peaks by GPU name, MFU, the decode roofline, Llama sizes.

Used by the GPU benchmarks (``benchmarks/gpu_*.py``) and tested without a GPU; pure (no torch).

``lookup(torch.cuda.get_device_name())`` returns the dense BF16 tensor-core peak (TFLOP/s, no 2:4
sparsity), the memory bandwidth (TB/s) and the memory size of the first matching entry, or
``None`` for a device not in the table (callers then report "unknown device" instead of an MFU).
Entries are ordered most specific first, because "GH200" contains "H200" and "H100 PCIe" contains
"H100". Figures are NVIDIA's datasheet numbers for the SXM/PCIe variant named; clocks under power
capping are lower, so measured MFU is against an upper bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceSpec:
    """Peaks of one GPU model."""

    name: str
    bf16_dense_tflops: float
    hbm_tb_s: float
    memory_gb: float


# (pattern on the CUDA device name, spec). Patterns are case-insensitive and matched in order.
DEVICE_TABLE: tuple[tuple[str, DeviceSpec], ...] = (
    (r"B200", DeviceSpec("B200", 2250.0, 8.0, 180)),
    (r"GH200", DeviceSpec("GH200", 989.0, 4.0, 96)),
    (r"H200 NVL", DeviceSpec("H200 NVL", 835.0, 4.8, 141)),
    (r"H200", DeviceSpec("H200 SXM", 989.0, 4.8, 141)),
    (r"H100 NVL", DeviceSpec("H100 NVL", 835.0, 3.9, 94)),
    (r"H100 PCIe", DeviceSpec("H100 PCIe", 756.0, 2.0, 80)),
    (r"H100|H800", DeviceSpec("H100/H800 SXM", 989.0, 3.35, 80)),
    (r"A100.*PCIe.*40GB|A100-PCIE-40GB", DeviceSpec("A100 PCIe 40GB", 312.0, 1.555, 40)),
    (r"A100.*40GB", DeviceSpec("A100 SXM 40GB", 312.0, 1.555, 40)),
    (r"A[18]00.*PCIe", DeviceSpec("A100/A800 PCIe 80GB", 312.0, 1.935, 80)),
    (r"A100|A800", DeviceSpec("A100/A800 SXM 80GB", 312.0, 2.039, 80)),
    (r"L40S", DeviceSpec("L40S", 362.0, 0.864, 48)),
    (r"L40", DeviceSpec("L40", 181.0, 0.864, 48)),
    (r"A10G", DeviceSpec("A10G", 125.0, 0.6, 24)),  # AWS g5; NVIDIA publishes the A10's figures
    (r"A10\b", DeviceSpec("A10", 125.0, 0.6, 24)),
    (r"\bL4\b", DeviceSpec("L4", 121.0, 0.3, 24)),
)


def lookup(device_name: str) -> DeviceSpec | None:
    """The spec of the first table entry whose pattern occurs in ``device_name``; else ``None``."""
    for pattern, spec in DEVICE_TABLE:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return spec
    return None


def mfu(flops_per_token: float, tokens_per_s: float, device_name: str) -> float | None:
    """Model FLOPs utilisation against the device's dense BF16 peak; ``None`` if unknown."""
    spec = lookup(device_name)
    if spec is None or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (spec.bf16_dense_tflops * 1e12)


def llama_params(hidden: int, mlp: int, layers: int, vocab: int, tied: bool = False) -> int:
    """Parameters of a Llama without grouped KV heads: per layer 4 attention projections, 3 MLP
    matrices and 2 norms; the embedding (and, untied, the LM head); the final norm."""
    per_layer = 4 * hidden * hidden + 3 * hidden * mlp + 2 * hidden
    return layers * per_layer + (1 if tied else 2) * vocab * hidden + hidden


ONE_B_LLAMA = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
}
"""The ~1.03B random-init Llama ``benchmarks/gpu_score.py`` builds (16 heads of 128, no grouped
KV; with an 8,000-token vocabulary and untied embeddings)."""


def decode_roofline_tokens_per_s(
    weight_bytes: float, batch: float, device_name: str
) -> float | None:
    """Decode tokens/s if every step only streamed the weights once from HBM (KV reads ignored):
    ``batch x bandwidth / weight_bytes``. ``None`` for an unknown device."""
    spec = lookup(device_name)
    if spec is None or weight_bytes <= 0:
        return None
    return batch * spec.hbm_tb_s * 1e12 / weight_bytes


def roofline(tok_s: float, batch: float | None, weight_bytes: int, device: str) -> dict:
    """The HBM roofline of decode at ``batch`` rows per step and the measured fraction of it,
    as fields of a benchmark's JSON line."""
    if not batch:
        return {"roofline_note": "engine reported no decode batch"}
    roof = decode_roofline_tokens_per_s(weight_bytes, batch, device)
    if roof is None:
        return {"roofline_note": f"unknown device {device!r} (add it to giellm_ray/perf.py)"}
    return {
        "mean_batch": round(batch, 1),
        "roofline_tok_s": round(roof, 1),
        "roofline_fraction": round(tok_s / roof, 4),
    }


__all__ = [
    "DEVICE_TABLE",
    "ONE_B_LLAMA",
    "DeviceSpec",
    "decode_roofline_tokens_per_s",
    "llama_params",
    "lookup",
    "mfu",
    "roofline",
]
