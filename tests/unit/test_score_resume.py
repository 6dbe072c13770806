"""The resume bookkeeping of ``giellm score`` without Ray: recovery of interrupted part-file writes,
the done-row filter (string and integer ids), the id column choice, the attempt fingerprint, and
the run lock that ends what a SIGKILLed driver left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray import schema as S
from giellm_ray.score import resume
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.layout import (
    ATTEMPT,
    CHECKPOINT,
    JOURNAL,
    STAGED_DATA,
    STAGING,
    locate_output,
)
from giellm_ray.score.paths import locate
from giellm_ray.score.runlock import RunLock


def write_ids(path, ids, column=S.ID) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({column: ids}), path)


def test_recover_undoes_torn_writes_and_keeps_committed_ones(tmp_path):
    out = locate_output(str(tmp_path / "out"))
    ck, data = tmp_path / "out" / STAGING / CHECKPOINT, tmp_path / "out" / STAGING / STAGED_DATA
    write_ids(ck / "u_000001.parquet", ["a", "b"])  # committed
    write_ids(data / "u_000001-0.parquet", ["a", "b"])
    write_ids(ck / "u_000002.pending.parquet", ["c"])  # killed mid-write: torn part file
    write_ids(data / "u_000002-0.parquet", ["c"])
    write_ids(ck / "u_000003.pending.parquet", ["d"])  # S3 copy done, delete not: committed
    write_ids(ck / "u_000003.parquet", ["d"])
    write_ids(data / "u_000003-0.parquet", ["d"])
    write_ids(data / "u_0000020-0.parquet", ["e"])  # task 20: not a prefix match of task 2
    resume.recover(out)
    assert sorted(os.listdir(ck)) == ["u_000001.parquet", "u_000003.parquet"]
    assert sorted(os.listdir(data)) == [
        "u_000001-0.parquet",
        "u_0000020-0.parquet",
        "u_000003-0.parquet",
    ]
    assert resume.committed_ids(out, S.ID).tolist() == [b"a", b"b", b"d"]


def test_drop_done_string_ids_exactly():
    done = np.sort(resume.id_keys(pa.array(["r1", "r10", "東京", "badÿ"])))
    ids = pa.array(
        [b"r1", b"r10", b"r100", b"r", "東京".encode(), b"bad\xc3\xbf", b"r1\x00"], pa.binary()
    ).view(pa.string())
    batch = pa.table({S.ID: ids, "x": list(range(7))})
    kept = resume.drop_done(batch, done, S.ID)
    # r100 is longer than every done id (must not truncate to r10); r1\0 differs from r1 only by
    # a trailing NUL, which fixed-width bytes cannot tell apart: choose_id_column rejects such ids
    assert kept.column("x").to_pylist() == [2, 3]


def test_drop_done_integer_ids():
    done = np.sort(resume.id_keys(pa.array([5, 1, 9], pa.uint64())))
    batch = pa.table({resume.ROW_HASH: pa.array([1, 2, 9, 10], pa.uint64())})
    assert resume.drop_done(batch, done, resume.ROW_HASH).column(0).to_pylist() == [2, 10]


def test_id_column_choice(tmp_path):
    def choose(ids, extra=None):
        cols = {S.ID: ids, S.TEXT: ["t"] * len(ids), **(extra or {})}
        pq.write_table(pa.table(cols), tmp_path / "a.parquet")
        f = str(tmp_path / "a.parquet")
        return resume.choose_id_column(locate(f).fs, [f], pq.read_schema(f))

    assert choose(["a", "b", "c"]) == S.ID
    assert choose([3, 1, 2]) == S.ID
    assert choose(["a", "b", "a"]) == resume.ROW_HASH
    assert choose(["a", None, "c"]) == resume.ROW_HASH
    assert choose(["a", "a\x00"]) == resume.ROW_HASH  # equal as fixed-width keys: not usable
    with pytest.raises(ValueError, match="has a 'row_hash' column but no unique 'id'"):
        choose(["a", "a"], {resume.ROW_HASH: [1, 2]})


def test_a_changed_input_or_model_refuses_to_resume(tmp_path):
    f = tmp_path / "in.parquet"
    pq.write_table(pa.table({S.ID: ["a"]}), f)
    out = locate_output(str(tmp_path / "out"))
    cfg = ScoreConfig(input=[str(f)], output=out.uri)
    fp = resume.fingerprint(out.fs, [str(f)], cfg)
    first = resume.open_attempt(out, fp, False, None, lambda: S.ID)
    again = resume.open_attempt(
        out, resume.fingerprint(out.fs, [str(f)], cfg), False, None, lambda: S.ID
    )
    assert again.resumed and again.run_id == first.run_id
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"in.parquet changed .*--fresh"):
        resume.open_attempt(
            out, resume.fingerprint(out.fs, [str(f)], cfg), False, None, lambda: S.ID
        )
    cfg.generation.max_new_tokens = 7
    with pytest.raises(ValueError, match=r"decide predictions changed \(max_new_tokens\)"):
        resume.open_attempt(
            out, resume.fingerprint(out.fs, [str(f)], cfg), False, None, lambda: S.ID
        )
    fresh = resume.open_attempt(
        out, resume.fingerprint(out.fs, [str(f)], cfg), True, None, lambda: S.ID
    )
    os.remove(tmp_path / "out" / STAGING / ATTEMPT)  # killed before the record was written
    assert not resume.open_attempt(
        out, resume.fingerprint(out.fs, [str(f)], cfg), False, None, lambda: S.ID
    ).resumed
    fresh = resume.open_attempt(
        out, resume.fingerprint(out.fs, [str(f)], cfg), True, None, lambda: S.ID
    )
    assert not fresh.resumed and fresh.run_id != first.run_id
    # the staging of the run _SUCCESS already records is a leftover, not an attempt to resume
    done = resume.open_attempt(
        out, resume.fingerprint(out.fs, [str(f)], cfg), False, fresh.run_id, lambda: S.ID
    )
    assert not done.resumed and done.run_id != fresh.run_id


DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    from giellm_ray.score.paths import locate
    from giellm_ray.score.runlock import RunLock
    lock = RunLock(locate(sys.argv[1]))
    lock.acquire()
    child = subprocess.Popen(["sleep", "300"])  # stands in for a local Ray's agents
    lock.record_children()
    print(child.pid, flush=True)
    time.sleep(300)
""")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_run_lock_refuses_a_live_run_and_reaps_a_killed_one(tmp_path):
    out = str(tmp_path / "out")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, out], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        child = int(proc.stdout.readline())
        with pytest.raises(ValueError, match=f"another giellm score \\(pid {proc.pid}\\)"):
            RunLock(locate(out)).acquire()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert psutil.pid_exists(child)  # orphaned, as Ray's agents are after a SIGKILL
        assert RunLock(locate(out)).clear_dead() == [child]
        deadline = time.monotonic() + 10
        while not gone(child):
            assert time.monotonic() < deadline, "the leftover was not ended"
            time.sleep(0.1)
        assert RunLock(locate(out)).clear_dead() == []  # the record is gone
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cleanup_discards_an_attempt_but_never_a_half_done_commit(tmp_path):
    from giellm_ray.io import write_json
    from giellm_ray.score.driver import cleanup_output

    out = locate_output(str(tmp_path / "out"))
    legacy = tmp_path / "out.tmp-0123abcd"  # an older giellm's staging beside OUTPUT
    legacy.mkdir()
    (tmp_path / "out.tmp-notours").mkdir()
    resume.open_attempt(out, {"inputs": [], "what": {}}, False, None, lambda: S.ID)
    write_ids(str(tmp_path / "out" / STAGING / STAGED_DATA / "part.parquet"), ["a"])
    cfg = ScoreConfig(output=out.uri)
    (tmp_path / "out" / "_giellm_probe-89abcdef").write_text("probe")  # killed mid-probe
    report = cleanup_output(cfg)
    assert report["discarded_staging"] and not (tmp_path / "out" / STAGING).exists()
    assert report["removed"] == [str(tmp_path / "out" / "_giellm_probe-89abcdef"), str(legacy)]
    assert (tmp_path / "out.tmp-notours").exists()
    assert cleanup_output(cfg)["discarded_staging"] is None  # idempotent

    resume.open_attempt(out, {"inputs": [], "what": {}}, False, None, lambda: S.ID)
    write_json(out.fs, out.journal, {"run_id": "x", "new": []})
    with pytest.raises(ValueError, match="commit .* was interrupted half-way; run the same"):
        cleanup_output(cfg)
    assert (tmp_path / "out" / STAGING / JOURNAL).exists()

    foreign = locate(str(tmp_path / "other"))
    (tmp_path / "other" / STAGING).mkdir(parents=True)
    (tmp_path / "other" / STAGING / "keep.txt").write_text("theirs")
    with pytest.raises(ValueError, match="holds no giellm attempt record"):
        cleanup_output(ScoreConfig(output=foreign.uri))
    assert (tmp_path / "other" / STAGING / "keep.txt").exists()


def test_fresh_flag_is_resume_false():
    from giellm_ray.cli import build_parser
    from giellm_ray.score.cli import build_config

    parse = build_parser().parse_args
    assert build_config(parse(["score", "--output", "x", "--fresh"])).resume is False
    assert build_config(parse(["score", "--output", "x"])).resume is True
    assert build_config(parse(["score", "--output", "x", "--set", "resume=false"])).resume is False
