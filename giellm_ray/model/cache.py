"""One download per node: ``s3://`` model prefixes copied once into a node-local cache and shared.

Every process that loads a model (8 train ranks, 8 score actors, Serve replicas on one 8-GPU node)
calls :func:`localize`. Without coordination each would copy the prefix itself into the same
directory, and one would memory-map ``model.safetensors`` while another rewrites it (SIGBUS or a
truncated model). Here the first process takes an exclusive ``fcntl.flock`` on ``<target>.lock``
beside the target, downloads into ``<target>.tmp-<pid>-<id>`` in the same filesystem, checks that
every listed object arrived with its listed size, writes the ``.complete`` marker (a manifest) and
renames the temp dir to ``<target>`` in one atomic step. The others wait on the lock, then reuse
the finished directory; later callers see the marker and take no lock at all. The kernel drops
a ``flock`` when its holder dies, so a killed downloader leaves no stale lock: the next holder
removes its temp dir and starts again. The lock must be on a local filesystem (``flock`` is not
reliable on NFS/EFS), which node-local NVMe and the home directory are.

Arithmetic, 13B in bf16 (26 GB of weights) on an 8-GPU node: before, 8 ranks × 26 GB = 208 GB of
S3 traffic and 208 GB written to one disk per node (again for 8 score actors, again for 8 Serve
replicas); after, 26 GB once per node, and later jobs on the node download nothing. At ~1 GB/s
from S3 per node that is ~26 s instead of eight copies sharing the link for ~3.5 min.

Cache location: ``GIELLM_MODEL_CACHE`` if set; else ``giellm/models`` on node-local NVMe when one
of :data:`NVME_ROOTS` is a writable directory (``/mnt/nvme``: where ``cluster.yaml`` mounts the
p4de/p5 instance-store RAID inside the container; ``/opt/dlami/nvme``: where the AWS Deep
Learning AMI mounts it on the host); else ``~/.cache/giellm/models`` (the root EBS volume).
Knows s3fs, never Ray or torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator

from giellm_ray import io

logger = logging.getLogger(__name__)

CACHE_ENV = "GIELLM_MODEL_CACHE"
NVME_ROOTS = ("/mnt/nvme", "/opt/dlami/nvme")
MARKER = ".complete"
# How often a waiting process says it is still waiting.
WAIT_LOG_EVERY_S = 30.0
POLL_S = 0.2


def model_cache_dir() -> str:
    """Where ``s3://`` models are cached on this node (see the module docstring for the order)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return os.path.expanduser(override)
    for root in NVME_ROOTS:
        if os.path.isdir(root) and os.access(root, os.W_OK | os.X_OK):
            return os.path.join(root, "giellm", "models")
    return os.path.expanduser("~/.cache/giellm/models")


def _who() -> str:
    return f"pid {os.getpid()}@{socket.gethostname()}"


@contextlib.contextmanager
def node_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); released when the holder dies.

    Separate ``open()`` calls get separate locks, so threads of one process exclude each other too.
    A waiter logs who holds the lock (the holder writes its pid@host into the file).
    """
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            logger.info("%s: waiting for %s, which holds %s", _who(), holder, path)
            start = last_log = time.monotonic()
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(POLL_S)
                    if time.monotonic() - last_log >= WAIT_LOG_EVERY_S:
                        last_log = time.monotonic()
                        logger.info(
                            "%s: still waiting for %s (%.0f s)", _who(), path, last_log - start
                        )
            logger.info("%s: got %s after %.1f s", _who(), path, time.monotonic() - start)
        try:
            f.seek(0)
            f.truncate()
            f.write(_who())
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_complete(local_dir: str) -> bool:
    """Whether ``local_dir`` is a finished download (its marker is written before the rename)."""
    return os.path.isfile(os.path.join(local_dir, MARKER))


def list_objects(fs, prefix: str) -> dict[str, int]:
    """``{path relative to prefix: size}`` of every object under ``s3://`` ``prefix``."""
    root = prefix[len("s3://") :].rstrip("/")
    found = fs.find(root, detail=True)
    return {
        full[len(root) + 1 :]: int(info["size"])
        for full, info in found.items()
        if full.startswith(root + "/")
        and not full.endswith("/")
        and info.get("type", "file") == "file"
    }


def verify(listing: dict[str, int], local_dir: str) -> None:
    """Raise ``OSError`` naming the first object missing from ``local_dir`` or of another size."""
    for rel, size in sorted(listing.items()):
        path = os.path.join(local_dir, rel)
        if not os.path.isfile(path):
            raise OSError(f"download incomplete: {rel} is missing from {local_dir}")
        got = os.path.getsize(path)
        if got != size:
            raise OSError(f"download incomplete: {rel} has {got} bytes, S3 lists {size}")


def _remove_leftovers(target: str) -> None:
    """Under the lock: temp dirs of dead holders, and an unmarked target (pre-lock caches)."""
    parent, name = os.path.split(target)
    for entry in os.listdir(parent):
        if entry.startswith(name + ".tmp-"):
            logger.info("%s: removing %s left by a download that died", _who(), entry)
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    if os.path.exists(target) and not is_complete(target):
        logger.info("%s: removing incomplete %s", _who(), target)
        shutil.rmtree(target, ignore_errors=True)


def _download(prefix: str, target: str) -> None:
    fs = io.s3fs_filesystem()
    listing = list_objects(fs, prefix)
    if not listing:
        raise FileNotFoundError(f"no model files under {prefix}/")
    total = sum(listing.values())
    _remove_leftovers(target)
    tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    logger.info(
        "%s: downloading %s (%d files, %.2f GB) into %s",
        _who(),
        prefix,
        len(listing),
        total / 1e9,
        target,
    )
    start = time.monotonic()
    try:
        lpaths = [os.path.join(tmp, rel) for rel in listing]
        for d in {os.path.dirname(p) for p in lpaths}:
            os.makedirs(d, exist_ok=True)
        root = prefix[len("s3://") :]
        fs.get([f"{root}/{rel}" for rel in listing], lpaths)
        verify(listing, tmp)
        manifest = {"source": prefix, "files": listing, "bytes": total, "by": _who()}
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump(manifest, f)
        os.rename(tmp, target)  # atomic on one filesystem: readers see all of it or nothing
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.monotonic() - start
    logger.info(
        "%s: downloaded %s in %.1f s (%.0f MB/s)",
        _who(),
        prefix,
        seconds,
        total / 1e6 / max(seconds, 1e-9),
    )


def localize(name_or_path: str, cache_dir: str | None = None) -> str:
    """A local directory for ``name_or_path``: ``s3://`` prefixes are downloaded once per node.

    Local paths and hub ids are returned unchanged. ``cache_dir`` defaults to
    :func:`model_cache_dir`. Safe to call from many processes at once (see the module docstring).
    """
    if not io.is_s3(name_or_path):
        return name_or_path
    prefix = name_or_path.rstrip("/")
    cache = cache_dir or model_cache_dir()
    target = os.path.join(cache, hashlib.sha1(prefix.encode()).hexdigest()[:16])
    if is_complete(target):
        logger.debug("%s: %s cached in %s", _who(), prefix, target)
        return target
    os.makedirs(cache, exist_ok=True)
    with node_lock(target + ".lock"):
        if is_complete(target):
            logger.info(
                "%s: reusing %s, downloaded by another process into %s", _who(), prefix, target
            )
            return target
        _download(prefix, target)
    return target
