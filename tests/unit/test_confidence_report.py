"""Confidence metrics (precision at thresholds, calibration, ECE) with hand-computed numbers; item
marks and the WL confusion; the error report's sample (bounded, paged, the same however the input
is split); the synthetic-sample caveat; outputs without scores (older runs) still evaluated."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray import schema
from giellm_ray.formats import DEFAULT_REGISTRY
from giellm_ray.metrics.analysis import NONE_LABEL, Analysis, match_items
from giellm_ray.metrics.confidence import (
    add_scores,
    bin_of,
    confidence,
    empty_score_counts,
    merge_score_counts,
)
from giellm_ray.metrics.evaluate import evaluate
from giellm_ray.metrics.report import build_metrics, chart_title, markdown_table, render_chart
from giellm_ray.sample import sample_path

# (score, right): the example every number below is computed from by hand.
ANSWERS = [(0.95, True), (0.92, False), (0.75, True), (0.55, False), (0.15, False), (None, True)]


def _counts(answers):
    c = empty_score_counts()
    add_scores(c, answers, None)
    return c


def test_bins_edges():
    assert [bin_of(x) for x in (0.0, 0.0999, 0.1, 0.3, 0.7, 0.95, 1.0)] == [0, 0, 1, 3, 7, 9, 9]


def test_precision_at_thresholds_and_recall_by_hand():
    conf = confidence(_counts(ANSWERS)["item"], gold_items=4)
    assert conf["scored"] == 5 and conf["unscored"] == 1
    at = {e["threshold"]: e for e in conf["precision_at"]}
    # >= 0.0: 5 scored, 2 right; >= 0.5: 4 kept, 2 right; >= 0.6: 0.75, 0.92, 0.95 -> 2 of 3;
    # >= 0.8 and >= 0.9: 0.92, 0.95 -> 1 of 2.
    assert (at[0.0]["kept"], at[0.0]["precision"], at[0.0]["recall"]) == (5, 0.4, 0.5)
    assert (at[0.5]["kept"], at[0.5]["precision"]) == (4, 0.5)
    assert at[0.6]["kept"] == 3 and at[0.6]["precision"] == pytest.approx(2 / 3)
    assert (at[0.9]["kept"], at[0.9]["precision"], at[0.9]["recall"]) == (2, 0.5, 0.25)
    assert at[0.9]["coverage"] == pytest.approx(0.4)


def test_calibration_table_and_ece_by_hand():
    conf = confidence(_counts(ANSWERS)["item"])
    cal = {b["low"]: b for b in conf["calibration"]}
    assert cal[0.9]["n"] == 2 and cal[0.9]["mean_score"] == pytest.approx(0.935)
    assert cal[0.9]["accuracy"] == 0.5 and cal[0.7]["accuracy"] == 1.0
    assert cal[0.2]["n"] == 0 and cal[0.2]["accuracy"] is None
    # 2/5*|0.5-0.935| + 1/5*|1-0.75| + 1/5*|0-0.55| + 1/5*|0-0.15| = 0.174+0.05+0.11+0.03
    assert conf["ece"] == pytest.approx(0.364)


def test_score_counts_sum_across_shards():
    whole = {"SCNM": _counts(ANSWERS)}
    parts = [{"SCNM": _counts(ANSWERS[:2])}, {"SCNM": _counts(ANSWERS[2:])}]
    merged = merge_score_counts(parts)
    assert merged["SCNM"]["item"]["n"] == whole["SCNM"]["item"]["n"]
    assert merged["SCNM"]["item"]["correct"] == whole["SCNM"]["item"]["correct"]
    assert confidence(merged["SCNM"]["item"])["ece"] == pytest.approx(0.364)


def test_match_items_marks_and_confusion_pairs():
    gold = [
        {"label": "人名", "span": "A"},
        {"label": "地名", "span": "B"},
        {"label": "法人名", "span": "C"},
    ]
    pred = [
        {"label": "人名", "span": "A"},
        {"label": "法人名", "span": "B"},
        {"label": "製品名", "span": "D"},
    ]
    gmarks, pmarks, pairs = match_items(gold, pred)
    assert gmarks == ["ok", "mislabelled", "missing"]
    assert pmarks == ["ok", "mislabelled", "extra"]
    assert sorted(pairs) == sorted(
        [("人名", "人名"), ("地名", "法人名"), (NONE_LABEL, "製品名"), ("法人名", NONE_LABEL)]
    )


TEXT = "山田太郎は東京の株式会社ABCに勤めている。"


def _scored_rows(n_wrong: int, scores: bool = True) -> list[dict]:
    """One right row and ``n_wrong`` rows predicting 地名 for the 法人名 and missing 人名."""
    target = "<社会>固有表現抽出:人名;山田太郎:地名;東京:法人名;株式会社ABC"
    wrong = "<技術>固有表現抽出:地名;東京:地名;株式会社ABC"
    rows = [
        {
            "id": "ok-0",
            "dataset": "SCNM",
            "text": TEXT,
            "target": target,
            "prediction": target,
            "pred_items": [
                {"label": "人名", "span": "山田太郎", "score": 0.9},
                {"label": "地名", "span": "東京", "score": 0.8},
                {"label": "法人名", "span": "株式会社ABC", "score": 0.7},
            ],
            "tl_score": 0.95,
        }
    ]
    for i in range(n_wrong):
        rows.append(
            {
                "id": f"bad-{i}",
                "dataset": "SCNM",
                "text": TEXT,
                "target": target,
                "prediction": wrong,
                "pred_items": [
                    {"label": "地名", "span": "東京", "score": 0.6},
                    {"label": "地名", "span": "株式会社ABC", "score": 0.3},
                ],
                "tl_score": 0.4,
            }
        )
    if not scores:
        for r in rows:
            del r["tl_score"]
            r["pred_items"] = [
                {k: v for k, v in it.items() if k != "score"} for it in r["pred_items"]
            ]
    return rows


def test_eval_writes_confidence_reliability_and_paged_report(tmp_path):
    src = tmp_path / "pred.parquet"
    pq.write_table(pa.Table.from_pylist(_scored_rows(130)), src)
    out = tmp_path / "report"
    metrics = evaluate(str(src), str(out), sample_size=120)
    conf = metrics["SCNM"]["confidence"]
    # items: 3 right (0.9, 0.8, 0.7) + 130 x (0.6 right, 0.3 wrong); TL: 0.95 right, 0.4 wrong.
    item_at = {e["threshold"]: e for e in conf["item"]["precision_at"]}
    assert conf["item"]["scored"] == 263 and item_at[0.5]["kept"] == 133
    assert item_at[0.5]["precision"] == 1.0 and item_at[0.0]["precision"] == pytest.approx(
        133 / 263
    )
    assert item_at[0.7]["kept"] == 3 and item_at[0.7]["recall"] == pytest.approx(3 / (131 * 3))
    tl_cal = {b["low"]: b for b in conf["tl"]["calibration"]}
    assert (tl_cal[0.9]["n"], tl_cal[0.9]["accuracy"]) == (1, 1.0)
    assert (tl_cal[0.4]["n"], tl_cal[0.4]["accuracy"]) == (130, 0.0)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["SCNM"]["confidence"]["item"]["scored"] == 263
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "metrics.md").read_text()
    assert "precision at score thresholds" in md and "calibration" in md
    # Report: 130 wrong rows, 120 sampled, 50 a page -> 3 pages; confusions and marks present.
    index = (out / "report.html").read_text()
    assert "131 rows, 130 wrong" in index and "120 of them shown" in index
    pages = sorted(p.name for p in out.glob("report-*"))
    assert pages == ["report-SCNM-1.html", "report-SCNM-2.html", "report-SCNM-3.html"]
    page = (out / "report-SCNM-3.html").read_text()
    assert page.count('class="row"') == 20
    assert "mislabelled" in page and "missing" in page and "0.30" in page
    assert "社会" in index and "技術" in index and NONE_LABEL in index


def test_wl_and_tl_confusion_counts():
    a = Analysis(sample_size=5)
    for r in _scored_rows(4):
        a.add(
            r["dataset"],
            r["target"],
            r["prediction"],
            row_id=r["id"],
            text=r["text"],
            scored_items=r["pred_items"],
            tl_score=r["tl_score"],
        )
    assert a.tl_confusion["SCNM"] == {"社会": {"社会": 1, "技術": 4}}
    assert a.wl_confusion["SCNM"] == {
        "人名": {"人名": 1, NONE_LABEL: 4},
        "地名": {"地名": 5},
        "法人名": {"法人名": 1, "地名": 4},
    }
    assert a.wrong["SCNM"] == 4


def test_error_sample_is_the_same_however_the_rows_are_split():
    rows = _scored_rows(40)

    def fold(part):
        a = Analysis(sample_size=7)
        for r in part:
            a.add(
                r["dataset"],
                r["target"],
                r["prediction"],
                row_id=r["id"],
                text=r["text"],
                scored_items=r["pred_items"],
                tl_score=r["tl_score"],
            )
        return a

    whole = fold(rows)
    merged = fold(rows[:13]).merge(fold(rows[13:][::-1]))
    assert [r["id"] for r in merged.sample("SCNM")] == [r["id"] for r in whole.sample("SCNM")]
    assert len(whole.sample("SCNM")) == 7 and merged.counts == whole.counts
    assert merged.wl_confusion == whole.wl_confusion


def test_rows_with_the_same_id_scored_twice_are_both_sampled():
    # One id per row and adapter (giellm mre scores every adapter's copy of the test rows in one
    # job): equal sample ranks must not make the sampler compare the rows themselves.
    rows = _scored_rows(6)
    a = Analysis(sample_size=20)
    b = Analysis(sample_size=20)
    for target in (a, b):
        # Each row twice in a row, the copy with another answer (as another adapter's would be):
        # equal ranks meet with different records.
        other = "<技術>固有表現抽出:地名;東京"
        for r in [c for x in rows for c in (x, {**x, "prediction": other, "pred_items": []})]:
            target.add(
                r["dataset"],
                r["target"],
                r["prediction"],
                row_id=r["id"],
                text=r["text"],
                scored_items=r["pred_items"],
                tl_score=r["tl_score"],
            )
    ids = [r["id"] for r in a.sample("SCNM")]
    assert len(ids) == a.wrong["SCNM"] > 0  # every wrong row: both copies of the wrong ones
    assert {ids.count(i) for i in ids if i.startswith("bad-")} == {2}
    assert len(a.merge(b).sample("SCNM")) == min(20, 2 * len(ids))


def test_outputs_without_scores_still_evaluate(tmp_path):
    src = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist(_scored_rows(3, scores=False)), src)
    metrics = evaluate(str(src), str(tmp_path / "r"))
    assert "confidence" not in metrics["SCNM"] and metrics["SCNM"]["n"] == 4
    assert not (tmp_path / "r" / "reliability.png").exists()
    assert "no confidence scores" in (tmp_path / "r" / "report.html").read_text()
    page = (tmp_path / "r" / "report-SCNM-1.html").read_text()
    assert "· –" in page  # the score column shows a dash, not a made-up number


def test_synthetic_sample_is_flagged_in_table_and_chart_title(tmp_path):
    test = pq.read_table(sample_path("test")).slice(0, 30)
    scored = test.append_column(schema.PREDICTION, test.column(schema.TARGET))
    pq.write_table(scored, tmp_path / "s.parquet")
    metrics = evaluate(str(tmp_path / "s.parquet"), str(tmp_path / "r"))
    assert all(m["synthetic_rows"] == m["n"] for m in metrics.values())
    md = (tmp_path / "r" / "metrics.md").read_text()
    assert "All 30 scored rows are the shipped synthetic sample" in md
    assert "not comparable with the paper" in md and "(synthetic)" in md
    assert "synthetic sample" in (tmp_path / "r" / "report.html").read_text()
    # The same rows under other ids are not the sample: no caveat.
    other = scored.set_column(0, schema.ID, pa.array([f"x{i}" for i in range(30)]))
    pq.write_table(other, tmp_path / "o.parquet")
    plain = evaluate(str(tmp_path / "o.parquet"), str(tmp_path / "r2"))
    assert "synthetic" not in markdown_table(plain)


def test_chart_title_says_synthetic():
    counts = {
        "SCNM": {
            "n": 2,
            "tl_correct": 2,
            "wl_correct": 2,
            "all_correct": 2,
            "parse_failures": 0,
            "unscored": 0,
            "invalid_targets": 0,
            "item_tp": 2,
            "item_fp": 0,
            "item_fn": 0,
        }
    }
    synthetic = build_metrics(counts, synthetic={"SCNM": 2})
    assert "NOT COMPARABLE WITH THE PAPER" in chart_title(synthetic, "demo")
    assert chart_title(build_metrics(counts, synthetic={"SCNM": 0}), "demo") == "demo"
    assert render_chart(synthetic, "demo")[:4] == b"\x89PNG"


def test_score_drivers_metrics_step_writes_the_same_report(tmp_path):
    """``giellm score``'s metrics step (driver._write_report) over scored files, without Ray."""
    import pyarrow.fs as pafs

    from giellm_ray.score.driver import _write_report

    files = []
    for k, part in enumerate((_scored_rows(5)[:3], _scored_rows(5)[3:])):
        files.append(str(tmp_path / f"part-{k}.parquet"))
        pq.write_table(pa.Table.from_pylist(part), files[-1])
    metrics, names = _write_report(
        pafs.LocalFileSystem(), files, str(tmp_path / "_metrics"), DEFAULT_REGISTRY
    )
    assert metrics["SCNM"]["n"] == 6 and metrics["SCNM"]["confidence"]["tl"]["scored"] == 6
    assert sorted(names) == sorted(
        f"_metrics/{n}"
        for n in (
            "metrics.json",
            "metrics.md",
            "metrics.png",
            "reliability.png",
            "report.html",
            "report-SCNM-1.html",
        )
    )
    assert all((tmp_path / n).is_file() for n in names)
