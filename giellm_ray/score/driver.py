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
from giellm_ray.formats import TaskRegistry
from giellm_ray.score import commit as C
from giellm_ray.score import resume as R
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.paths import Location, check_disjoint, locate, probe_writable
from giellm_ray.score.pipeline import scored_schema
from giellm_ray.score.runlock import RunLock

log = logging.getLogger(__name__)
SUCCESS = C.SUCCESS


@dataclass
class Plan:
    """Everything checked before any work: the inputs, their schema and rows, the output."""

    fs_in: pafs.FileSystem
    files: list[str]
    schema: pa.Schema
    total: int
    out: Location
    state: C.OutputState


def _check_schema(f: str, sch: pa.Schema) -> None:
    names = set(sch.names)
    if S.DATASET not in names or not names & {S.TEXT, S.PROMPT}:
        raise ValueError(f"{f}: need columns '{S.DATASET}' and '{S.TEXT}' (or '{S.PROMPT}'); "
                         f"found {sch.names}")
    for col in (S.DATASET, S.TEXT, S.PROMPT, S.ADAPTER):
        if col in names and not str(sch.field(col).type).startswith(("string", "large_str")):
            raise ValueError(f"{f}: column '{col}' must be string, is {sch.field(col).type}")
    cap = sch.field(S.MAX_NEW_TOKENS) if S.MAX_NEW_TOKENS in names else None
    if cap is not None and not pa.types.is_integer(cap.type):
        raise ValueError(f"{f}: column '{S.MAX_NEW_TOKENS}' (per-row cap) must be an "
                         f"integer type, is {cap.type}")


def check_inputs(cfg: ScoreConfig, inputs: list[Location] | None = None
                 ) -> tuple[pafs.FileSystem, list[str], pa.Schema, int]:
    """``(filesystem, files, schema, total rows)``; fails fast with a message a user can act on."""
    if not cfg.input:
        raise ValueError("no input: pass --input PATH (Parquet file or directory)")
    if len({io.is_s3(p) for p in cfg.input}) > 1:
        raise ValueError("inputs must be all local or all s3://")
    inputs = inputs or [locate(p, cfg.s3_endpoint_url) for p in cfg.input]
    files = sorted({f for loc in inputs for f in io.list_parquet(loc.fs, loc.path)})
    fs, first, total = inputs[0].fs, None, 0
    for f in files:
        try:
            meta = pq.ParquetFile(fs.open_input_file(f)).metadata
        except Exception as exc:
            raise ValueError(f"{f}: cannot read as Parquet ({exc})") from None
        sch = meta.schema.to_arrow_schema()
        total += meta.num_rows
        if first is None:
            _check_schema(f, sch)
            first = sch
        elif not sch.equals(first):
            raise ValueError(f"{f}: schema differs from {files[0]}:\n{sch}\nvs\n{first}")
    return fs, files, first, total


def prepare(cfg: ScoreConfig) -> Plan:
    """Step 1: every check that needs no Ray, in the order that leaves nothing behind on failure."""
    if not cfg.output:
        raise ValueError("no output: pass --output PATH")
    out = locate(cfg.output, cfg.s3_endpoint_url)
    inputs = [locate(p, cfg.s3_endpoint_url) for p in cfg.input]
    check_disjoint(inputs, out)
    fs_in, files, schema, total = check_inputs(cfg, inputs)
    probe_writable(out)
    state = C.inspect_output(out)
    C.check_output(out, state)
    return Plan(fs_in, files, schema, total, out, state)


def run_score(cfg: ScoreConfig) -> dict:
    """Score ``cfg.input`` into ``cfg.output``; return a summary (also written to ``_score.json``)."""
    start = time.monotonic()
    plan = prepare(cfg)
    registry = TaskRegistry.load(cfg.tasks)
    lock = RunLock(plan.out)
    lock.acquire()
    try:
        C.remove_leftovers(plan.out)
        attempt = open_attempt(cfg, plan)
        journal = attempt.journal
        if journal is None:
            summary = score_missing(cfg, plan, attempt, registry, lock)
            journal = stage_result(plan, attempt, summary)
        else:
            log.info("score: finishing the interrupted commit of run %s", attempt.run_id)
        journal["summary"]["seconds"] = time.monotonic() - start
        C.finish_commit(plan.out, journal,
                        lambda names: write_meta(cfg, plan, journal["summary"], names, registry))
    finally:
        lock.release()
    return journal["summary"]


def open_attempt(cfg: ScoreConfig, plan: Plan) -> R.Attempt:
    """Step 3: resume the staged attempt or start one (see :mod:`giellm_ray.score.resume`)."""
    fp = R.fingerprint(plan.fs_in, plan.files, cfg)
    committed = (plan.state.manifest or {}).get("run_id")
    attempt = R.open_attempt(plan.out, fp, not cfg.resume, committed,
                             lambda: R.choose_id_column(plan.fs_in, plan.files, plan.schema))
    if attempt.resumed:
        log.info("score: resuming run %s from %s", attempt.run_id, plan.out.child(C.STAGING))
    return attempt


def score_missing(cfg: ScoreConfig, plan: Plan, attempt: R.Attempt, registry, lock) -> dict:
    """Step 4: score the rows not yet committed; the summary of this attempt."""
    start = time.monotonic()
    R.recover(plan.out)
    done = R.committed_ids(plan.out, attempt.id_column)
    todo = plan.total - len(done)
    log.info("score: %d rows in %d file(s) -> %s (%d already staged, %d to score)",
             plan.total, len(plan.files), cfg.output, len(done), todo)
    totals: dict = {}
    if todo > 0:
        from giellm_ray.score.job import run_pipeline

        totals = run_pipeline(cfg, plan, attempt, done, todo, registry, lock)
    seconds = time.monotonic() - start
    return summarize(attempt, plan.total, len(done), totals, seconds)


def summarize(attempt: R.Attempt, total: int, resumed: int, totals: dict, seconds: float) -> dict:
    from giellm_ray.generation.base import EngineStats

    scored = totals.get("scored_rows", 0)
    return {
        "run_id": attempt.run_id, "input_rows": total, "resumed_rows": resumed,
        "scored_rows": scored, "id_column": attempt.id_column, "seconds": seconds,
        "rows_per_s": scored / seconds if seconds else 0.0,
        "generated_tokens_per_s": totals.get("generated_tokens", 0) / seconds if seconds else 0.0,
        "engine": EngineStats.from_totals(totals).to_dict(),
    }


def stage_result(plan: Plan, attempt: R.Attempt, summary: dict) -> dict:
    """Step 5: every input row staged exactly once (checked), then the commit journal."""
    out = plan.out
    if plan.total == 0 and not C.staged_files(out):
        schema = scored_schema(plan.schema)
        if attempt.id_column == R.ROW_HASH:
            schema = schema.append(pa.field(R.ROW_HASH, pa.uint64()))
        out.fs.create_dir(out.child(C.STAGING, C.STAGED_DATA), recursive=True)
        pq.write_table(schema.empty_table(), out.child(C.STAGING, C.STAGED_DATA,
                       f"{attempt.run_id}-empty.parquet"), filesystem=out.fs)
    files = C.staged_files(out)
    rows = sum(f["rows"] for f in files)
    if rows != plan.total:  # the contract; never expected
        raise RuntimeError(f"staged {rows} rows for {plan.total} input rows; "
                           f"{out.child(C.STAGING)} is kept: re-run to resume, or --fresh")
    summary.update(output_rows=rows, output_files=len(files),
                   error_rows=_count_errors(out, [out.child(C.STAGING, C.STAGED_DATA, f["name"])
                                                  for f in files]))
    return C.begin_commit(out, attempt.run_id, files, summary, plan.state.manifest)


def _count_errors(out: Location, paths: list[str]) -> int:
    """Rows with an ``error`` over the whole result (resumed rows included): one column read."""
    def count(path: str) -> int:
        col = pq.read_table(out.fs.open_input_file(path), columns=[S.ERROR]).column(0)
        return len(col) - col.null_count

    return sum(C.parallel(out, count, paths))


def compute_metrics(fs: pafs.FileSystem, files: list[str], registry) -> dict:
    """Per-file counts from the written output (streamed, three columns), merged."""
    from giellm_ray.metrics import count_rows, merge_counts
    from giellm_ray.score.pipeline import decode_column

    parts = []
    for f in files:
        pf = pq.ParquetFile(fs.open_input_file(f))
        for batch in pf.iter_batches(columns=[S.DATASET, S.TARGET, S.PREDICTION]):
            # Undecodable input bytes read as null (an unlabelled row), never as a crash.
            ds, tgt, pred = (decode_column(batch.column(i), n)[0] for i, n in
                             enumerate((S.DATASET, S.TARGET, S.PREDICTION)))
            parts.append(count_rows([str(x) for x in ds], tgt, pred, registry))
    return merge_counts(parts)


def _write_report(fs: pafs.FileSystem, counts: dict, report_dir: str) -> tuple[dict, list[str]]:
    from giellm_ray.metrics import write_report

    with tempfile.TemporaryDirectory() as tmp:
        metrics = write_report(counts, tmp)
        fs.create_dir(report_dir, recursive=True)
        names = sorted(os.listdir(tmp))
        for name in names:
            with open(os.path.join(tmp, name), "rb") as src, \
                    fs.open_output_stream(f"{report_dir}/{name}") as dst:
                dst.write(src.read())
    return metrics, [f"{C.METRICS_DIR}/{n}" for n in names]


def write_meta(cfg: ScoreConfig, plan: Plan, summary: dict, names: list[str],
               registry) -> list[str]:
    """Commit step 5: ``_metrics/`` (gold targets only), ``_score.json``, ``_config.yaml``."""
    out, meta = plan.out, [C.SCORE_JSON, C.CONFIG_YAML]
    if cfg.metrics and S.TARGET in plan.schema.names:
        counts = compute_metrics(out.fs, [out.child(n) for n in names], registry)
        if any(c["n"] for c in counts.values()):
            summary["metrics"], written = _write_report(out.fs, counts, out.child(C.METRICS_DIR))
            meta += written
        else:  # a target column of nulls (unlabelled data): nothing to score against
            log.info("score: no gold targets in the input; metrics skipped")
    with out.fs.open_output_stream(out.child(C.SCORE_JSON)) as f:
        f.write(json.dumps(summary, ensure_ascii=False, indent=2).encode())
    dump_config(cfg, out.child(C.CONFIG_YAML), out.fs)
    return meta


def cleanup_output(cfg: ScoreConfig) -> dict:
    """``giellm score --cleanup``: end a killed run's processes, discard its staging; no scoring."""
    if not cfg.output:
        raise ValueError("no output: pass --output PATH")
    out = locate(cfg.output, cfg.s3_endpoint_url)
    killed = RunLock(out).clear_dead()
    if C.read_json(out.fs, out.child(C.STAGING, C.JOURNAL)) is not None:
        raise ValueError(f"a commit into {out.uri} was interrupted half-way; run the same "
                         "giellm score command again to finish it (cleanup would lose the result)")
    staging = out.child(C.STAGING)
    discarded = C.exists(out.fs, staging)
    if discarded and C.read_json(out.fs, out.child(C.STAGING, R.ATTEMPT)) is None:
        raise ValueError(f"{staging} holds no giellm attempt record; not ours to delete")
    if discarded:
        out.fs.delete_dir(staging)
    return {"output": out.uri, "ended_processes": killed,
            "discarded_staging": staging if discarded else None,
            "removed": C.remove_leftovers(out)}


__all__ = ["SUCCESS", "check_inputs", "cleanup_output", "compute_metrics", "prepare",
           "run_score"]
