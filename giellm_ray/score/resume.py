"""Resume for ``giellm score``: a killed job run again with the same command scores only the rest.

State lives in ``OUTPUT/_staging/`` (beside the result, so one writability check covers it and
the reader contract of :mod:`giellm_ray.score.commit` hides it)::

    attempt.json   run_id, id column, fingerprint of the inputs and of what decides predictions
    data/          part files written by Ray Data's ``write_parquet``
    checkpoint/    Ray Data checkpoint files: the ids of the rows in each committed part file
    commit.json    the commit journal (only once every row is staged)

**Mechanism.** Ray Data 2.60's ``CheckpointConfig`` does the hard half: every write task first
writes ``<part>.pending.parquet`` (its rows' ids), then the part file, then renames the pending
file; on the next run Ray deletes part files whose checkpoint is still pending. A part file is
therefore either committed with its ids or removed, so the staged rows are exactly once. The
other half, skipping committed rows, is ours (and so is the recovery, :func:`recover`, so that
a run with nothing left to score needs no Ray at all): Ray's filter is an actor pool whose actors reserve
1 CPU each (not configurable in 2.60) plus 1 GiB, on top of the inference actors, which hung the
resume on 2 CPUs; and it holds string ids as a Python object array (~70 B/id: 700 MB per actor
for 10M rows). :func:`committed_ids` loads the ids once on the driver as a sorted numpy array
(uint64, or fixed-width bytes for string ids: zero-copy from the object store) and
:func:`drop_done` runs as a plain task fused into the read tasks: no extra CPU, no actor. A
checkpoint manager (:class:`_NoFilter`) tells Ray not to build its own filter.

**Id column.** The input's ``id`` if it is non-null and unique (checked on the driver when an
attempt starts: 10M ids of ~20 B is ~200 MB read and a ~0.5 GB hash table), else ``row_hash``:
Ray's ``include_row_hash`` uint64 from the file path and row position (bijective per file,
cross-file collisions ~n/2^64), kept in the output as the row's provenance.

**Input changed between attempts.** The fingerprint (every input file's path, size and mtime;
model, max_new_tokens, constrained, tasks, engine) must match or the run is refused with the
difference and ``--fresh`` as the fix: starting over silently could throw away hours of GPU
work over a touched file, and mixing would give two models' answers in one result.

Bookkeeping (16 GPUs, 2,048-row write tasks): 187k rows -> ~92 part files + 92 checkpoint files
(~4 MB of ids), 10M rows -> ~4,900 + 4,900 (~200 MB of string ids, 80 MB as row_hash; a larger
``rows_per_file`` divides both). A resume re-reads all input (filtered at read: ~0.5-1 KB/row,
10M rows ~5-10 GB, minutes against hours of scoring) and every checkpoint file once; a kill loses
at most the rows in flight (actors x batch + the write buffer), which are scored again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.checkpoint import CheckpointConfig
from ray.data.checkpoint.checkpoint_filter import IdColumnCheckpointManager

from giellm_ray import schema as S
from giellm_ray.errors import UserError
from giellm_ray.io import fs_exists, read_json, write_json
from giellm_ray.score.layout import ScoreOutput

log = logging.getLogger(__name__)

ROW_HASH = "row_hash"
PENDING = ".pending.parquet"


@dataclass
class Attempt:
    """The attempt this run continues (``resumed``) or starts."""

    run_id: str
    id_column: str
    resumed: bool
    journal: dict | None = None


def fingerprint(fs: pafs.FileSystem, files: list[str], cfg) -> dict:
    """What must not change between attempts: the input files and what decides predictions."""
    infos = fs.get_file_info(files)
    what = {
        "model": cfg.model.model_dump(mode="json"),
        "max_new_tokens": cfg.generation.max_new_tokens,
        "constrained": cfg.constrained,
        "tasks": cfg.tasks,
        "engine": getattr(cfg, "engine", "hf"),
    }
    if getattr(cfg, "adapters", None):  # absent when empty: older runs' fingerprints still match
        what["adapters"] = dict(cfg.adapters)
    if what["engine"] == "vllm":  # vLLM may run another dtype than model.dtype
        what["vllm_dtype"] = cfg.vllm.dtype
    return {"inputs": [[i.path, i.size, i.mtime_ns] for i in infos], "what": what}


def describe_change(old: dict, new: dict) -> str:
    """The first difference between two fingerprints, in words."""
    if old.get("what") != new.get("what"):
        keys = [k for k in new["what"] if (old.get("what") or {}).get(k) != new["what"][k]]
        return f"the settings that decide predictions changed ({', '.join(keys) or 'format'})"
    before = {p: (s, m) for p, s, m in old.get("inputs", [])}
    after = {p: (s, m) for p, s, m in new["inputs"]}
    for path in sorted(set(before) | set(after)):
        if path not in after:
            return f"input file {path} is no longer part of the input"
        if path not in before:
            return f"input file {path} is new"
        if before[path] != after[path]:
            return f"input file {path} changed (size, mtime {before[path]} -> {after[path]})"
    return "the input changed"


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Ids as a numpy array that sorts and compares exactly: integers, or fixed-width bytes."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return ids.to_numpy(zero_copy_only=False)
    raw = ids.cast(pa.large_binary())  # no UTF-8 validation: ids with bad bytes still compare
    width = max(1, pc.max(pc.binary_length(raw)).as_py() or 0)
    return np.array(raw.to_pylist(), dtype=f"S{width}")


def choose_id_column(fs: pafs.FileSystem, files: list[str], schema: pa.Schema) -> str:
    """``id`` if every input row has a distinct non-null one, else ``row_hash``."""
    field = schema.field(S.ID) if S.ID in schema.names else None
    usable = field is not None and (
        pa.types.is_integer(field.type)
        or pa.types.is_string(field.type)
        or pa.types.is_large_string(field.type)
    )
    if usable:
        col = pa.chunked_array(
            [pq.read_table(fs.open_input_file(f), columns=[S.ID]).column(0) for f in files],
            type=field.type,
        )
        if col.null_count == 0:
            keys = id_keys(col)
            if len(np.unique(keys)) == len(keys):
                return S.ID
        log.info(
            "score: the input's 'id' is not unique and non-null; rows are keyed by %s", ROW_HASH
        )
    if ROW_HASH in schema.names:
        raise UserError(
            f"the input has a '{ROW_HASH}' column but no unique '{S.ID}': resume "
            f"keys rows by a derived '{ROW_HASH}'; rename that column or pass "
            "--set resume=false"
        )
    return ROW_HASH


def open_attempt(
    out: ScoreOutput, fp: dict, fresh: bool, committed_run: str | None, pick_id_column
) -> Attempt:
    """Continue the attempt in ``OUTPUT/_staging`` or start one (``fresh``: discard the old)."""
    staging = out.staging
    rec = read_json(out.fs, out.attempt)
    if (
        rec is None
        and fs_exists(out.fs, staging)
        and not out.fs.get_file_info(pafs.FileSelector(staging, recursive=True))
    ):
        out.fs.delete_dir(staging)  # killed between creating it and writing the record
    elif rec is None and fs_exists(out.fs, staging):
        raise UserError(
            f"{staging} exists but holds no giellm attempt record; it is not ours "
            "to use or delete: move it away"
        )
    if rec is not None and (fresh or rec.get("run_id") == committed_run):
        # fresh: the user discards it. Same run as _SUCCESS: a committed run's leftover.
        out.fs.delete_dir(staging)
        rec = None
    if rec is not None and rec.get("fingerprint") != fp:
        raise UserError(
            f"{staging} holds an interrupted attempt over other input: "
            f"{describe_change(rec.get('fingerprint') or {}, fp)}. Re-run with "
            "--fresh to discard it and start over"
        )
    if rec is not None:
        return Attempt(rec["run_id"], rec["id_column"], True, read_json(out.fs, out.journal))
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    id_column = pick_id_column()
    out.fs.create_dir(staging, recursive=True)
    write_json(
        out.fs,
        out.attempt,
        {"run_id": run_id, "id_column": id_column, "fingerprint": fp},
        out.is_local,
    )
    return Attempt(run_id, id_column, False)


def recover(out: ScoreOutput) -> None:
    """Finish or undo the checkpoint of every write task a kill interrupted (Ray's 2-phase rule).

    ``X.pending.parquet`` without ``X.parquet``: the part file may be torn, so every staged file
    named ``X*`` is deleted, then the pending file. With ``X.parquet`` (S3's copy-then-delete
    "rename" was cut): the part file is complete, only the pending file goes.
    """
    base = out.checkpoint
    infos = [
        i
        for i in out.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        if i.type == pafs.FileType.File
    ]
    names = {i.base_name for i in infos}
    pending = [i for i in infos if i.base_name.endswith(PENDING)]
    data = out.fs.get_file_info(pafs.FileSelector(out.staged(), allow_not_found=True))
    for info in pending:
        stem = info.base_name[: -len(PENDING)]
        if stem + ".parquet" not in names:
            for part in data:
                rest = part.base_name[len(stem) : len(stem) + 1]
                if part.base_name.startswith(stem) and not rest.isdigit():
                    out.fs.delete_file(part.path)
        out.fs.delete_file(info.path)
    if pending:
        log.info("score: undid %d interrupted part-file write(s)", len(pending))


def committed_ids(out: ScoreOutput, id_column: str) -> np.ndarray:
    """Sorted ids of the rows in committed part files (empty if none); call :func:`recover` first."""
    base = out.checkpoint
    tables = [
        pq.read_table(out.fs.open_input_file(i.path), columns=[id_column]).column(0)
        for i in out.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
    ]
    if not sum(len(t) for t in tables):
        return np.array([], dtype=np.uint64)
    return np.sort(id_keys(pa.chunked_array(tables)))


def drop_done(batch: pa.Table, done, id_column: str) -> pa.Table:
    """``batch`` without the rows whose id is in ``done`` (sorted; binary search per row).

    ``done`` may be the ``ObjectRef`` of the array (Ray Data passes ``fn_args`` refs as they
    are): ``ray.get`` of a numeric or fixed-width numpy array maps the node's copy, zero-copy.
    """
    if not isinstance(done, np.ndarray):
        import ray

        done = ray.get(done)
    col = batch.column(id_column)
    if pa.types.is_integer(col.type):
        keys, too_long = col.to_numpy(), np.zeros(len(col), dtype=bool)
    else:  # fixed width: an id longer than every done id cannot be done (and must not truncate)
        raw = col.cast(pa.large_binary())
        too_long = np.asarray(pc.greater(pc.binary_length(raw), done.dtype.itemsize))
        keys = np.array(raw.to_pylist(), dtype=done.dtype)
    at = np.minimum(np.searchsorted(done, keys), len(done) - 1)
    hit = (done[at] == keys) & ~too_long
    return batch.filter(pa.array(~hit))


class _NoFilter(IdColumnCheckpointManager):
    """No Ray filter actors: :func:`recover` and :func:`drop_done` do that part on our side."""

    def load_checkpoint(self, data_file_dir=None, data_file_filesystem=None):
        return None, 0


def checkpoint_config(out: ScoreOutput, id_column: str) -> CheckpointConfig:
    """Ray Data's write-side checkpointing into ``OUTPUT/_staging/checkpoint`` (see docstring)."""
    return CheckpointConfig(
        id_column=id_column,
        checkpoint_path=out.checkpoint,
        delete_checkpoint_on_success=False,
        override_filesystem=out.fs,
        checkpoint_manager_cls=_NoFilter,
    )
