"""``giellm score`` end to end on the tiny model through the real Ray Data pipeline: every row out
exactly once, bad rows (hostile bytes included) carry their error, metrics from per-file counts,
S3 in and out (moto on loopback), a re-run over an interrupted run's leftovers, and a driver
SIGKILLed mid-job whose re-run scores only the rest and equals a clean run; the same kill and
re-run with ``--set engine=vllm`` (bad rows, per-row caps, 100% format validity)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import take

from giellm_ray import schema as S
from giellm_ray.formats import render
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.driver import SUCCESS, run_score

pytestmark = pytest.mark.ray

BAD = {
    "bad-null": {S.DATASET: "SCNM", S.TEXT: None},
    "bad-empty": {S.DATASET: "SCNM", S.TEXT: ""},
    "bad-dataset": {S.DATASET: "NOPE", S.TEXT: "東京都に本社を置く。"},
    "bad-long": {S.DATASET: "SCNM", S.TEXT: "長" * 3000},
}


def make_rows(records, n: int) -> list[dict]:
    rows = []
    for i, r in enumerate(records[:n]):
        rec = {
            "dataset": "SCNM",
            "text": r["text"],
            "tl_label": "社会",
            "items": [
                {"label": lab, "span": sp, "tail": None}
                for sp, lab in ((e["name"], e["type"]) for e in r["entities"])
            ],
        }
        try:
            prompt, target = render(rec)
        except ValueError:
            prompt, target = None, None
        rows.append(
            {
                S.ID: f"r{i}",
                S.DATASET: "SCNM",
                S.TEXT: r["text"],
                S.PROMPT: prompt,
                S.TARGET: target,
            }
        )
    rows += [{S.ID: k, **v} for k, v in BAD.items()]
    return rows


def write_input(rows: list[dict], directory: str, filesystem=None) -> None:
    half = len(rows) // 2
    for name, part in (("a.parquet", rows[:half]), ("b.parquet", rows[half:])):
        pq.write_table(S.dataset_table(part), f"{directory}/{name}", filesystem=filesystem)


HOSTILE = {  # id -> (dataset, text, prompt bytes, the column at fault): bad UTF-8 in each
    "hostile-text": (b"SCNM", b"\xff\xfe broken \xed\xa0\x80", None, "text"),
    "hostile-dataset": (b"SC\xc3NM", "東京都".encode(), None, "dataset"),
    "hostile-prompt": (b"SCNM", "東京都".encode(), b"\x80<prompt>", "prompt"),
}


def write_hostile(directory: str) -> None:
    """A third input file, same schema, whose string columns hold invalid UTF-8."""

    def col(k):
        return pa.array([v[k] for v in HOSTILE.values()], pa.binary()).view(pa.string())

    cols = {f.name: pa.nulls(len(HOSTILE), f.type) for f in S.DATASET_SCHEMA}
    cols.update(
        {
            S.ID: pa.array(list(HOSTILE)),
            S.DATASET: col(0),
            S.TEXT: col(1),
            S.PROMPT: col(2),
            S.TARGET: col(1),
        }
    )  # undecodable gold too: metrics survive
    pq.write_table(pa.table(cols, schema=S.DATASET_SCHEMA), f"{directory}/c.parquet")


def config(model: str, inp: str, out: str, **kw) -> ScoreConfig:
    cfg = ScoreConfig(
        input=[inp],
        output=out,
        num_actors=2,
        num_cpus_per_actor=0.5,
        batch_size=48,
        rows_per_block=48,
        progress_interval_s=0,
        progress_bars=False,
        **kw,
    )
    cfg.model.name_or_path = model
    cfg.generation.max_new_tokens = 4
    return cfg


def _value(raw: bytes | None) -> str | bytes | None:
    try:
        return raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        return raw  # an undecodable input value passed through: kept as its bytes


def read_output(out: str, filesystem=None) -> list[dict]:
    """Every row of OUTPUT/*.parquet (string values that are not UTF-8 come back as bytes)."""
    import pyarrow.fs as pafs

    fs = filesystem or pafs.LocalFileSystem()
    files = [
        f.path for f in fs.get_file_info(pafs.FileSelector(out)) if f.path.endswith(".parquet")
    ]
    rows = []
    for f in files:
        table = pq.read_table(f, filesystem=fs)
        cols = {
            name: (
                [_value(v) for v in col.cast(pa.binary()).to_pylist()]
                if col.type == pa.string()
                else col.to_pylist()
            )
            for name, col in zip(table.column_names, table.columns, strict=True)
        }
        rows += [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]
    return rows


def check_rows(rows_in: list[dict], rows_out: list[dict]) -> None:
    ids = Counter(r[S.ID] for r in rows_out)
    assert len(rows_out) == len(rows_in)
    assert ids == Counter(r[S.ID] for r in rows_in)  # every row exactly once
    by_id = {r[S.ID]: r for r in rows_out}
    assert by_id["bad-null"][S.ERROR] == "text is null"
    assert by_id["bad-empty"][S.ERROR] == "text is empty"
    assert "unknown dataset" in by_id["bad-dataset"][S.ERROR]
    assert by_id["bad-long"][S.ERROR].startswith("prompt too long")
    good = by_id["r0"]
    assert good[S.TEXT] == rows_in[0][S.TEXT] and good[S.TARGET] == rows_in[0][S.TARGET]
    assert isinstance(good[S.PREDICTION], str) and good[S.NUM_GENERATED_TOKENS] >= 1


@pytest.mark.slow  # an interrupted run and two re-runs; the S3 test below keeps one fast score
@pytest.mark.timeout(300)
def test_score_local_then_rerun_after_interruption(
    ray_cluster, tiny_model_dir, stockmark_records, tmp_path
):
    rows = make_rows(stockmark_records, 200)
    inp, out = tmp_path / "in", str(tmp_path / "scored")
    inp.mkdir()
    write_input(rows, str(inp))
    write_hostile(str(inp))
    summary = run_score(config(tiny_model_dir, str(inp), out))
    out_rows = read_output(out)
    check_rows(rows + [{S.ID: k} for k in HOSTILE], out_rows)
    by_id = {r[S.ID]: r for r in out_rows}
    for rid, (dataset, text, prompt, column) in HOSTILE.items():  # own error, columns intact
        assert by_id[rid][S.ERROR].startswith(f"column '{column}' is not valid UTF-8"), rid
        got = [by_id[rid][c] for c in (S.DATASET, S.TEXT, S.PROMPT)]
        assert [v if isinstance(v, bytes) or v is None else v.encode() for v in got] == [
            dataset,
            text,
            prompt,
        ]
    assert summary["input_rows"] == summary["output_rows"] == len(rows) + len(HOSTILE)
    assert summary["error_rows"] >= len(BAD) + len(HOSTILE) and summary["resumed_rows"] == 0
    assert 0 <= summary["engine"]["padding_fraction"] < 1
    assert os.path.exists(os.path.join(out, SUCCESS))
    metrics = json.loads((tmp_path / "scored" / "_metrics" / "metrics.json").read_text())
    assert "SCNM" in metrics
    assert os.path.exists(os.path.join(out, "_metrics", "metrics.md"))

    # What an interrupted run leaves behind, and what the re-run does with it: a staging
    # directory of an older giellm beside OUTPUT (removed), and a Parquet file no giellm
    # manifest names (a stray copy: refused and kept, never deleted). The re-run after the user
    # moved the stray file ends exactly once, _SUCCESS naming exactly the files.
    files = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
    stale = tmp_path / "scored.tmp-deadbeef"
    stale.mkdir()
    shutil.copy(os.path.join(out, files[0]), stale / "part.parquet")
    stray = os.path.join(out, "dup-" + files[0])
    shutil.copy(os.path.join(out, files[0]), stray)
    with pytest.raises(ValueError, match="did not provably write"):
        run_score(config(tiny_model_dir, str(inp), out, metrics=False))
    assert os.path.exists(stray) and len(read_output(out)) > len(out_rows)
    os.remove(stray)
    run_score(config(tiny_model_dir, str(inp), out, metrics=False))
    check_rows(rows + [{S.ID: k} for k in HOSTILE], read_output(out))
    assert not stale.exists()
    manifest = json.loads((tmp_path / "scored" / SUCCESS).read_text())
    assert sorted(f["name"] for f in manifest["files"]) == sorted(
        p for p in os.listdir(out) if p.endswith(".parquet")
    )
    assert not (tmp_path / "scored" / "_metrics").exists()  # the stale report went with its run


@pytest.mark.timeout(180)
def test_score_s3_in_and_out(ray_cluster, s3_server, tiny_model_dir, stockmark_records):
    from giellm_ray.io import resolve_native

    rows = make_rows(stockmark_records, 40)
    rows[2][S.ID] = "r1"  # ids not unique: rows are keyed by the derived row_hash
    fs, _ = resolve_native("s3://giellm-test/x", s3_server)
    write_input(rows, "giellm-test/score-in", filesystem=fs)
    out = "s3://giellm-test/score-out"
    cfg = config(tiny_model_dir, "s3://giellm-test/score-in", out, s3_endpoint_url=s3_server)
    summary = run_score(cfg)
    assert summary["output_rows"] == len(rows) and summary["id_column"] == "row_hash"
    out_rows = read_output("giellm-test/score-out", fs)
    check_rows(rows, out_rows)
    assert len({r["row_hash"] for r in out_rows}) == len(rows)
    assert fs.get_file_info("giellm-test/score-out/_metrics/metrics.json").size > 0
    assert fs.get_file_info(f"giellm-test/score-out/{SUCCESS}").type.name == "File"
    assert fs.get_file_info("giellm-test/score-out/_staging").type.name == "NotFound"


def giellm_score(args: list[str], **kw) -> subprocess.Popen:
    """``giellm score`` as a user runs it: its own process (joins the test's Ray cluster)."""
    return subprocess.Popen(
        [sys.executable, "-m", "giellm_ray.cli", "score", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def committed_parts(out: str) -> int:
    ck = os.path.join(out, "_staging", "checkpoint")
    names = os.listdir(ck) if os.path.isdir(ck) else []
    return sum(n.endswith(".parquet") and not n.endswith(".pending.parquet") for n in names)


def kill_when_committed(proc: subprocess.Popen, out: str, parts: int) -> None:
    """SIGKILL ``proc`` (a ``giellm score``) once ``parts`` part files are committed."""
    while committed_parts(out) < parts:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def scored_by_id(out: str) -> dict:
    return {
        r[S.ID]: (r[S.PREDICTION], r[S.ERROR], r[S.NUM_GENERATED_TOKENS]) for r in read_output(out)
    }


@pytest.mark.slow
@pytest.mark.timeout(420)  # ~2 min on a quiet 2-core machine; generous for a loaded one
def test_killed_driver_rerun_scores_only_the_rest(
    ray_cluster, tiny_model_dir, stockmark_records, tmp_path
):
    """SIGKILL the driver once some parts are committed; a changed input refuses to resume; the
    same command then ends with every row exactly once, resumed_rows > 0, equal to a clean run."""
    recs = take(stockmark_records, 2000)
    rows = [{S.ID: f"k{i}", S.DATASET: "SCNM", S.TEXT: r["text"]} for i, r in enumerate(recs)]
    inp, out, clean = tmp_path / "in", str(tmp_path / "out"), str(tmp_path / "clean")
    inp.mkdir()
    for k in range(3):
        pq.write_table(S.dataset_table(rows[k * 700 : (k + 1) * 700]), inp / f"p{k}.parquet")
    sets = {
        "generation.max_new_tokens": 4,
        "rows_per_block": 100,
        "batch_size": 100,
        "progress_bars": "false",
        "progress_interval_s": 0,
        "ray_address": ray_cluster.get_runtime_context().gcs_address,
    }
    cfg = config(tiny_model_dir, str(inp), clean, metrics=False)
    cfg.rows_per_block = cfg.batch_size = 100
    run_score(cfg)
    args = [
        "--model",
        tiny_model_dir,
        "--input",
        str(inp),
        "--output",
        out,
        *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")),
    ]

    kill_when_committed(giellm_score(args), out, 3)  # some parts committed, most rows to do
    staged = committed_parts(out)
    assert not os.path.exists(os.path.join(out, SUCCESS)) and 3 <= staged < 20

    st = os.stat(inp / "p1.parquet")  # the input changes: resuming would mix results
    os.utime(inp / "p1.parquet", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    refused = giellm_score(args)
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "p1.parquet changed" in err and "--fresh" in err, err
    os.utime(inp / "p1.parquet", ns=(st.st_atime_ns, st.st_mtime_ns))

    again = giellm_score(args)
    stdout, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    summary = json.loads(stdout.splitlines()[0])
    assert summary["resumed_rows"] >= staged * 100 and summary["resumed_rows"] > 0
    assert summary["resumed_rows"] + summary["scored_rows"] == summary["output_rows"] == 2000
    got = read_output(out)
    assert Counter(r[S.ID] for r in got) == Counter(r[S.ID] for r in rows)  # exactly once
    assert scored_by_id(out) == scored_by_id(clean)  # deterministic greedy: same predictions
    assert not os.path.exists(os.path.join(out, "_staging"))
    from giellm_ray.score.paths import locate
    from giellm_ray.score.runlock import RunLock

    assert not os.path.exists(RunLock(locate(out)).path)  # the killed run's record is gone too


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_inference_actor_killed_mid_job_loses_nothing(
    ray_cluster, tiny_model_dir, stockmark_records, tmp_path
):
    import threading

    import psutil

    rows = [
        {S.ID: f"a{i}", S.DATASET: "SCNM", S.TEXT: r["text"]}
        for i, r in enumerate(take(stockmark_records, 1000))
    ]
    inp, out = tmp_path / "in", str(tmp_path / "out")
    inp.mkdir()
    write_input(rows, str(inp))
    cfg = config(tiny_model_dir, str(inp), out, metrics=False)
    cfg.rows_per_block = cfg.batch_size = 50
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(run_score(cfg)))
    job.start()
    while committed_parts(out) < 2:
        assert job.is_alive(), "finished before the kill"
        time.sleep(0.2)
    # The test's own Ray runs under this process: its actors are our descendants.
    actors = [
        p
        for p in psutil.Process().children(recursive=True)
        if "ScoreBatch" in " ".join(p.cmdline())
    ]
    assert actors, "no inference actor to kill"
    actors[0].kill()
    job.join(timeout=240)
    assert result["output_rows"] == 1000
    got = read_output(out)
    assert Counter(r[S.ID] for r in got) == Counter(r[S.ID] for r in rows)  # exactly once
    assert not [r for r in got if (r[S.ERROR] or "").startswith("scoring error")]


def test_schema_is_checked_before_any_work(tmp_path, tiny_model_dir):
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["1"], "sentence": ["x"]}), tmp_path / "bad.parquet")
    cfg = config(tiny_model_dir, str(tmp_path / "bad.parquet"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="need columns 'dataset' and 'text'"):
        run_score(cfg)
    assert not (tmp_path / "out").exists()


def test_a_float_max_new_tokens_column_is_refused_before_any_work(tmp_path, tiny_model_dir):
    import pyarrow as pa

    pq.write_table(
        pa.table({"dataset": ["SCNM"], "text": ["x"], "max_new_tokens": [3.0]}),
        tmp_path / "in.parquet",
    )
    cfg = config(tiny_model_dir, str(tmp_path / "in.parquet"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="'max_new_tokens' .* must be an integer type"):
        run_score(cfg)
    assert not (tmp_path / "out").exists()


VLLM_SETS = {
    "engine": "vllm",
    "num_actors": 1,
    "vllm.enforce_eager": "true",
    "vllm.gpu_memory_utilization": 0.1,
    "vllm.max_num_seqs": 64,
}


@pytest.mark.slow
@pytest.mark.timeout(600)  # two vLLM start-ups (~20-40 s each) and ~2,000 constrained rows
def test_vllm_score_killed_then_rerun_scores_every_row_once(
    ray_cluster, tiny_vllm_model_dir, stockmark_records, tmp_path
):
    """``giellm score --set engine=vllm``, SIGKILLed once parts are committed, then run again:
    every row exactly once, resumed_rows > 0; bad rows (null/empty text, unknown dataset, over-long
    text, bad caps) carry their error; caps hold; 100% parse, known labels, spans in the text."""
    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.metrics import format_validity

    names = sorted(DEFAULT_REGISTRY)
    rows = [
        {S.ID: f"v{i}", S.DATASET: names[i % len(names)], S.TEXT: r["text"]}
        for i, r in enumerate(take(stockmark_records, 2000))
    ]
    caps = {"v3": 20, "v10": 7, "v11": 1, "bad-cap-zero": 0, "bad-cap-negative": -3}
    rows += [{S.ID: k, **v} for k, v in BAD.items()]
    rows += [
        {S.ID: k, S.DATASET: "SCNM", S.TEXT: "東京都に本社を置く。"}
        for k in ("bad-cap-zero", "bad-cap-negative")
    ]
    inp, out = tmp_path / "in", str(tmp_path / "out")
    inp.mkdir()
    for k in range(3):
        part = rows[k::3]
        table = S.dataset_table(part).append_column(
            S.MAX_NEW_TOKENS, pa.array([caps.get(r[S.ID]) for r in part], pa.int32())
        )
        pq.write_table(table, inp / f"p{k}.parquet")
    sets = {
        **VLLM_SETS,
        "generation.max_new_tokens": 48,
        "rows_per_block": 100,
        "batch_size": 100,
        "progress_bars": "false",
        "progress_interval_s": 0,
        "ray_address": ray_cluster.get_runtime_context().gcs_address,
    }
    args = [
        "--model",
        tiny_vllm_model_dir,
        "--input",
        str(inp),
        "--output",
        out,
        *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")),
    ]
    kill_when_committed(giellm_score(args), out, 2)
    assert not os.path.exists(os.path.join(out, SUCCESS))

    again = giellm_score(args)
    stdout, err = again.communicate(timeout=400)
    assert again.returncode == 0, err[-3000:]
    summary = json.loads(stdout.splitlines()[0])  # the command's result, alone on stdout
    assert summary["resumed_rows"] > 0
    assert summary["resumed_rows"] + summary["scored_rows"] == summary["output_rows"] == len(rows)
    got = read_output(out)
    assert Counter(r[S.ID] for r in got) == Counter(r[S.ID] for r in rows)  # exactly once
    by_id = {r[S.ID]: r for r in got}
    assert by_id["bad-null"][S.ERROR] == "text is null"
    assert by_id["bad-empty"][S.ERROR] == "text is empty"
    assert "unknown dataset" in by_id["bad-dataset"][S.ERROR]
    assert by_id["bad-long"][S.ERROR].startswith("prompt too long")
    for k in ("bad-cap-zero", "bad-cap-negative"):
        assert by_id[k][S.ERROR].startswith("max_new_tokens must be a positive integer"), k
    for rid, cap in caps.items():
        if cap > 0:
            assert 1 <= by_id[rid][S.NUM_GENERATED_TOKENS] <= cap, by_id[rid]
    good = [by_id[r[S.ID]] for r in rows if r[S.ID].startswith("v") and r[S.ID] not in caps]
    # vLLM's grammars have no token budget: a row the cap cut is flagged and keeps only its
    # complete items (docs/decisions/token-budget.md); every other row ended freely.
    cut = [g for g in good if g[S.ERROR] is not None]
    assert all(g[S.ERROR] == "output truncated at max_new_tokens" for g in cut), cut[:3]
    assert len(cut) <= 0.4 * len(good), len(cut)
    for g in good:
        task = DEFAULT_REGISTRY[g[S.DATASET]]
        assert g[S.PRED_TL_LABEL] in task.tl_labels, g
        assert all(g[S.TEXT][i["start"] : i["end"]] == i["span"] for i in g[S.PRED_ITEMS]), g
    for name in names:
        mine = [g for g in good if g[S.DATASET] == name and g[S.ERROR] is None]
        validity = format_validity(
            [g[S.TEXT] for g in mine], [g[S.PREDICTION] for g in mine], DEFAULT_REGISTRY[name]
        )
        assert validity == {"parse": 1.0, "labels": 1.0, "spans": 1.0}, (name, validity)
    assert not os.path.exists(os.path.join(out, "_staging"))
