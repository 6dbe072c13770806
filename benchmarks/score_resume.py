"""Resume of ``giellm score``: the done-row filter against Ray's, and kill -> re-run end to end.

    .venv/bin/python -m benchmarks.score_resume [--filter-rows 187028 2000000] [--e2e-rows 2000]

Prints JSON lines.

``filter``: the cost of skipping committed rows, for each ``--filter-rows`` N (half of them
done): ours (:func:`giellm_ray.score.resume.drop_done`: sorted fixed-width bytes or uint64,
shipped zero-copy, run inside the read tasks) against Ray Data 2.60's own
``NumpyArrayBasedCheckpointFilter`` (sorted object array of Python strings, held by filter actors
of 1 CPU each). Reports build seconds, bytes held per copy, and microseconds per 2,048-row block.

``e2e``: ``giellm score`` (``cpu.yaml``, tiny random-init model, its own local Ray) on
``--e2e-rows`` Stockmark rows: a clean run (the baseline), then a run SIGKILLed once about half of
its part files are committed and the same command again. Reports wall seconds of each, rows
resumed, processes the killed run left alive (and that the re-run ended), exactly-once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import ROOT, stockmark_records, stockmark_texts, tiny_model
from giellm_ray.score.resume import drop_done, id_keys

BLOCK = 2048


def _time_blocks(fn, blocks: list[pa.Table]) -> float:
    start = time.perf_counter()
    kept = sum(fn(b).num_rows for b in blocks)
    assert 0 < kept < sum(b.num_rows for b in blocks)
    return (time.perf_counter() - start) / len(blocks) * 1e6


def bench_filter(n: int, seed: int = 0) -> list[dict]:
    from ray.data.checkpoint.checkpoint_filter import (
        NumpyArrayBasedCheckpointFilter,
        _numpy_size,
    )

    rng = np.random.default_rng(seed)
    ids = pa.array([f"scnm-{i:09d}" for i in range(n)])
    done_mask = rng.random(n) < 0.5
    starts = rng.integers(0, n - BLOCK, 100)
    blocks = [pa.table({"id": ids.slice(s, BLOCK)}) for s in starts]
    out = []

    t = time.perf_counter()
    ours = np.sort(id_keys(ids.filter(pa.array(done_mask))))
    out.append(
        {
            "what": "resume_filter",
            "impl": "giellm (fixed-width bytes)",
            "ids": n,
            "done": int(done_mask.sum()),
            "build_s": round(time.perf_counter() - t, 3),
            "held_bytes": int(ours.nbytes),
            "extra_cpus": 0,
            "us_per_block": round(_time_blocks(lambda b: drop_done(b, ours, "id"), blocks)),
        }
    )

    hashes = pa.array(rng.integers(0, 2**63, n, dtype=np.uint64))
    t = time.perf_counter()
    ours_u64 = np.sort(id_keys(hashes.filter(pa.array(done_mask))))
    hblocks = [pa.table({"row_hash": hashes.slice(s, BLOCK)}) for s in starts]
    out.append(
        {
            "what": "resume_filter",
            "impl": "giellm (row_hash uint64)",
            "ids": n,
            "build_s": round(time.perf_counter() - t, 3),
            "held_bytes": int(ours_u64.nbytes),
            "extra_cpus": 0,
            "us_per_block": round(
                _time_blocks(lambda b: drop_done(b, ours_u64, "row_hash"), hblocks)
            ),
        }
    )

    t = time.perf_counter()
    theirs = np.sort(ids.filter(pa.array(done_mask)).to_numpy(zero_copy_only=False))
    build = time.perf_counter() - t
    flt = NumpyArrayBasedCheckpointFilter.__new__(NumpyArrayBasedCheckpointFilter)
    flt.checkpointed_ids, flt.id_column = theirs, "id"  # Ray's own filter, minus the ray.get
    out.append(
        {
            "what": "resume_filter",
            "impl": "ray 2.60 NumpyArrayBasedCheckpointFilter",
            "ids": n,
            "build_s": round(build, 3),
            "held_bytes": int(_numpy_size(theirs)),
            "extra_cpus": "1 per filter actor (1 GiB memory reserved each)",
            "us_per_block": round(_time_blocks(flt.filter_rows_for_block, blocks)),
        }
    )
    return out


def _write_input(directory: Path, rows: int) -> None:
    import pyarrow.parquet as pq

    from giellm_ray import schema as S

    recs = stockmark_records()
    data = [
        {S.ID: f"k{i}", S.DATASET: "SCNM", S.TEXT: recs[i % len(recs)]["text"]} for i in range(rows)
    ]
    directory.mkdir(parents=True)
    for k in range(0, rows, 1000):
        pq.write_table(S.dataset_table(data[k : k + 1000]), directory / f"p{k // 1000:03d}.parquet")


def _cmd(model: str, inp: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "giellm_ray.cli",
        "score",
        "--config",
        str(ROOT / "giellm_ray/configs/score/cpu.yaml"),
        "--model",
        model,
        "--input",
        str(inp),
        "--output",
        str(out),
        "--set",
        "generation.max_new_tokens=8",
        "--set",
        "rows_per_block=100",
        "--set",
        "batch_size=100",
        "--set",
        "progress_bars=false",
    ]


def _run(cmd: list[str]) -> tuple[float, dict, str]:
    t = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - t, json.loads(proc.stdout.splitlines()[0]), proc.stderr


def _committed(out: Path) -> int:
    ck = out / "_staging" / "checkpoint"
    return (
        sum(
            p.name.endswith(".parquet") and not p.name.endswith(".pending.parquet")
            for p in ck.iterdir()
        )
        if ck.is_dir()
        else 0
    )


def bench_e2e(rows: int, work: Path) -> list[dict]:
    import psutil

    model = tiny_model(str(work / "tiny"), stockmark_texts())
    _write_input(work / "in", rows)
    clean_s, clean, _ = _run(_cmd(model, work / "in", work / "clean"))
    proc = subprocess.Popen(
        _cmd(model, work / "in", work / "out"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    t = time.perf_counter()
    while _committed(work / "out") < rows // 200:  # about half of the 100-row parts
        if proc.poll() is not None:
            raise SystemExit("the run ended before it could be killed")
        time.sleep(0.2)
    tree = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - t
    time.sleep(5)
    left = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    resume_s, summary, log = _run(_cmd(model, work / "in", work / "out"))
    still = [p for p in left if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    import pyarrow.dataset as pds

    ids = pds.dataset(str(work / "out"), format="parquet").to_table(columns=["id"])["id"]
    return [
        {
            "what": "resume_e2e",
            "rows": rows,
            "baseline_clean_run_s": round(clean_s, 1),
            "killed_after_s": round(killed_after, 1),
            "resume_run_s": round(resume_s, 1),
            "resumed_rows": summary["resumed_rows"],
            "scored_rows": summary["scored_rows"],
            "left_alive_5s_after_kill": len(left),
            "alive_after_rerun": len(still),
            "exactly_once": len(ids) == len(set(ids.to_pylist())) == rows,
            "clean_rows_per_s": round(clean["rows_per_s"], 1),
        }
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter-rows", type=int, nargs="*", default=[187_028, 2_000_000])
    ap.add_argument("--e2e-rows", type=int, default=2000, help="0 skips the end-to-end part")
    args = ap.parse_args()
    for n in args.filter_rows:
        for rec in bench_filter(n):
            print(json.dumps(rec), flush=True)
    if args.e2e_rows:
        with tempfile.TemporaryDirectory() as work:
            for rec in bench_e2e(args.e2e_rows, Path(work)):
                print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
