"""The OUTPUT layout of ``giellm score`` and the commit that swaps a new result in safely.

The layout (file names, staging) is :mod:`giellm_ray.score.layout`; this module swaps a new
result in.

**Reader contract.** OUTPUT holds a complete result exactly when ``_SUCCESS`` exists, and then
``OUTPUT/*.parquet`` is exactly the file list in ``_SUCCESS`` (it names them, so a reader may also
read just those). ``_``-prefixed entries are skipped by Spark, pyarrow datasets and Ray Data.

**Commit, safe in every order of failure** (each step is idempotent; ``commit.json`` in the staging
directory is the journal that lets a re-run finish a commit that died half-way):

1. the staged result is complete (the driver checked rows in == rows staged) and the journal,
   naming the new files and the old result's files, is written;
2. ``_SUCCESS`` is deleted: from here until step 6 a reader sees "no complete result";
3. the new files are moved in (local: ``rename``; S3 has none: a server-side copy per file, run
   in parallel; copies are not atomic as a set, which is why ``_SUCCESS`` is absent meanwhile);
4. the old result's files are deleted, and only those: names listed in the old ``_SUCCESS`` (or in
   the journal). A file no giellm manifest names is never deleted; its presence is refused before
   any work (:func:`check_output`);
5. ``_score.json``, ``_config.yaml``, ``_metrics/`` are written, stale metric files deleted;
6. ``_SUCCESS`` is written (local: tmp + ``rename``; S3: one PUT, visible whole or not at all);
7. the staging directory is deleted (if this dies, the next run sees a staging whose run_id is
   the committed one and deletes it).

S3 cost per commit (arithmetic for the choice of a copy, not a pointer), per part file: 1 COPY,
~2 GET (footer for the row check, the ``error`` column; +1 with gold targets for the metrics),
1 DELETE of the old result's file on a re-run; then one LIST + one batched DELETE per 1,000 staged
keys and ~6 PUT for ``_SUCCESS``, the journal and the metadata; all per-file requests run in 16
parallel streams. Part files are one per 2,048-row block (``gpu.yaml``), whatever the GPU count
(16 GPUs change concurrency, not the count). 187k rows: 92 part files (~2 MB, ~190 MB in all),
92 ``_SUCCESS`` entries (~120 B each, ~11 KB), ~400 requests; the copies move ~190 MB
server-side: at an assumed ~100 MB/s per copy stream x 16 that is ~0.1 s of bytes, ~1-2 s with
~30 ms request latency. 10M rows: 4,883 files (~10 GB), a ~590 KB ``_SUCCESS``, ~20k requests:
~6 s of bytes, ~40 s of latency / 16 streams; ``rows_per_file: 50000`` cuts it to 200 files and
~1k requests (~7 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from giellm_ray import io
from giellm_ray.errors import UserError
from giellm_ray.io import fs_exists, read_json, write_json
from giellm_ray.score.layout import ScoreOutput

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "giellm-score/1"
COPY_THREADS = 16


@dataclass
class OutputState:
    """What OUTPUT holds before a run: its manifest, an interrupted commit, files not ours."""

    manifest: dict | None
    journal: dict | None
    parquet: list[str] = field(default_factory=list)

    def owned(self) -> set[str]:
        names: set[str] = set()
        for rec in (self.manifest or {}, self.journal or {}):
            names.update(f["name"] for f in rec.get("files", []) + rec.get("new", []))
            names.update(rec.get("old_files", []))
        return names

    def unowned(self) -> list[str]:
        return sorted(set(self.parquet) - self.owned())


def inspect_output(out: ScoreOutput) -> OutputState:
    fs = out.fs
    names = [
        i.base_name
        for i in fs.get_file_info(pafs.FileSelector(out.path, allow_not_found=True))
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
    ]
    return OutputState(read_json(fs, out.success), read_json(fs, out.journal), names)


def check_output(out: ScoreOutput, state: OutputState) -> None:
    """Refuse an OUTPUT holding Parquet files that no giellm manifest names (not ours to delete)."""
    stray = state.unowned()
    if not stray:
        return
    why = (
        "its _SUCCESS is from an older giellm and names no files"
        if state.manifest == {}
        else "no giellm _SUCCESS or commit journal names them"
    )
    shown = ", ".join(stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
    raise UserError(
        f"output {out.uri} already holds {len(stray)} Parquet file(s) ({shown}) that "
        f"this job did not provably write ({why}); move them away or choose another "
        "--output"
    )


def staged_files(out: ScoreOutput) -> list[dict]:
    """``{name, rows, bytes}`` of every staged part file (row counts from the footers)."""
    base = out.staged()
    infos = [
        i
        for i in out.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
    ]

    def describe(info: pafs.FileInfo) -> dict:
        rows = pq.ParquetFile(out.fs.open_input_file(info.path)).metadata.num_rows
        return {"name": info.base_name, "rows": rows, "bytes": info.size}

    return sorted(parallel(out, describe, infos), key=lambda f: f["name"])


def begin_commit(
    out: ScoreOutput, run_id: str, files: list[dict], summary: dict, old: dict | None
) -> dict:
    """Write the journal (step 1); the staged result must already be complete."""
    journal = {
        "run_id": run_id,
        "new": files,
        "summary": summary,
        "old_files": [f["name"] for f in (old or {}).get("files", [])],
        "old_meta": list((old or {}).get("meta", [])),
    }
    write_json(out.fs, out.journal, journal, out.is_local)
    return journal


def _place(out: ScoreOutput, name: str) -> None:
    src, dst = out.staged(name), out.result(name)
    if not out.is_local:
        if fs_exists(out.fs, src):  # S3 has no rename: server-side copy; the staging copy goes last
            out.fs.copy_file(src, dst)
        elif not fs_exists(out.fs, dst):
            raise FileNotFoundError(f"staged file {src} is gone and {dst} was never written")
        return
    if fs_exists(out.fs, src):
        out.fs.move(src, dst)
    elif not fs_exists(out.fs, dst):  # moved by an earlier, interrupted commit otherwise
        raise FileNotFoundError(f"staged file {src} is gone and {dst} was never written")


def parallel(out: ScoreOutput, fn, items: list) -> list:
    """``fn`` over ``items``: S3 requests in ``COPY_THREADS`` parallel streams, local in order."""
    return io.parallel(out.fs, fn, items, COPY_THREADS, out.is_local)


def _delete_files(out: ScoreOutput, names: list[str]) -> None:
    def delete(name: str) -> None:
        if fs_exists(out.fs, out.result(name)):
            out.fs.delete_file(out.result(name))

    parallel(out, delete, names)


def _drop_empty_dir(out: ScoreOutput, path: str) -> None:
    """A local directory emptied by the deletes above (S3 has no empty directories)."""
    if (
        out.is_local
        and out.fs.get_file_info(path).type == pafs.FileType.Directory
        and not out.fs.get_file_info(pafs.FileSelector(path))
    ):
        out.fs.delete_dir(path)


def finish_commit(
    out: ScoreOutput, journal: dict, write_meta: Callable[[list[str]], list[str]]
) -> dict:
    """Steps 2-7. ``write_meta(new names)`` writes the metadata files, returns their names."""
    new = [f["name"] for f in journal["new"]]
    if fs_exists(out.fs, out.success):
        out.fs.delete_file(out.success)
    parallel(out, lambda name: _place(out, name), new)
    _delete_files(out, [n for n in journal["old_files"] if n not in new])
    meta = write_meta(new)
    _delete_files(out, [n for n in journal["old_meta"] if n not in meta])
    _drop_empty_dir(out, out.metrics_dir)
    manifest = {
        "format": MANIFEST_FORMAT,
        "run_id": journal["run_id"],
        "rows": sum(f["rows"] for f in journal["new"]),
        "files": journal["new"],
        "meta": meta,
        "committed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out.fs, out.success, manifest, out.is_local)
    out.fs.delete_dir(out.staging)
    log.info("score: committed %d rows in %d file(s) to %s", manifest["rows"], len(new), out.uri)
    return manifest


def _is_hex8(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def remove_leftovers(out: ScoreOutput) -> list[str]:
    """Delete what only a killed giellm leaves: ``OUTPUT/_giellm_probe-<8 hex>`` (a kill between
    the probe's write and delete) and ``OUTPUT.tmp-<8 hex>/`` (giellm's staging before resume)."""
    removed = []
    for info in out.fs.get_file_info(pafs.FileSelector(out.path, allow_not_found=True)):
        if (
            info.type == pafs.FileType.File
            and info.base_name.startswith("_giellm_probe-")
            and _is_hex8(info.base_name[len("_giellm_probe-") :])
        ):
            out.fs.delete_file(info.path)
            removed.append(info.path)
    parent, _, name = out.path.rstrip("/").rpartition("/")
    if not parent or out.fs.get_file_info(parent).type != pafs.FileType.Directory:
        return removed
    for info in out.fs.get_file_info(pafs.FileSelector(parent, allow_not_found=True)):
        suffix = info.base_name[len(name) + len(".tmp-") :]
        if (
            info.base_name.startswith(f"{name}.tmp-")
            and _is_hex8(suffix)
            and info.type == pafs.FileType.Directory
        ):
            out.fs.delete_dir(info.path)
            removed.append(info.path)
    return removed


__all__ = [
    "OutputState",
    "begin_commit",
    "check_output",
    "finish_commit",
    "inspect_output",
    "parallel",
    "remove_leftovers",
    "staged_files",
]
