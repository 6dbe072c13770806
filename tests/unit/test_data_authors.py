"""The authors' released files: CSV/JSON layouts, inventories learned from data, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from giellm_ray.cli import main
from giellm_ray.data.authors import read_authors, split_source_target
from giellm_ray.formats import TaskRegistry, build_prompt, parse

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


def test_split_picks_the_separator_before_the_target():
    line = "a,,b<x><y>IW,,<x>IW:L;c,,<d"
    assert split_source_target(line) == ("a,,b<x><y>IW", "<x>IW:L;c,,<d")
    assert split_source_target("no separator here") is None


def test_one_column_csv_with_separators_in_spans(tmp_path):
    out = tmp_path / "scnm.parquet"
    summary = read_authors(str(ASSETS / "authors_scnm.csv"), str(out))
    assert summary["rows"] == {"SCNM": 5} and summary["error_rows"] == 0
    rows = pq.read_table(out).to_pylist()
    assert rows[1]["text"] == "J:COM春日部は、埼玉県春日部市にある。"
    assert [(i["label"], i["span"]) for i in rows[1]["items"]] == [
        ("法人名", "J:COM春日部"),
        ("地名", "埼玉県春日部市"),
    ]
    assert rows[2]["text"] == "土屋アンナ<愛愛傘>氣志團の曲。"  # '<…>' inside the text survives
    assert rows[2]["items"][0]["span"] == "土屋アンナ<愛愛傘>氣志團"
    assert rows[3]["items"] == [] and rows[3]["tl_label"] == "自然"
    registry = TaskRegistry.from_dict(json.loads((tmp_path / "tasks.json").read_text()))
    task = registry["SCNM"]
    assert task.instruction == "固有表現抽出" and task.none_marker == "無い"
    for row in rows:  # prompts rebuild exactly from text + learned task
        assert build_prompt(row["text"], task) == row["prompt"]
        assert parse(row["target"], task).items == row["items"]


def test_json_array_infers_dataset_and_keeps_data_order(tmp_path):
    out = tmp_path / "adj"
    summary = read_authors(str(ASSETS / "authors_scpos.json"), str(out))
    assert summary["rows"] == {"SCPOS:Adj": 3}
    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert rows[1]["target"] == "<消極>形容詞:ネガティブ;暗い:中立;にくい"  # verbatim
    assert [i["span"] for i in rows[1]["items"]] == ["暗い", "にくい"]
    assert (out / "tasks.json").exists()


def test_two_column_csv_with_header(tmp_path):
    out = tmp_path / "o.parquet"
    assert read_authors(str(ASSETS / "authors_twocol.csv"), str(out))["rows"] == {"SCNM": 2}
    rows = pq.read_table(out).to_pylist()
    assert rows[1]["tl_label"] == "社会" and len(rows[1]["items"]) == 2


def test_unknown_instruction_word_and_new_labels_are_learned(tmp_path, capsys):
    src = tmp_path / "new.jsonl"
    recs = [
        {"source": "猫が好き。<動物><植物>生物抽出", "target": "<動物>生物抽出:哺乳類;猫"},
        {"source": "桜が咲く。<動物><植物>生物抽出", "target": "<植物>生物抽出:樹木;桜"},
        {"source": "犬と梅。<動物><植物>生物抽出", "target": "<動物>生物抽出:哺乳類;犬:樹木;梅"},
        {"source": "鳥。<動物><植物>生物抽出", "target": "<菌類>生物抽出:哺乳類;鳥"},
    ]
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs), encoding="utf-8")
    out = str(tmp_path / "o.parquet")
    assert main(["data", "authors", "--input", str(src), "--output", out]) == 2
    assert "cannot infer the dataset from instruction word '生物抽出'" in capsys.readouterr().err
    assert main(["data", "authors", "--input", str(src), "--output", out, "--dataset", "BIO"]) == 0
    task = TaskRegistry.from_dict(json.loads((tmp_path / "tasks.json").read_text()))["BIO"]
    assert task.tl_labels == ("動物", "植物") and set(task.wl_labels) == {"哺乳類", "樹木"}
    rows = pq.read_table(out).to_pylist()
    assert [(i["label"], i["span"]) for i in rows[2]["items"]] == [("哺乳類", "犬"), ("樹木", "梅")]
    assert "unknown TL label '菌類'" in rows[3]["error"]  # per-row, the file still converts


def test_mixed_instruction_words_become_several_datasets(tmp_path):
    src = tmp_path / "mmm.json"
    recs = [
        {"input": "良い。<積極><消極>形容詞", "output": "<積極>形容詞:ポジティブ;良い"},
        {
            "input": "山田。<社会><文芸><学問><技術><自然>固有表現抽出",
            "output": "<社会>固有表現抽出:人名;山田",
        },
    ]
    src.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    summary = read_authors(str(src), str(tmp_path / "o.parquet"))
    assert summary["rows"] == {"SCPOS:Adj": 1, "SCNM": 1} and summary["error_rows"] == 0
    assert (
        main(
            [
                "data",
                "authors",
                "--input",
                str(src),
                "--output",
                str(tmp_path / "p.parquet"),
                "--dataset",
                "SCNM",
            ]
        )
        == 2
    )


def test_files_that_do_not_fit(tmp_path, capsys):
    out = str(tmp_path / "o.parquet")

    def run(path):
        rc = main(["data", "authors", "--input", str(path), "--output", out])
        return rc, capsys.readouterr().err

    rc, err = run(ASSETS / "authors_invalid.json")
    assert rc == 2 and "invalid JSON at line 2" in err
    rc, err = run(ASSETS / "authors_bad.csv")
    assert rc == 2 and "does not fit; expected one `SOURCE,,TARGET` column" in err
    assert "found 'another line with no target'" in err
    wrong_keys = tmp_path / "k.jsonl"
    wrong_keys.write_text('{"question": "a", "answer": "b"}\n', encoding="utf-8")
    rc, err = run(wrong_keys)
    assert rc == 2 and "has keys ['question', 'answer']; expected one of the pairs" in err
    bad_jsonl = tmp_path / "b.jsonl"
    bad_jsonl.write_text('{"input": "a<x>IW", "output": "<x>IW"}\n{oops\n', encoding="utf-8")
    rc, err = run(bad_jsonl)
    assert rc == 2 and "record 2: line 2: invalid JSON" in err
    sjis = tmp_path / "s.csv"
    sjis.write_bytes("良い。<積極><消極>形容詞,,<積極>形容詞:ポジティブ;良い\n".encode("cp932"))
    rc, err = run(sjis)
    assert rc == 2 and "is not UTF-8" in err
    no_tail = tmp_path / "t.json"
    no_tail.write_text('[{"input": "plain text", "output": "<x>IW"}]', encoding="utf-8")
    rc, err = run(no_tail)
    assert rc == 2 and "expected a prompt ending with <label>" in err


def test_tcree_relation_labels_learned(tmp_path):
    tl = "<トピックニュース><Sports Watch>関係抽出"
    recs = [
        {"input": f"山田はA社の社長。{tl}", "output": "<トピックニュース>関係抽出:山田;社長;A社"},
        {
            "input": f"鈴木はB軍に所属。{tl}",
            "output": "<Sports Watch>関係抽出:鈴木;所属;B軍:B軍;本拠地;大阪",
        },
    ]
    src = tmp_path / "tcree.json"
    src.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    summary = read_authors(str(src), str(tmp_path / "o.parquet"))
    assert summary["rows"] == {"TCREE": 2} and summary["error_rows"] == 0
    task = TaskRegistry.from_dict(json.loads((tmp_path / "tasks.json").read_text()))["TCREE"]
    assert task.tl_labels == ("トピックニュース", "Sports Watch")
    assert set(task.relation_labels) == {"社長", "所属", "本拠地"}
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert rows[0]["items"] == [{"label": "社長", "span": "山田", "tail": "A社"}]
    assert [(i["span"], i["label"], i["tail"]) for i in rows[1]["items"]] == [
        ("鈴木", "所属", "B軍"),
        ("B軍", "本拠地", "大阪"),
    ]
