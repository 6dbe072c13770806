"""Distinct CPU cores for each vLLM CPU engine on a node.

vLLM's CPU build binds its OpenMP threads to ``VLLM_CPU_OMP_THREADS_BIND`` (default: every core
of the NUMA node). Two engines on one node then bind the same cores: with two score actors on a
2-core box both engines ran on [0, 1] and the whole job was slower than the HF engine (0.88x).
:func:`claim_cores` hands each engine its own block of ``count`` cores of this process's affinity
set: the first block whose lock file (``/tmp/giellm-cpu-cores/FIRST-LAST.lock``, holding the
owner's pid) can be created exclusively; a lock whose pid is gone is taken over (an actor that
crashed). :func:`release_cores` removes it at engine shutdown. Ray-free; one node only (each
node has its own ``/tmp``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

log = logging.getLogger(__name__)
LOCK_DIR = "/tmp/giellm-cpu-cores"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def bind_string(cores: list[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``cores``: ``a-b`` ranges joined by commas."""
    parts, start = [], None
    for i, c in enumerate(cores):
        if start is None:
            start = c
        if i + 1 == len(cores) or cores[i + 1] != c + 1:
            parts.append(f"{start}-{c}" if c != start else f"{c}")
            start = None
    return ",".join(parts)


def claim_cores(count: int, lock_dir: str = LOCK_DIR) -> tuple[list[int], str] | None:
    """``(cores, lock path)`` of a free block of ``count`` cores, or ``None`` if all are held."""
    cores = sorted(os.sched_getaffinity(0))
    count = max(1, min(count, len(cores)))
    os.makedirs(lock_dir, exist_ok=True)
    for i in range(0, len(cores) - count + 1, count):
        block = cores[i : i + count]
        path = os.path.join(lock_dir, f"{block[0]}-{block[-1]}.lock")
        for _ in range(2):  # a second try after removing a dead owner's lock
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                try:
                    with open(path, encoding="ascii") as f:
                        owner = int(f.read().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and _alive(owner):
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(str(os.getpid()))
            return block, path
    return None


def release_cores(path: str | None) -> None:
    """Give a claimed block back (idempotent; only this process's own lock)."""
    if not path:
        return
    try:
        with open(path, encoding="ascii") as f:
            if int(f.read().strip() or 0) != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass
