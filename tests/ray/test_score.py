"""``giellm score`` end to end on the tiny model through the real Ray Data pipeline: every row out
exactly once, bad rows carry their error, metrics from per-file counts, S3 in and out (moto on
loopback), and a re-run over an interrupted run's leftovers."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pyarrow.parquet as pq
import pytest

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
        rec = {"dataset": "SCNM", "text": r["text"], "tl_label": "社会",
               "items": [{"label": lab, "span": sp, "tail": None} for sp, lab in
                         ((e["name"], e["type"]) for e in r["entities"])]}
        try:
            prompt, target = render(rec)
        except ValueError:
            prompt, target = None, None
        rows.append({S.ID: f"r{i}", S.DATASET: "SCNM", S.TEXT: r["text"], S.PROMPT: prompt,
                     S.TARGET: target})
    rows += [{S.ID: k, **v} for k, v in BAD.items()]
    return rows


def write_input(rows: list[dict], directory: str, filesystem=None) -> None:
    half = len(rows) // 2
    for name, part in (("a.parquet", rows[:half]), ("b.parquet", rows[half:])):
        pq.write_table(S.dataset_table(part), f"{directory}/{name}", filesystem=filesystem)


def config(model: str, inp: str, out: str, **kw) -> ScoreConfig:
    cfg = ScoreConfig(input=[inp], output=out, num_actors=2, num_cpus_per_actor=0.5,
                      batch_size=48, rows_per_block=48, progress_interval_s=0,
                      progress_bars=False, **kw)
    cfg.model.name_or_path = model
    cfg.generation.max_new_tokens = 4
    return cfg


def read_output(out: str, filesystem=None) -> list[dict]:
    import pyarrow.fs as pafs

    fs = filesystem or pafs.LocalFileSystem()
    files = [f.path for f in fs.get_file_info(pafs.FileSelector(out))
             if f.path.endswith(".parquet")]
    return [r for f in files for r in pq.read_table(f, filesystem=fs).to_pylist()]


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


@pytest.mark.timeout(240)
def test_score_local_then_rerun_after_interruption(ray_cluster, tiny_model_dir,
                                                   stockmark_records, tmp_path):
    rows = make_rows(stockmark_records, 200)
    inp, out = tmp_path / "in", str(tmp_path / "scored")
    inp.mkdir()
    write_input(rows, str(inp))
    summary = run_score(config(tiny_model_dir, str(inp), out))
    out_rows = read_output(out)
    check_rows(rows, out_rows)
    assert summary["input_rows"] == summary["output_rows"] == len(rows)
    assert summary["error_rows"] >= len(BAD)
    assert 0 <= summary["engine"]["padding_fraction"] < 1
    assert os.path.exists(os.path.join(out, SUCCESS))
    metrics = json.loads((tmp_path / "scored" / "_metrics" / "metrics.json").read_text())
    assert "SCNM" in metrics
    assert os.path.exists(os.path.join(out, "_metrics", "metrics.md"))

    # What an interrupted second run leaves behind: a half-written tmp directory beside OUTPUT,
    # a partial commit (a file copied twice, _SUCCESS gone). The re-run must end exactly once.
    files = sorted(p for p in os.listdir(out) if p.endswith(".parquet"))
    stale = tmp_path / "scored.tmp-deadbeef"
    stale.mkdir()
    shutil.copy(os.path.join(out, files[0]), stale / "part.parquet")
    shutil.copy(os.path.join(out, files[0]), os.path.join(out, "dup-" + files[0]))
    os.remove(os.path.join(out, SUCCESS))
    assert len(read_output(out)) > len(rows)
    run_score(config(tiny_model_dir, str(inp), out, metrics=False))
    check_rows(rows, read_output(out))
    assert not stale.exists()
    assert os.path.exists(os.path.join(out, SUCCESS))


@pytest.mark.timeout(180)
def test_score_s3_in_and_out(ray_cluster, s3_server, tiny_model_dir, stockmark_records):
    from giellm_ray.io import resolve_native

    rows = make_rows(stockmark_records, 40)
    fs, _ = resolve_native("s3://giellm-test/x", s3_server)
    write_input(rows, "giellm-test/score-in", filesystem=fs)
    out = "s3://giellm-test/score-out"
    cfg = config(tiny_model_dir, "s3://giellm-test/score-in", out, s3_endpoint_url=s3_server)
    summary = run_score(cfg)
    assert summary["output_rows"] == len(rows)
    check_rows(rows, read_output("giellm-test/score-out", fs))
    assert fs.get_file_info("giellm-test/score-out/_metrics/metrics.json").size > 0
    assert fs.get_file_info(f"giellm-test/score-out/{SUCCESS}").type.name == "File"


def test_schema_is_checked_before_any_work(tmp_path, tiny_model_dir):
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["1"], "sentence": ["x"]}), tmp_path / "bad.parquet")
    cfg = config(tiny_model_dir, str(tmp_path / "bad.parquet"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="need columns 'dataset' and 'text'"):
        run_score(cfg)
    assert not (tmp_path / "out").exists()


def test_a_float_max_new_tokens_column_is_refused_before_any_work(tmp_path, tiny_model_dir):
    import pyarrow as pa

    pq.write_table(pa.table({"dataset": ["SCNM"], "text": ["x"], "max_new_tokens": [3.0]}),
                   tmp_path / "in.parquet")
    cfg = config(tiny_model_dir, str(tmp_path / "in.parquet"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="'max_new_tokens' .* must be an integer type"):
        run_score(cfg)
    assert not (tmp_path / "out").exists()
