"""Datasheet peaks by GPU name, for MFU and decode rooflines in the GPU benchmarks.

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


def decode_roofline_tokens_per_s(weight_bytes: float, batch: float, device_name: str) -> float | None:
    """Decode tokens/s if every step only streamed the weights once from HBM (KV reads ignored):
    ``batch x bandwidth / weight_bytes``. ``None`` for an unknown device."""
    spec = lookup(device_name)
    if spec is None or weight_bytes <= 0:
        return None
    return batch * spec.hbm_tb_s * 1e12 / weight_bytes
