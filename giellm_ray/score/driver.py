"""The driver of ``giellm score`` / ``jobs/score.py``: check inputs, run the Ray Data job, commit, report.

``run_score(cfg)`` reads Parquet (local or ``s3://``, ``filesystem=`` always explicit), checks every
input file's schema before any work (needs ``dataset`` and ``text`` or ``prompt``; an optional
``max_new_tokens`` per-row cap must be an integer column), streams the rows
through a repartition → ``map_batches(ScoreBatch, ActorPoolStrategy)`` → ``write_parquet`` pipeline
(nothing is materialised), then commits and, when gold ``target`` is present, writes the metrics
report aggregated from per-file counts.

Re-runs are safe by **atomic rewrite**, not resume: a run writes into a sibling
``OUTPUT.tmp-<runid>/``; only after the whole pipeline succeeded does it delete the Parquet files
already in ``OUTPUT/``, move the new files in and write ``OUTPUT/_SUCCESS``. ``OUTPUT`` holds a
complete result exactly when ``_SUCCESS`` exists; an interrupted run leaves at most a stale tmp
directory (removed by the next run) or a partial commit without ``_SUCCESS`` (replaced by the next
run), so a re-run always ends with every input row exactly once. Two runs into one OUTPUT at the
same time are not supported.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from giellm_ray import io
from giellm_ray import schema as S
from giellm_ray.config import dump_config
from giellm_ray.formats import TaskRegistry
from giellm_ray.generation.base import EngineStats
from giellm_ray.log import is_quiet, quiet_ray_data_console
from giellm_ray.ray_session import connect_ray
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.pipeline import ScoreBatch
from giellm_ray.score.progress import ProgressCounter, ProgressPrinter

log = logging.getLogger(__name__)
SUCCESS = "_SUCCESS"


def check_inputs(cfg: ScoreConfig) -> tuple[pafs.FileSystem, list[str], object, int]:
    """``(filesystem, files, schema, total rows)``; fails fast with a message a user can act on."""
    if not cfg.input:
        raise ValueError("no input: pass --input PATH (Parquet file or directory)")
    if not cfg.output:
        raise ValueError("no output: pass --output PATH")
    if len({io.is_s3(p) for p in cfg.input}) > 1:
        raise ValueError("inputs must be all local or all s3://")
    out_norm = cfg.output.rstrip("/") + "/"
    files: list[str] = []
    fs = None
    for path in cfg.input:
        if (path.rstrip("/") + "/").startswith(out_norm):
            raise ValueError(f"input {path} lies inside the output directory {cfg.output}")
        fs, p = io.resolve_native(path, cfg.s3_endpoint_url)
        files += io.list_parquet(fs, p)
    first, total = None, 0
    for f in files:
        try:
            meta = pq.ParquetFile(fs.open_input_file(f)).metadata
        except Exception as exc:
            raise ValueError(f"{f}: cannot read as Parquet ({exc})") from None
        sch = meta.schema.to_arrow_schema()
        total += meta.num_rows
        if first is None:
            first = sch
            names = set(sch.names)
            if S.DATASET not in names or not names & {S.TEXT, S.PROMPT}:
                raise ValueError(
                    f"{f}: need columns '{S.DATASET}' and '{S.TEXT}' (or '{S.PROMPT}'); "
                    f"found {sch.names}")
            for col in (S.DATASET, S.TEXT, S.PROMPT):
                if col in names and not str(sch.field(col).type).startswith(("string", "large_str")):
                    raise ValueError(f"{f}: column '{col}' must be string, is {sch.field(col).type}")
            cap = sch.field(S.MAX_NEW_TOKENS) if S.MAX_NEW_TOKENS in names else None
            if cap is not None and not pa.types.is_integer(cap.type):
                raise ValueError(f"{f}: column '{S.MAX_NEW_TOKENS}' (per-row cap) must be an "
                                 f"integer type, is {cap.type}")
        elif not sch.equals(first):
            raise ValueError(f"{f}: schema differs from {files[0]}:\n{sch}\nvs\n{first}")
    return fs, files, first, total


def _remove_stale_tmp(fs: pafs.FileSystem, out: str) -> None:
    parent, _, name = out.rstrip("/").rpartition("/")
    if fs.get_file_info(parent or "/").type != pafs.FileType.Directory and parent:
        return
    for info in fs.get_file_info(pafs.FileSelector(parent or "/", allow_not_found=True)):
        if info.base_name.startswith(f"{name}.tmp-") and info.type == pafs.FileType.Directory:
            fs.delete_dir(info.path)


def commit(fs: pafs.FileSystem, tmp: str, out: str) -> list[str]:
    """Replace the Parquet files in ``out`` with those in ``tmp``; write ``_SUCCESS``."""
    fs.create_dir(out, recursive=True)
    for info in fs.get_file_info(pafs.FileSelector(out, allow_not_found=True)):
        if info.type == pafs.FileType.File and (info.path.endswith(".parquet")
                                                or info.base_name == SUCCESS):
            fs.delete_file(info.path)
    moved = []
    for info in fs.get_file_info(pafs.FileSelector(tmp, recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            dest = f"{out}/{info.base_name}"
            if isinstance(fs, pafs.LocalFileSystem):
                fs.move(info.path, dest)
            else:  # object stores: copy then delete (S3 has no rename)
                fs.copy_file(info.path, dest)
            moved.append(dest)
    fs.delete_dir(tmp)
    with fs.open_output_stream(f"{out}/{SUCCESS}") as f:
        f.write(b"")
    return moved


def compute_metrics(fs: pafs.FileSystem, files: list[str], registry) -> dict:
    """Per-file counts from the written output (streamed, three columns), merged."""
    from giellm_ray.metrics import count_rows, merge_counts

    parts = []
    for f in files:
        pf = pq.ParquetFile(fs.open_input_file(f))
        for batch in pf.iter_batches(columns=[S.DATASET, S.TARGET, S.PREDICTION]):
            parts.append(count_rows([str(x) for x in batch.column(0).to_pylist()],
                                    batch.column(1).to_pylist(), batch.column(2).to_pylist(),
                                    registry))
    return merge_counts(parts)


def _write_report(fs: pafs.FileSystem, counts: dict, report_dir: str) -> dict:
    from giellm_ray.metrics import write_report

    with tempfile.TemporaryDirectory() as tmp:
        metrics = write_report(counts, tmp)
        fs.create_dir(report_dir, recursive=True)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as src, \
                    fs.open_output_stream(f"{report_dir}/{name}") as dst:
                dst.write(src.read())
    return metrics


def run_score(cfg: ScoreConfig) -> dict:
    """Score ``cfg.input`` into ``cfg.output``; return a summary (also written to ``_score.json``)."""
    import ray
    import ray.data as rd

    start = time.monotonic()
    fs_in, files, in_schema, total = check_inputs(cfg)
    registry = TaskRegistry.load(cfg.tasks)
    fs_out, out = io.resolve_native(cfg.output, cfg.s3_endpoint_url)
    started = connect_ray(cfg.ray_address)
    quiet_ray_data_console()
    ctx = rd.DataContext.get_current()
    ctx.enable_progress_bars = cfg.show_progress_bars() and not is_quiet()
    # Ray 2.60's V2 Parquet reader starts a pool of 32 FooterReader actors per read: ~30 s of
    # process start-up on a small machine before the first row. We already read every footer in
    # check_inputs, so the V1 reader (plain read tasks) loses nothing here.
    ctx.use_datasource_v2 = cfg.parquet_reader_v2
    _remove_stale_tmp(fs_out, out)
    tmp = f"{out.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    printer = ProgressPrinter(counter, total, cfg.progress_interval_s)
    if cfg.progress_interval_s > 0:
        printer.start()
    log.info("score: %d rows in %d file(s) -> %s", total, len(files), cfg.output)
    try:
        ds = (
            rd.read_parquet(files, filesystem=fs_in)
            .repartition(target_num_rows_per_block=cfg.rows_per_block)
            .map_batches(
                ScoreBatch,
                fn_constructor_args=(cfg, registry.to_dict() if cfg.tasks else None, counter),
                batch_size=cfg.batch_size,
                batch_format="pyarrow",
                compute=rd.ActorPoolStrategy(size=cfg.num_actors),
                num_cpus=cfg.num_cpus_per_actor,
                num_gpus=cfg.num_gpus_per_actor or None,
            )
        )
        ds.write_parquet(tmp, filesystem=fs_out, min_rows_per_file=cfg.rows_per_file)
    finally:
        printer.stop()
    written = commit(fs_out, tmp, out)
    rows_out = sum(pq.ParquetFile(fs_out.open_input_file(f)).metadata.num_rows for f in written)
    if rows_out != total:  # the contract; never expected
        raise RuntimeError(f"wrote {rows_out} rows for {total} input rows")
    totals = ray.get(counter.get.remote())
    stats = EngineStats.from_totals(totals).to_dict()
    seconds = time.monotonic() - start
    summary = {
        "input_rows": total, "output_rows": rows_out, "output_files": len(written),
        "error_rows": totals.get("error_rows", 0), "seconds": seconds,
        "rows_per_s": total / seconds if seconds else 0.0,
        "generated_tokens_per_s": totals.get("generated_tokens", 0) / seconds if seconds else 0.0,
        "engine": stats,
    }
    if cfg.metrics and S.TARGET in in_schema.names:
        counts = compute_metrics(fs_out, written, registry)
        if any(c["n"] for c in counts.values()):
            summary["metrics"] = _write_report(fs_out, counts, f"{out}/_metrics")
        else:  # a target column of nulls (unlabelled data): nothing to score against
            log.info("score: no gold targets in the input; metrics skipped")
    with fs_out.open_output_stream(f"{out}/_score.json") as f:
        f.write(json.dumps(summary, ensure_ascii=False, indent=2).encode())
    dump_config(cfg, f"{out}/_config.yaml", fs_out)
    log.info("%s; done in %.1fs", printer.line(totals), seconds)
    if started:
        ray.shutdown()
    return summary


__all__ = ["check_inputs", "commit", "compute_metrics", "run_score"]
