"""The format constraint without a model: gold outputs are accepted token by token (completeness),
random walks over the allowed tokens always parse with real labels and text spans (soundness),
for byte-level BPE (tokens straddling spans and separators, Japanese characters split into bytes),
SentencePiece-style tokenizers, relation items, the none marker and tight token budgets."""

from __future__ import annotations

import random

import pytest

from giellm_ray.decoding import build_constraint_factory
from giellm_ray.decoding.vocab import check_token_bytes
from giellm_ray.formats import DEFAULT_REGISTRY, TaskSpec, build_target, make_item, parse

SCNM = DEFAULT_REGISTRY["SCNM"]
REL = TaskSpec(
    "REL", ("社会", "技術"), ("人名", "地名"), "関係抽出", relation_labels=("所在地", "社長")
)
REL_ROWS = [
    (
        "トヨタ自動車の本社は愛知県にある。社長は豊田章男。",
        [
            make_item("所在地", "トヨタ自動車", "愛知県"),
            make_item("社長", "トヨタ自動車", "豊田章男"),
            make_item("人名", "豊田章男"),
        ],
    ),
    ("人名と地名:東京;大阪のJ:COM。", [make_item("地名", "東京"), make_item("地名", "J:COM")]),
]


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def byte_bpe(texts: list[str], vocab_size: int, use_regex: bool):
    """Byte-level BPE; ``use_regex=False`` lets merges cross punctuation (``京:人名;`` tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<pad>", "<unk>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return _wrap(tok)


def sentencepiece_like(texts: list[str], kind: str):
    from tokenizers import SentencePieceBPETokenizer, SentencePieceUnigramTokenizer

    if kind == "unigram":
        sp = SentencePieceUnigramTokenizer()
        sp.train_from_iterator(
            texts,
            vocab_size=5000,
            special_tokens=["<pad>", "<unk>", "</s>"],
            unk_token="<unk>",
            show_progress=False,
        )
    else:
        sp = SentencePieceBPETokenizer(unk_token="<unk>")
        sp.train_from_iterator(
            texts, vocab_size=5000, special_tokens=["<pad>", "<unk>", "</s>"], show_progress=False
        )
    return _wrap(sp._tokenizer)


def gold_rows(records, n):
    rows = []
    for r in records[:n]:
        items = [make_item(e["type"], e["name"]) for e in r["entities"]]
        rows.append((r["text"], build_target("社会", items, SCNM)))
    return rows


def force(factory, text, task, target, tok, budget=256):
    """Feed ``target``'s tokens; fail on the first token the constraint forbids."""
    c = factory.for_row(text, task, budget)
    ids = tok.encode(target, add_special_tokens=False)
    if tok.unk_token_id in ids:  # a character the vocabulary cannot spell
        return False
    for i, t in enumerate(ids):
        assert t in c.allowed_tokens(), (target, i, tok.convert_ids_to_tokens([t]))
        c.advance(t)
    assert tok.eos_token_id in c.allowed_tokens()
    return True


def random_walk(factory, text, task, tok, rng, budget):
    c = factory.for_row(text, task, budget)
    ids: list[int] = []
    while len(ids) < budget and not c.is_done():
        allowed = c.allowed_tokens()
        t = rng.choice(allowed) if rng.random() < 0.8 else allowed[-1]
        if t == tok.eos_token_id:
            return ids, True
        c.advance(t)
        ids.append(t)
    return ids, c.is_done()


def check_output(out: str, text: str, task) -> None:
    p = parse(out, task)
    assert p.ok, (out, p.error)
    assert p.tl_label in task.tl_labels
    for it in p.items:
        assert it["span"] and it["span"] in text, (out, it)
        if it["tail"] is None:
            assert it["label"] in task.wl_labels
        else:
            assert it["label"] in task.relation_labels and it["tail"] and it["tail"] in text


@pytest.fixture(scope="module")
def tokenizers(stockmark_records):
    targets = [t for _, t in gold_rows(stockmark_records, 400)]
    targets += [build_target("社会", items, REL) for _, items in REL_ROWS]
    texts = [r["text"] for r in stockmark_records[:400]] + targets + [t for t, _ in REL_ROWS]
    return {
        "bpe-straddle": byte_bpe(texts, 3000, use_regex=False),
        "bpe-bytes": byte_bpe(texts, 300, use_regex=True),  # Japanese chars stay split in bytes
        "sp-unigram": sentencepiece_like(texts, "unigram"),
        "sp-bpe": sentencepiece_like(texts, "bpe"),
    }


@pytest.mark.parametrize("name", ["bpe-straddle", "bpe-bytes", "sp-unigram", "sp-bpe"])
def test_gold_accepted_and_random_walks_parse(tokenizers, stockmark_records, name):
    tok = tokenizers[name]
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    rows = gold_rows(stockmark_records, 120)
    assert not check_token_bytes(tok, factory.table, [t for _, t in rows[:50]])
    assert sum(force(factory, text, SCNM, target, tok) for text, target in rows) > 60
    rng = random.Random(0)
    for text, _ in rows:
        ids, finished = random_walk(factory, text, SCNM, tok, rng, 64)
        assert finished
        check_output(tok.decode(ids), text, SCNM)


def test_byte_level_tokens_straddle_spans_and_separators(tokenizers, stockmark_records):
    tok = tokenizers["bpe-straddle"]
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    table = factory.table
    straddling = 0
    for text, target in gold_rows(stockmark_records, 120):
        ids = tok.encode(target, add_special_tokens=False)
        for t in ids[1:]:
            data = table[t]  # e.g. b":地名;日本" or "製紙:施設名;釧路工場": span bytes + separator
            if (
                data.rsplit(b";", 1)[-1]
                if b";" in data
                else data.split(b":", 1)[0]
                if b":" in data
                else b""
            ):
                straddling += 1
        force(factory, text, SCNM, target, tok)
    # the vocabulary really has span+separator tokens, and they passed (4,821 rows: >20; the
    # 100-row excerpt trains fewer merges: 16)
    assert straddling > 10


def test_japanese_characters_split_across_tokens(tokenizers, stockmark_records):
    tok = tokenizers["bpe-bytes"]
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    partial = [i for i, b in enumerate(factory.table) if b and b.decode("utf-8", "ignore") == ""]
    assert partial  # lone UTF-8 lead/continuation bytes are tokens
    rng = random.Random(1)
    for text, target in gold_rows(stockmark_records, 60):
        force(factory, text, SCNM, target, tok)
        ids, _ = random_walk(factory, text, SCNM, tok, rng, 96)
        out = bytes(b"".join(factory.table[i] for i in ids))
        out.decode("utf-8")  # strict: the constraint never stops inside a character
        check_output(tok.decode(ids), text, SCNM)


@pytest.mark.parametrize("name", ["bpe-straddle", "sp-unigram"])
def test_relation_items(tokenizers, name):
    tok = tokenizers[name]
    factory = build_constraint_factory(tok)
    rng = random.Random(2)
    for text, items in REL_ROWS:
        force(factory, text, REL, build_target("社会", items, REL), tok)
        for _ in range(40):
            ids, finished = random_walk(factory, text, REL, tok, rng, 48)
            assert finished
            check_output(tok.decode(ids), text, REL)


def test_head_equal_to_a_label_is_not_allowed(tokenizers):
    # ":人名;所在地;東京" would parse as a 人名 item with span "所在地;東京": the head must differ.
    tok = tokenizers["bpe-straddle"]
    factory = build_constraint_factory(tok)
    c = factory.for_row("人名と所在地:東京", REL, 64)
    for t in tok.encode("<社会>関係抽出:人名;所在地", add_special_tokens=False):
        c.advance(t)
    allowed = [factory.table[t] for t in c.allowed_tokens() if t != tok.eos_token_id]
    assert allowed and not any(b.startswith(b";") for b in allowed)  # span 所在地 may go on
    c = factory.for_row("人名と所在地:東京", REL.replace(wl_labels=("地名",)), 64)
    for t in tok.encode("<社会>関係抽出:人名;所在地", add_special_tokens=False):
        c.advance(t)
    assert any(factory.table[t].startswith(b";") for t in c.allowed_tokens() if factory.table[t])


def test_none_marker_and_empty_items(tokenizers):
    tok = tokenizers["bpe-straddle"]
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    text = "今日は晴れ。"
    force(factory, text, SCNM, "<社会>固有表現抽出:無い;", tok)
    c = factory.for_row(text, SCNM, 64)
    for t in tok.encode("<社会>固有表現抽出", add_special_tokens=False):
        c.advance(t)
    assert tok.eos_token_id not in c.allowed_tokens()  # SCNM writes the marker, not nothing
    for t in tok.encode(":無い;", add_special_tokens=False):
        c.advance(t)
    assert c.is_done() and list(c.allowed_tokens()) == [tok.eos_token_id]
    # A task without a marker may stop right after the instruction word.
    plain = SCNM.replace(name="PLAIN", none_marker=None)
    c = factory.for_row(text, plain, 64)
    for t in tok.encode("<社会>固有表現抽出", add_special_tokens=False):
        c.advance(t)
    assert tok.eos_token_id in c.allowed_tokens()
    assert all(
        not (factory.table[t] or b"").startswith(":無い".encode())
        for t in c.allowed_tokens()
        if t != tok.eos_token_id
    )


@pytest.mark.parametrize("slack", [0, 3, 12])
def test_tight_budget_always_finishes(tokenizers, stockmark_records, slack):
    tok = tokenizers["bpe-bytes"]  # small tokens: the budget binds hardest
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    rng = random.Random(slack)
    for text, _ in gold_rows(stockmark_records, 80):
        budget = factory.for_row(text, SCNM).tokens_needed() + slack
        ids, finished = random_walk(factory, text, SCNM, tok, rng, budget)
        assert finished and len(ids) < budget
        check_output(tok.decode(ids), text, SCNM)


@pytest.mark.parametrize("name", ["bpe-straddle", "bpe-bytes", "sp-unigram"])
def test_span_walk_matches_generic_trie_walk(tokenizers, stockmark_records, name):
    # Span states take a fast path (text substrings along the trie, plus a walk of the ':' / ';'
    # tokens); without the separator trie every state takes the generic walk. Same answers.
    tok = tokenizers[name]
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    texts = [(r["text"], SCNM) for r in stockmark_records[:25]] + [(t, REL) for t, _ in REL_ROWS]
    texts.append(("東京;大阪:J:COM。" * 3, SCNM))
    rng = random.Random(3)
    spans = 0
    for text, task in texts:
        for _ in range(3):
            fast, slow = factory.for_row(text, task, 48), factory.for_row(text, task, 48)
            slow.sep_trie, slow._shared = None, {}
            while not fast.is_done():
                spans += fast.grammar.span_state(fast.state) is not None
                allowed = fast.allowed_tokens()
                assert allowed == slow.allowed_tokens() and fast.is_done() == slow.is_done()
                nexts = {
                    t: st if isinstance(st, frozenset) else fast.grammar.span_next(*st[1:])[0]
                    for t, st in fast._entry().nexts.items()
                }
                assert nexts == slow._entry().nexts
                t = rng.choice(allowed)
                if t == tok.eos_token_id:
                    break
                fast.advance(t)
                slow.advance(t)
    assert spans > 100
