"""SCNM from Stockmark's ner.json: real data round trip, missing/unknown labels, bad files."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from giellm_ray.cli import main
from giellm_ray.data.scnm import build_scnm, read_tl_labels
from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt, parse

SCNM = DEFAULT_REGISTRY["SCNM"]


@pytest.fixture
def small_ner(tmp_path):
    records = [
        {
            "curid": "1",
            "text": "J:COM春日部は埼玉県にある。",
            "entities": [
                {"name": "J:COM春日部", "span": [0, 8], "type": "法人名"},
                {"name": "埼玉県", "span": [9, 12], "type": "地名"},
                {"name": "埼玉県", "span": [9, 12], "type": "地名"},
            ],
        },
        {"curid": "2", "text": "今日は晴れ。", "entities": []},
        {
            "curid": "3",
            "text": "謎の組織。",
            "entities": [{"name": "謎", "span": [0, 1], "type": "秘密結社"}],
        },
        {"curid": "4", "text": "", "entities": []},
        {"curid": "5", "text": "ラベルの無い文。", "entities": []},
        {"curid": "1", "text": "同じ記事の二文目。", "entities": []},
    ]
    path = tmp_path / "ner.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def test_real_stockmark_all_rows_render_and_parse_back(stockmark_records, tmp_path):
    ner = tmp_path / "ner.json"
    ner.write_text(json.dumps(stockmark_records, ensure_ascii=False), encoding="utf-8")
    labels = tmp_path / "labels.csv"
    curids = sorted({r["curid"] for r in stockmark_records})
    tl = ["社会", "文芸", "学問", "技術", "自然"]
    labels.write_text(
        "curid,label\n" + "".join(f"{c},{tl[i % 5]}\n" for i, c in enumerate(curids)),
        encoding="utf-8",
    )
    summary = build_scnm(str(ner), str(tmp_path / "scnm.parquet"), str(labels))
    n = len(stockmark_records)  # 4,821 with ../shared, the excerpt's 100 without
    assert summary["rows"] == n and summary["labelled"] == n and summary["errors"] == {}
    rows = pq.read_table(tmp_path / "scnm.parquet").to_pylist()
    assert len({r["id"] for r in rows}) == n
    for rec, row in zip(stockmark_records, rows, strict=True):
        assert row["prompt"] == build_prompt(rec["text"], SCNM)
        parsed = parse(row["target"], SCNM)
        assert parsed.ok, (row["target"], parsed.error)
        assert parsed.tl_label == row["tl_label"]
        assert [(i["label"], i["span"]) for i in parsed.items] == [
            (e["type"], e["name"]) for e in rec["entities"]
        ]
        assert parsed.items == row["items"]


def test_rows_without_labels_are_recorded_not_invented(small_ner, tmp_path, capsys):
    out = tmp_path / "scnm.parquet"
    assert main(["data", "scnm", "--ner-json", str(small_ner), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    assert "have no TL label" in err and "--tl-labels" in err and "curid,label" in err
    rows = pq.read_table(out).to_pylist()
    assert all(r["target"] is None and r["tl_label"] is None for r in rows)
    assert rows[1]["error"] == "no TL label for curid 2"
    assert rows[1]["prompt"] == build_prompt("今日は晴れ。", SCNM)  # prompt still usable
    assert [r["id"] for r in rows] == ["scnm-1", "scnm-2", "scnm-3", "scnm-4", "scnm-5", "scnm-1-1"]


def test_labels_jsonl_unknown_label_unknown_type_empty_text(small_ner, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "\n".join(
            json.dumps(x, ensure_ascii=False)
            for x in [
                {"curid": "1", "label": "技術"},
                {"curid": 2, "label": "スポーツ"},
                {"curid": "3", "label": "社会"},
                {"curid": "4", "label": "社会"},
                {"curid": "99", "label": "社会"},
            ]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "scnm.parquet"
    summary = build_scnm(str(small_ner), str(out), str(labels))
    rows = pq.read_table(out).to_pylist()
    assert rows[0]["target"] == "<技術>固有表現抽出:法人名;J:COM春日部:地名;埼玉県:地名;埼玉県"
    assert "スポーツ" in rows[1]["error"] and rows[1]["target"] is None
    assert "unknown entity type(s) ['秘密結社']" in rows[2]["error"]
    assert rows[3]["error"] == "text is empty or missing"
    assert rows[4]["error"] == "no TL label for curid 5"
    assert rows[5]["target"] == "<技術>固有表現抽出:無い;"  # same article, same label
    assert summary["missing_tl_label"] == 1 and summary["labels_for_unknown_curids"] == 1


def test_bad_files_are_clear_errors(small_ner, tmp_path, capsys):
    out = str(tmp_path / "o.parquet")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"curid": "1", "text": "x"', encoding="utf-8")
    assert main(["data", "scnm", "--ner-json", str(bad_json), "--output", out]) == 2
    assert "invalid JSON at line 1" in capsys.readouterr().err
    obj = tmp_path / "obj.json"
    obj.write_text('{"curid": "1"}', encoding="utf-8")
    assert main(["data", "scnm", "--ner-json", str(obj), "--output", out]) == 2
    assert "expected a JSON array" in capsys.readouterr().err
    cp932 = tmp_path / "sjis.json"
    cp932.write_bytes('[{"curid": "1", "text": "日本語"}]'.encode("cp932"))
    assert main(["data", "scnm", "--ner-json", str(cp932), "--output", out]) == 2
    assert "is not UTF-8" in capsys.readouterr().err
    labels = tmp_path / "labels.csv"
    labels.write_text("id,category\n1,社会\n", encoding="utf-8")
    assert (
        main(
            [
                "data",
                "scnm",
                "--ner-json",
                str(small_ner),
                "--tl-labels",
                str(labels),
                "--output",
                out,
            ]
        )
        == 2
    )
    assert "missing column(s) ['curid', 'label']" in capsys.readouterr().err


def test_conflicting_labels_are_an_error(tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("curid,label\n1,社会\n1,文芸\n2,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3: curid 1 labelled both"):
        read_tl_labels(str(labels))
    labels.write_text("curid,label\n1,社会\n2,\n", encoding="utf-8")
    assert read_tl_labels(str(labels)) == {"1": "社会"}
    bad = tmp_path / "l.jsonl"
    bad.write_text('{"curid": "1", "label": "社会"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_tl_labels(str(bad))
