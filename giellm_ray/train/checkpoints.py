"""Training checkpoints in storage: what a complete one is, finding the newest, trusting, restoring.

A checkpoint is a directory ``<storage_path>/<run_name>/checkpoint_<time>/`` holding DeepSpeed's
files under ``ds/`` (``mp_rank_00_model_states.pt`` from rank 0 at ZeRO-2, and per rank
``*zero_pp_rank_<r>_mp_rank_00_{model,optim}_states.pt``), ``train_state.json`` (epoch, batch,
step, world size, how many ranks write files) from rank 0, and ``_complete/rank-<r>.json``,
which each writing rank puts there *after* its files are in storage. **Complete** means
``train_state.json`` plus every writing rank's marker. Ray Train registers a checkpoint only when
the controller has collected every rank's report; a worker killed after uploading but before that
leaves a complete directory Ray does not know (an orphan). :func:`newest_complete` finds it, the
loop resumes from it, and :func:`remove_orphans` deletes what Ray's record does not keep.

Restoring reads only what a rank needs (:func:`rank_files`): DeepSpeed loads its own optimizer
shard unless ``elastic_checkpoint`` is on (it is off here), so rank ``r`` reads its
``zero_pp_rank_<r>_`` files plus the shared ones; :func:`stage_for_rank` downloads the shared files
once per node (a file lock) and each rank its own shard into the node-local staging directory.
13B ZeRO-3: ~156 GB per checkpoint, 19.5 GB per rank; before, every rank fetched all of it
(8 x 156 GB onto one 1 TB root volume). Resuming runs ``torch.load(weights_only=False)``: a
checkpoint is code, so :func:`check_trusted` refuses one outside ``storage_path`` unless the
config says ``trust_checkpoint: true``. Pure pyarrow and the standard library (no Ray, no torch).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile

import pyarrow.fs as pafs

from giellm_ray import io
from giellm_ray.model.cache import NVME_ROOTS

log = logging.getLogger(__name__)

CKPT_TAG = "ds"
STATE_FILE = "train_state.json"
DONE_DIR = "_complete"
CKPT_PREFIX = "checkpoint_"
# Instance-store NVMe (RAID-0 of p4de's 8 x 1 TB): /mnt/nvme inside cluster.yaml's container,
# /opt/dlami/nvme on a Deep Learning AMI host; the same roots the model cache uses.
NVME_CANDIDATES = NVME_ROOTS
_SHARD = re.compile(r"zero_pp_rank_(\d+)_")
_CHUNK = 64 * 1024 * 1024  # large chunks for multi-GB shards (what Ray uses for uploads)


def uri(fs: pafs.FileSystem, path: str) -> str:
    """A path on ``fs`` as a URI the rest of the code takes (``s3://...`` or a local path)."""
    return path if isinstance(fs, pafs.LocalFileSystem) else "s3://" + path.lstrip("/")


def marker_path(ckpt_path: str, rank: int) -> str:
    return f"{ckpt_path}/{DONE_DIR}/rank-{rank}.json"


def read_state(fs: pafs.FileSystem, ckpt_path: str) -> dict | None:
    """``train_state.json`` of a checkpoint directory, ``None`` if it is missing or unreadable."""
    try:
        with fs.open_input_stream(f"{ckpt_path}/{STATE_FILE}") as f:
            return json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None


def is_complete(fs: pafs.FileSystem, ckpt_path: str) -> dict | None:
    """The state of a complete checkpoint (see the module docstring), else ``None``."""
    state = read_state(fs, ckpt_path)
    if state is None or "writers" not in state:
        return None
    for rank in range(int(state["writers"])):
        if fs.get_file_info(marker_path(ckpt_path, rank)).type != pafs.FileType.File:
            return None
    return state


def checkpoint_dirs(fs: pafs.FileSystem, run_path: str) -> list[str]:
    """The ``checkpoint_*`` directories of a run, oldest name first."""
    infos = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    return sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory and posixpath.basename(i.path).startswith(CKPT_PREFIX)
    )


def newest(candidates: list[tuple[str, dict]]) -> tuple[str, dict] | None:
    """The furthest-trained ``(path, state)``; at equal steps a full checkpoint beats weights-only,
    then the later directory name (Ray names them by time)."""
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[1]["step"], not c[1].get("weights_only"), c[0]))


def newest_complete(fs: pafs.FileSystem, run_path: str) -> tuple[str, dict] | None:
    """``(path, state)`` of the furthest-trained complete checkpoint in a run directory."""
    found = [(p, s) for p in checkpoint_dirs(fs, run_path) if (s := is_complete(fs, p))]
    return newest(found)


def remove_orphans(fs: pafs.FileSystem, run_path: str, keep: set[str]) -> list[str]:
    """Delete the run's checkpoint directories that are not in ``keep`` (Ray's kept ones).

    Called after a run, when no upload is in flight: what is left are checkpoints Ray never
    registered (a worker died between upload and report) and partial uploads.
    """
    keep = {posixpath.normpath(p) for p in keep}
    removed = []
    for path in checkpoint_dirs(fs, run_path):
        if posixpath.normpath(path) not in keep:
            fs.delete_dir(path)
            removed.append(path)
    return removed


def _normalized(path: str) -> str:
    if io.is_s3(path):
        return "s3://" + posixpath.normpath(path[len("s3://") :].replace("//", "/"))
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def check_trusted(resume_from: str, storage_path: str, trust: bool) -> None:
    """Refuse a checkpoint outside ``storage_path`` unless ``trust`` (loading it runs its code)."""
    if trust:
        return
    inside, root = _normalized(resume_from), _normalized(storage_path)
    if inside == root or inside.startswith(root.rstrip("/") + "/"):
        return
    raise ValueError(
        f"resume_from {resume_from} is outside this run's storage ({storage_path}). Resuming "
        "unpickles the checkpoint (DeepSpeed's torch.load(weights_only=False)), which runs any "
        "code it carries: a checkpoint is code. If you trust whoever wrote it, set "
        "trust_checkpoint: true (--set trust_checkpoint=true)."
    )


def staging_root(setting: str) -> str:
    """Node-local directory for checkpoint files before upload and after download.

    ``auto``: the instance-store NVMe when mounted (p4de: 8 x 1 TB, ~2 GB/s+ as RAID-0), else the
    system temp dir (a container's ``/tmp`` on the root volume: gp3 at 125-250 MB/s).
    """
    if setting != "auto":
        os.makedirs(setting, exist_ok=True)
        return setting
    for path in NVME_CANDIDATES:
        if os.path.isdir(path) and os.access(path, os.W_OK):
            return path
    return tempfile.gettempdir()


def rank_files(names: list[str], rank: int) -> tuple[list[str], list[str]]:
    """``(shared, own)`` relative file names of a checkpoint that ``rank`` needs to resume."""
    shared, own = [], []
    for name in names:
        if name.startswith(DONE_DIR + "/"):
            continue
        match = _SHARD.search(posixpath.basename(name))
        if match is None:
            shared.append(name)
        elif int(match.group(1)) == rank:
            own.append(name)
    return shared, own


def _download(fs: pafs.FileSystem, src: str, dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.part-{os.getpid()}"
    pafs.copy_files(
        src,
        tmp,
        source_filesystem=fs,
        destination_filesystem=pafs.LocalFileSystem(),
        chunk_size=_CHUNK,
        use_threads=True,
    )
    os.replace(tmp, dest)


def stage_for_rank(fs: pafs.FileSystem, ckpt_path: str, dest: str, rank: int) -> str:
    """Download what ``rank`` needs of a remote checkpoint into ``dest``; returns ``dest``.

    The shared files come down once per node: the first rank to take the lock fetches them and
    leaves ``.shared-done``; the others find it. Each rank fetches only its own shard.
    """
    infos = fs.get_file_info(pafs.FileSelector(ckpt_path, recursive=True))
    names = [i.path[len(ckpt_path) :].lstrip("/") for i in infos if i.type == pafs.FileType.File]
    shared, own = rank_files(names, rank)
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, ".shared.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(dest, ".shared-done")):
            for name in shared:
                _download(fs, f"{ckpt_path}/{name}", os.path.join(dest, name))
            open(os.path.join(dest, ".shared-done"), "w").close()
    for name in own:
        _download(fs, f"{ckpt_path}/{name}", os.path.join(dest, name))
    return dest


def drop_staged(dest: str) -> None:
    """Remove a staged restore directory (after every rank on the node has loaded)."""
    shutil.rmtree(dest, ignore_errors=True)
