"""Unified format: render/parse round trips on real data, tricky spans, malformed outputs."""

from __future__ import annotations

import pytest

from giellm_ray.formats import (
    DEFAULT_REGISTRY,
    TaskRegistry,
    build_prompt,
    cp932_key,
    ground_items,
    learn_task,
    make_item,
    parse,
    render,
)

SCNM = DEFAULT_REGISTRY["SCNM"]


def scnm_record(x: dict, tl: str = "社会") -> dict:
    items = [make_item(e["type"], e["name"]) for e in x["entities"]]
    return {"dataset": "SCNM", "text": x["text"], "tl_label": tl, "items": items}


def test_published_example_renders_exactly():
    rec = {
        "dataset": "SCNM",
        "text": "SPRiNGSと最も仲の良いライバルグループ。",
        "tl_label": "社会",
        "items": [make_item("その他の組織名", "SPRiNGS")],
    }
    prompt, target = render(rec)
    assert (
        prompt
        == "SPRiNGSと最も仲の良いライバルグループ。<社会><文芸><学問><技術><自然>固有表現抽出"
    )
    assert target == "<社会>固有表現抽出:その他の組織名;SPRiNGS"


def test_all_stockmark_sentences_round_trip(stockmark_records):
    assert len(stockmark_records) in (4821, 100)  # all of ../shared, or the shipped excerpt
    failures = []
    for i, x in enumerate(stockmark_records):
        rec = scnm_record(x, tl=SCNM.tl_labels[i % 5])
        _, target = render(rec)
        got = parse(target, SCNM)
        if not (got.ok and got.tl_label == rec["tl_label"] and got.items == rec["items"]):
            failures.append((x["curid"], target, got))
    assert failures == []


# Sentences written for this project (not in the Stockmark file): separators inside spans,
# duplicates, no entity.
UNSEEN = [
    (
        "Pi:Coの新作はJ:COM春日部で先行上映された。",
        [("製品名", "Pi:Co"), ("施設名", "J:COM春日部")],
    ),
    (
        "土屋アンナ<愛愛傘>氣志團がA;Bフェスに出演した。",
        [("その他の組織名", "土屋アンナ<愛愛傘>氣志團"), ("イベント名", "A;Bフェス")],
    ),
    ("東京と大阪と東京を結ぶ便。", [("地名", "東京"), ("地名", "大阪"), ("地名", "東京")]),
    ("今日は晴れです。", []),
    (
        "Crypto: How the Code Rebels Beat the Government は書籍である。",
        [("製品名", "Crypto: How the Code Rebels Beat the Government")],
    ),
    ("<社会>という名の店", [("施設名", "<社会>という名の店")]),
]


@pytest.mark.parametrize("text,ents", UNSEEN)
def test_unseen_tricky_sentences_round_trip(text, ents):
    rec = {
        "dataset": "SCNM",
        "text": text,
        "tl_label": "文芸",
        "items": [make_item(t, n) for t, n in ents],
    }
    _, target = render(rec)
    got = parse(target, SCNM)
    assert got.ok, got.error
    assert (got.tl_label, got.items) == ("文芸", rec["items"])
    grounded = ground_items(text, got.items)
    for g in grounded:
        assert text[g["start"] : g["end"]] == g["span"]


def test_no_entity_uses_none_marker_and_parses_empty():
    rec = {"dataset": "SCNM", "text": "何もない。", "tl_label": "自然", "items": []}
    _, target = render(rec)
    assert target == "<自然>固有表現抽出:無い;"
    assert parse(target, SCNM).items == []
    assert parse("<自然>固有表現抽出", SCNM).ok


def test_scpos_items_deduplicated_and_cp932_sorted():
    items = [make_item("ポジティブ", w) for w in ["良い", "値段", "良い", "アイテム", "安い"]]
    rec = {"dataset": "SCPOS:N&Adj", "text": "x", "tl_label": "積極", "items": items}
    _, target = render(rec)
    words = [it["span"] for it in parse(target, DEFAULT_REGISTRY["SCPOS:N&Adj"]).items]
    assert words == sorted(set(words), key=cp932_key)
    assert len(words) == 4


def test_relation_items_round_trip():
    task = learn_task(
        DEFAULT_REGISTRY["TCREE"],
        ["Peachy"],
        [[make_item("所属", "山田", "A:B社"), make_item("受賞", "新人賞")]],
    )
    reg = DEFAULT_REGISTRY.with_task(task)
    rec = {
        "dataset": "TCREE",
        "text": "山田はA:B社に所属し新人賞を受賞。",
        "tl_label": "Peachy",
        "items": [make_item("所属", "山田", "A:B社"), make_item("受賞", "新人賞")],
    }
    _, target = render(rec, reg)
    assert target == "<Peachy>関係抽出:山田;所属;A:B社:受賞;新人賞"
    assert parse(target, task).items == rec["items"]
    assert TaskRegistry.from_dict(reg.to_dict())["TCREE"] == task


@pytest.mark.parametrize(
    "output,reason",
    [
        ("", "does not start"),
        ("社会>固有表現抽出", "does not start"),
        ("<政治>固有表現抽出:人名;A", "unknown TL label"),
        ("<社会>名詞:人名;A", "missing instruction word"),
        ("<社会>固有表現抽出:職業;医者", "does not start with"),
        ("<社会>固有表現抽出:人名;", "empty span"),
        ("<社会>固有表現抽出:無い;:人名;A", "mixed"),
    ],
)
def test_malformed_outputs_are_errors_not_exceptions(output, reason):
    got = parse(output, SCNM)
    assert not got.ok
    assert reason in got.error


def test_render_rejects_contract_breaks():
    with pytest.raises(ValueError, match="TL label"):
        render({"dataset": "SCNM", "text": "a", "tl_label": "政治", "items": []})
    with pytest.raises(ValueError, match="not in"):
        render(
            {"dataset": "SCNM", "text": "a", "tl_label": "社会", "items": [make_item("職業", "a")]}
        )
    with pytest.raises(ValueError, match="empty"):
        render({"dataset": "SCNM", "text": " ", "tl_label": "社会", "items": []})
    with pytest.raises(KeyError, match="known datasets"):
        render({"dataset": "NOPE", "text": "a", "tl_label": "社会", "items": []})


def test_grounding_marks_absent_spans_none_and_repeats_successive():
    g = ground_items(
        "東京から東京へ",
        [make_item("地名", "東京"), make_item("地名", "東京"), make_item("地名", "京都")],
    )
    assert [(x["start"], x["end"]) for x in g] == [(0, 2), (4, 6), (None, None)]


def test_prompt_lists_every_tl_label_then_iw():
    task = DEFAULT_REGISTRY["SCPOS:Adj"]
    assert build_prompt("良い。", task) == "良い。<積極><消極>形容詞"
