"""Metrics: hand-computed counts, summing shards, and the ``giellm eval`` command end to end."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray.cli import main
from giellm_ray.formats import make_item, render
from giellm_ray.metrics import count_rows, merge_counts, ratios

GOLD = "<社会>固有表現抽出:人名;山田:地名;東京:地名;東京"


def test_hand_computed_counts():
    preds = [
        GOLD,  # all right
        "<文芸>固有表現抽出:人名;山田:地名;東京:地名;東京",  # TL wrong, WL right
        "<社会>固有表現抽出:人名;山田:地名;東京",  # WL wrong (multiset), 2 tp 1 fn
        "<社会>固有表現抽出:人名;山田:地名;大阪:地名;東京",  # 2 tp 1 fp 1 fn
        "not a parse",  # parse failure
        None,  # unscored
    ]
    c = count_rows(["SCNM"] * 6, [GOLD] * 6, preds)["SCNM"]
    assert (c["n"], c["tl_correct"], c["wl_correct"], c["all_correct"]) == (6, 3, 2, 1)
    assert (c["parse_failures"], c["unscored"]) == (1, 1)
    assert (c["item_tp"], c["item_fp"], c["item_fn"]) == (3 + 3 + 2 + 2, 1, 1 + 1 + 3 + 3)
    r = ratios(c)
    assert r["tl_accuracy"] == pytest.approx(0.5)
    assert r["parse_failure_rate"] == pytest.approx(1 / 6)
    assert r["item_precision"] == pytest.approx(10 / 11)
    assert r["item_recall"] == pytest.approx(10 / 18)


def test_shards_sum_to_the_whole():
    ds, tg = ["SCNM"] * 4, [GOLD] * 4
    pr = [GOLD, "x", None, "<文芸>固有表現抽出:人名;山田"]
    whole = count_rows(ds, tg, pr)
    parts = merge_counts([count_rows(ds[:1], tg[:1], pr[:1]), count_rows(ds[1:], tg[1:], pr[1:])])
    assert parts == whole


def test_bad_target_and_unknown_dataset_are_counted_not_raised():
    c = count_rows(["SCNM", "NOPE"], ["garbage", GOLD], [GOLD, GOLD])
    assert c["SCNM"]["invalid_targets"] == 1 and c["SCNM"]["n"] == 0
    assert c["NOPE"]["invalid_targets"] == 1


def _write_predictions(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_eval_on_perfect_predictions_is_one_everywhere(stockmark_records, tmp_path, capsys):
    rows = []
    for x in stockmark_records:
        _, t = render(
            {
                "dataset": "SCNM",
                "text": x["text"],
                "tl_label": "技術",
                "items": [make_item(e["type"], e["name"]) for e in x["entities"]],
            }
        )
        rows.append({"id": x["curid"], "dataset": "SCNM", "target": t, "prediction": t})
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    n, half = len(rows), len(rows) * 2 // 5  # two part files of different sizes
    _write_predictions(pred_dir / "part-0.parquet", rows[:half])
    _write_predictions(pred_dir / "part-1.parquet", rows[half:])
    out = tmp_path / "report"
    assert main(["eval", str(pred_dir), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["SCNM"]
    assert m["n"] == n
    for key in ("tl_accuracy", "wl_accuracy", "all_accuracy", "item_f1"):
        assert m[key] == 1.0
    assert m["parse_failure_rate"] == 0.0
    assert (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert f"| SCNM | {n} | 100.00" in (out / "metrics.md").read_text()
    rows_out = pq.read_table(out / "rows.parquet")
    assert rows_out.num_rows == n and all(rows_out.column("all_match").to_pylist())


def test_eval_rows_parquet_explains_errors(tmp_path):
    _write_predictions(
        tmp_path / "p.parquet",
        [
            {"dataset": "SCNM", "target": GOLD, "prediction": "<社会>固有表現抽出:職業;x"},
            {"dataset": "SCNM", "target": GOLD, "prediction": "<社会>固有表現抽出:人名;Pi:Co"},
        ],
    )
    assert main(["eval", str(tmp_path / "p.parquet"), "--output", str(tmp_path / "r")]) == 0
    rows = pq.read_table(tmp_path / "r" / "rows.parquet").to_pylist()
    assert "does not start" in rows[0]["prediction_error"]
    # Same item type as scored files (schema.GROUNDED_ITEM_TYPE); no text column: no offsets.
    assert rows[1]["pred_items"] == [
        {
            "label": "人名",
            "span": "Pi:Co",
            "tail": None,
            "start": None,
            "end": None,
            "tail_start": None,
            "tail_end": None,
        }
    ]
    assert rows[1]["tl_match"] and not rows[1]["wl_match"]


def test_eval_rows_parquet_grounds_items_when_text_is_given(tmp_path):
    _write_predictions(
        tmp_path / "p.parquet",
        [
            {
                "dataset": "SCNM",
                "target": GOLD,
                "prediction": "<社会>固有表現抽出:人名;Pi:Co",
                "text": "歌手のPi:Coが出演した。",
            },
        ],
    )
    assert main(["eval", str(tmp_path / "p.parquet"), "--output", str(tmp_path / "r")]) == 0
    (row,) = pq.read_table(tmp_path / "r" / "rows.parquet").to_pylist()
    item = row["pred_items"][0]
    assert "歌手のPi:Coが出演した。"[item["start"] : item["end"]] == "Pi:Co"


def test_eval_bad_inputs_exit_nonzero_with_a_message(tmp_path, capsys):
    _write_predictions(tmp_path / "nocol.parquet", [{"dataset": "SCNM", "target": GOLD}])
    (tmp_path / "bad.parquet").write_text("this is not parquet")
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "nocol.parquet", "missing column(s) ['prediction']"),
        (tmp_path / "bad.parquet", "cannot read as Parquet"),
        (tmp_path / "missing.parquet", "no such file"),
        (tmp_path / "empty", "no .parquet files"),
    ]
    for path, message in cases:
        assert main(["eval", str(path), "--output", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err


def test_format_validity_counts_parse_labels_and_spans():
    from giellm_ray.formats import DEFAULT_REGISTRY, build_target
    from giellm_ray.metrics import format_validity

    task = DEFAULT_REGISTRY["SCNM"]
    tl, label = task.tl_labels[0], task.wl_labels[0]
    text = "田中太郎は東京に住む。"
    good = build_target(tl, [{"label": label, "span": "田中太郎", "tail": None}], task)
    not_in_text = build_target(tl, [{"label": label, "span": "山田花子", "tail": None}], task)
    texts = [text] * 4
    v = format_validity(texts, [good, not_in_text, "garbage", None], task)
    assert v == {"parse": 0.5, "labels": 0.5, "spans": 0.25}
    assert format_validity([], [], task) == {"parse": 0.0, "labels": 0.0, "spans": 0.0}
