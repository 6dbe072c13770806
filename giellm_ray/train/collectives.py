"""The training workers' own collectives: small reductions and gathers on a device the group serves.

A collective's tensor must live on a device the process group's backend serves: Ray Train gives
GPU workers an NCCL-only group, which raises "No backend type associated with device type cpu"
for a CPU tensor; CPU workers get gloo. :func:`reduce_values` (sums, minima and maxima of a few
numbers: data statistics, the epoch length, the logged loss window, eval-loss totals, throughput)
is the one way the loop and the evaluation reduce, and it creates its tensor on the worker's own
device after :func:`collective_device` has checked that the group serves it.

Why tensors on the worker's device rather than ``TorchConfig(backend="cpu:gloo,cuda:nccl")``:
DeepSpeed shares the default group and compares its backend name with ``"nccl"`` in places, so a
mixed-backend group is an untested configuration for it, while a tensor on the worker's GPU is
what NCCL was built for. The cost is nil: each reduce moves at most a few float64s (< 100 B per
rank) once per log window or epoch, against ~45 GB per rank per optimizer step that ZeRO moves at
13B (see ``configs/train/giellm-13b.yaml``). :func:`gather_objects` wraps ``all_gather_object``,
which picks its own device from the backend (the current CUDA device under NCCL, set by Ray
Train before the loop starts). DeepSpeed's own collectives place their tensors on its device.
Run by the tests in ``tests/unit/test_train_collectives.py`` under a real 2-process group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

OPS = ("sum", "min", "max")


def _group_device_types() -> set[str] | None:
    """The device types the default process group serves (``None`` when there is no group)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    group = dist.group.WORLD
    return {d.type for d in getattr(group, "_device_types", [])} or None


def collective_device(preferred):
    """``preferred`` (a ``torch.device``) if the default group serves it, else a clear error.

    Without a process group (one worker, tests) any device does. Under gloo this is the CPU,
    under NCCL the worker's GPU; a group that cannot serve the worker's device is a
    misconfiguration the caller must hear about before the collective hangs or fails.
    """
    import torch

    preferred = torch.device(preferred)
    served = _group_device_types()
    if served is None or preferred.type in served:
        return preferred
    import torch.distributed as dist

    raise ValueError(
        f"the process group (backend {dist.get_backend()!r}) serves {sorted(served)} tensors, not "
        f"this worker's device {preferred}; put the worker on a served device (use_gpu with "
        "NCCL, CPU with gloo)"
    )


def reduce_values(values: Sequence[float], op: str = "sum", device: Any = "cpu") -> list[float]:
    """Element-wise ``op`` (sum, min or max) of ``values`` over all ranks, as Python floats.

    The float64 tensor is created on ``device`` (the worker's device) after
    :func:`collective_device` has checked the group can reduce it there.
    """
    import torch
    import torch.distributed as dist

    if op not in OPS:
        raise ValueError(f"unknown reduce op {op!r}; one of {OPS}")
    t = torch.tensor(
        [float(v) for v in values], dtype=torch.float64, device=collective_device(device)
    )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(
            t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op]
        )
    return t.tolist()


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` without a group).

    ``all_gather_object`` pickles into a byte tensor on the device its backend needs (the
    current CUDA device under NCCL), so it needs no device from us.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
