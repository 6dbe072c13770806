"""The driver of ``giellm score`` / ``jobs/score.py``: check, score what is missing, commit, report.

``run_score(cfg)`` reads as its steps:

1. :func:`prepare` (no Ray yet): resolve every input and the output to canonical locations, refuse
   overlaps (:mod:`~giellm_ray.score.paths`), check every input file's schema (``dataset`` and
   ``text`` or ``prompt``; an optional integer ``max_new_tokens`` per-row cap), probe that OUTPUT
   is writable, refuse Parquet files in OUTPUT that no giellm manifest names;
2. take the per-OUTPUT run lock (reaps what a killed run left running, :mod:`.runlock`);
3. :func:`~giellm_ray.score.resume.open_attempt`: continue the attempt staged in
   ``OUTPUT/_staging`` if its fingerprint matches (``resume: false`` / ``--fresh`` discards it);
4. :func:`score_missing` streams only the rows not yet committed through read -> drop done ->
   repartition -> ``map_batches(ScoreBatch, ActorPoolStrategy)`` -> ``write_parquet`` with Ray
   Data checkpointing into the staging directory (nothing is materialised); skipped, with no
   Ray at all, when nothing is missing;
5. :func:`stage_result` checks rows staged == rows in (a 0-row input stages one schema-correct
   empty file) and writes the commit journal;
6. :func:`~giellm_ray.score.commit.finish_commit` swaps the result in (see
   :mod:`~giellm_ray.score.commit` for the order and why it is safe), writing ``_score.json``,
   ``_config.yaml`` and, with gold ``target``, the metrics from per-file counts.

A run killed anywhere is finished by the same command: before step 5 it resumes, after it it
completes the journal's commit. ``cleanup_output`` (``giellm score --cleanup``) discards instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from giellm_ray import io
from giellm_ray import schema as S
from giellm_ray.config import dump_config
from giellm_ray.errors import UserError
from giellm_ray.formats import TaskRegistry
from giellm_ray.io import fs_exists, read_json
from giellm_ray.score import commit, resume
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.layout import (
    CONFIG_YAML,
    METRICS_DIR,
    SCORE_JSON,
    SUCCESS,
    ScoreOutput,
    locate_output,
)
from giellm_ray.score.paths import Location, check_disjoint, locate, probe_writable
from giellm_ray.score.runlock import RunLock
from giellm_ray.score.udf import scored_schema

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Everything checked before any work: the inputs, their schema and rows, the output."""

    fs_in: pafs.FileSystem
    files: list[str]
    schema: pa.Schema
    total: int
    out: ScoreOutput
    state: commit.OutputState


def _check_schema(f: str, sch: pa.Schema) -> None:
    names = set(sch.names)
    if S.DATASET not in names or not names & {S.TEXT, S.PROMPT}:
        raise UserError(
            f"{f}: need columns '{S.DATASET}' and '{S.TEXT}' (or '{S.PROMPT}'); found {sch.names}"
        )
    for col in (S.DATASET, S.TEXT, S.PROMPT, S.ADAPTER):
        if col in names and not str(sch.field(col).type).startswith(("string", "large_str")):
            raise UserError(f"{f}: column '{col}' must be string, is {sch.field(col).type}")
    cap = sch.field(S.MAX_NEW_TOKENS) if S.MAX_NEW_TOKENS in names else None
    if cap is not None and not pa.types.is_integer(cap.type):
        raise UserError(
            f"{f}: column '{S.MAX_NEW_TOKENS}' (per-row cap) must be an integer type, is {cap.type}"
        )


def check_inputs(
    cfg: ScoreConfig, inputs: list[Location] | None = None
) -> tuple[pafs.FileSystem, list[str], pa.Schema, int]:
    """``(filesystem, files, schema, total rows)``; fails fast with a message a user can act on."""
    if not cfg.input:
        raise UserError("no input: pass --input PATH (Parquet file or directory)")
    if len({io.is_s3(p) for p in cfg.input}) > 1:
        raise UserError("inputs must be all local or all s3://")
    inputs = inputs or [locate(p, cfg.s3_endpoint_url) for p in cfg.input]
    files = sorted({f for loc in inputs for f in io.list_parquet(loc.fs, loc.path)})
    fs, first, total = inputs[0].fs, None, 0
    for f in files:
        try:
            meta = pq.ParquetFile(fs.open_input_file(f)).metadata
        except Exception as exc:
            raise UserError(f"{f}: cannot read as Parquet ({exc})") from None
        sch = meta.schema.to_arrow_schema()
        total += meta.num_rows
        if first is None:
            _check_schema(f, sch)
            first = sch
        elif not sch.equals(first):
            raise UserError(f"{f}: schema differs from {files[0]}:\n{sch}\nvs\n{first}")
    return fs, files, first, total


def prepare(cfg: ScoreConfig) -> Plan:
    """Step 1: every check that needs no Ray, in the order that leaves nothing behind on failure."""
    if not cfg.output:
        raise UserError("no output: pass --output PATH")
    out = locate_output(cfg.output, cfg.s3_endpoint_url)
    inputs = [locate(p, cfg.s3_endpoint_url) for p in cfg.input]
    check_disjoint(inputs, out)
    fs_in, files, schema, total = check_inputs(cfg, inputs)
    probe_writable(out)
    state = commit.inspect_output(out)
    commit.check_output(out, state)
    return Plan(fs_in, files, schema, total, out, state)


def run_score(cfg: ScoreConfig) -> dict:
    """Score ``cfg.input`` into ``cfg.output``; return a summary (also written to ``_score.json``)."""
    start = time.monotonic()
    plan = prepare(cfg)
    registry = TaskRegistry.load(cfg.tasks)
    lock = RunLock(plan.out)
    lock.acquire()
    try:
        commit.remove_leftovers(plan.out)
        attempt = open_attempt(cfg, plan)
        journal = attempt.journal
        if journal is None:
            summary = score_missing(cfg, plan, attempt, registry, lock)
            journal = stage_result(plan, attempt, summary)
        else:
            log.info("score: finishing the interrupted commit of run %s", attempt.run_id)
        journal["summary"]["seconds"] = time.monotonic() - start
        commit.finish_commit(
            plan.out,
            journal,
            lambda names: write_meta(cfg, plan, journal["summary"], names, registry),
        )
    finally:
        lock.release()
    return journal["summary"]


def open_attempt(cfg: ScoreConfig, plan: Plan) -> resume.Attempt:
    """Step 3: resume the staged attempt or start one (see :mod:`giellm_ray.score.resume`)."""
    fp = resume.fingerprint(plan.fs_in, plan.files, cfg)
    committed = (plan.state.manifest or {}).get("run_id")
    attempt = resume.open_attempt(
        plan.out,
        fp,
        not cfg.resume,
        committed,
        lambda: resume.choose_id_column(plan.fs_in, plan.files, plan.schema),
    )
    if attempt.resumed:
        log.info("score: resuming run %s from %s", attempt.run_id, plan.out.staging)
    return attempt


def score_missing(cfg: ScoreConfig, plan: Plan, attempt: resume.Attempt, registry, lock) -> dict:
    """Step 4: score the rows not yet committed; the summary of this attempt."""
    start = time.monotonic()
    resume.recover(plan.out)
    done = resume.committed_ids(plan.out, attempt.id_column)
    todo = plan.total - len(done)
    log.info(
        "score: %d rows in %d file(s) -> %s (%d already staged, %d to score)",
        plan.total,
        len(plan.files),
        cfg.output,
        len(done),
        todo,
    )
    totals: dict = {}
    if todo > 0:  # the only step that needs Ray: joined (or started) here, as the other stages do
        from giellm_ray.ray_session import connect_ray
        from giellm_ray.score.dataflow import run_dataflow

        started = connect_ray(cfg.ray_address)
        try:
            if started:
                lock.record_children()  # what a SIGKILL of this process would leave running
            totals = run_dataflow(cfg, plan, attempt, done, todo, registry)
        finally:
            if started:
                import ray

                ray.shutdown()
    seconds = time.monotonic() - start
    return summarize(attempt, plan.total, len(done), totals, seconds)


def summarize(
    attempt: resume.Attempt, total: int, resumed: int, totals: dict, seconds: float
) -> dict:
    from giellm_ray.generation.base import EngineStats

    scored = totals.get("scored_rows", 0)
    return {
        "run_id": attempt.run_id,
        "input_rows": total,
        "resumed_rows": resumed,
        "scored_rows": scored,
        "id_column": attempt.id_column,
        "seconds": seconds,
        "rows_per_s": scored / seconds if seconds else 0.0,
        "generated_tokens_per_s": totals.get("generated_tokens", 0) / seconds if seconds else 0.0,
        "engine": EngineStats.from_totals(totals).to_dict(),
    }


def stage_result(plan: Plan, attempt: resume.Attempt, summary: dict) -> dict:
    """Step 5: every input row staged exactly once (checked), then the commit journal."""
    out = plan.out
    if plan.total == 0 and not commit.staged_files(out):
        schema = scored_schema(plan.schema)
        if attempt.id_column == resume.ROW_HASH:
            schema = schema.append(pa.field(resume.ROW_HASH, pa.uint64()))
        out.fs.create_dir(out.staged(), recursive=True)
        pq.write_table(
            schema.empty_table(), out.staged(f"{attempt.run_id}-empty.parquet"), filesystem=out.fs
        )
    files = commit.staged_files(out)
    rows = sum(f["rows"] for f in files)
    if rows != plan.total:  # the contract; never expected
        raise RuntimeError(
            f"staged {rows} rows for {plan.total} input rows; "
            f"{out.staging} is kept: re-run to resume, or --fresh"
        )
    summary.update(
        output_rows=rows,
        output_files=len(files),
        error_rows=_count_errors(out, [out.staged(f["name"]) for f in files]),
    )
    return commit.begin_commit(out, attempt.run_id, files, summary, plan.state.manifest)


def _count_errors(out: ScoreOutput, paths: list[str]) -> int:
    """Rows with an ``error`` over the whole result (resumed rows included): one column read."""

    def count(path: str) -> int:
        col = pq.read_table(out.fs.open_input_file(path), columns=[S.ERROR]).column(0)
        return len(col) - col.null_count

    return sum(commit.parallel(out, count, paths))


def compute_metrics(fs: pafs.FileSystem, files: list[str], registry) -> dict:
    """Per-dataset counts of the written output (see :func:`giellm_ray.metrics.count_scored`)."""
    from giellm_ray.metrics import count_scored

    return count_scored(files, registry, fs)


def _write_report(
    fs: pafs.FileSystem, files: list[str], report_dir: str, registry
) -> tuple[dict, list[str]]:
    """metrics.*, reliability.png and report*.html of the written output."""
    from giellm_ray.metrics.evaluate import write_scored_report

    with tempfile.TemporaryDirectory() as tmp:
        metrics, names = write_scored_report(fs, files, tmp, registry)
        fs.create_dir(report_dir, recursive=True)
        for name in names:
            with (
                open(os.path.join(tmp, name), "rb") as src,
                fs.open_output_stream(f"{report_dir}/{name}") as dst,
            ):
                dst.write(src.read())
    return metrics, [f"{METRICS_DIR}/{n}" for n in sorted(names)]


def write_meta(
    cfg: ScoreConfig, plan: Plan, summary: dict, names: list[str], registry
) -> list[str]:
    """Commit step 5: ``_metrics/`` (gold targets only), ``_score.json``, ``_config.yaml``."""
    out, meta = plan.out, [SCORE_JSON, CONFIG_YAML]
    if cfg.metrics and S.TARGET in plan.schema.names:
        counts = compute_metrics(out.fs, [out.result(n) for n in names], registry)
        if any(c["n"] for c in counts.values()):
            summary["metrics"], written = _write_report(
                out.fs, [out.result(n) for n in names], out.metrics_dir, registry
            )
            meta += written
        else:  # a target column of nulls (unlabelled data): nothing to score against
            log.info("score: no gold targets in the input; metrics skipped")
    with out.fs.open_output_stream(out.score_json) as f:
        f.write(json.dumps(summary, ensure_ascii=False, indent=2).encode())
    dump_config(cfg, out.config_yaml, out.fs)
    return meta


def cleanup_output(cfg: ScoreConfig) -> dict:
    """``giellm score --cleanup``: end a killed run's processes, discard its staging; no scoring."""
    if not cfg.output:
        raise UserError("no output: pass --output PATH")
    out = locate_output(cfg.output, cfg.s3_endpoint_url)
    killed = RunLock(out).clear_dead()
    if read_json(out.fs, out.journal) is not None:
        raise UserError(
            f"a commit into {out.uri} was interrupted half-way; run the same "
            "giellm score command again to finish it (cleanup would lose the result)"
        )
    staging = out.staging
    discarded = fs_exists(out.fs, staging)
    if discarded and read_json(out.fs, out.attempt) is None:
        raise UserError(f"{staging} holds no giellm attempt record; not ours to delete")
    if discarded:
        out.fs.delete_dir(staging)
    return {
        "output": out.uri,
        "ended_processes": killed,
        "discarded_staging": staging if discarded else None,
        "removed": commit.remove_leftovers(out),
    }


__all__ = ["SUCCESS", "check_inputs", "cleanup_output", "compute_metrics", "prepare", "run_score"]
