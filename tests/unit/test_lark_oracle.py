"""Our byte automaton (the HF engine's constraint) against llguidance running ``row_lark``'s grammar
(vLLM's ``guidance`` backend): the same allowed token set at every step, stepping both through
gold targets and random walks on Stockmark texts, for every shipped task and tasks learned from
the authors' files, with byte-level BPE and real SentencePiece BPE / Unigram tokenizers (byte
fallback, ``▁`` prefix, loaded through ``LlamaTokenizer``).

The two differences ``lark_grammar`` names are switched off here, so equality is exact: the
automaton gets a budget it never reaches and a span cap longer than any text (llguidance has
neither: vLLM cuts a row at ``max_tokens`` and spans are bounded by the text)."""

from __future__ import annotations

import random

import llguidance
import llguidance.hf
import numpy as np
import pytest

from giellm_ray.decoding import build_constraint_factory
from giellm_ray.decoding.lark_grammar import lark_literal, row_lark
from giellm_ray.formats import DEFAULT_REGISTRY, TaskSpec, build_target, learn_task, make_item

BIG = 1 << 20
REL = TaskSpec(
    "REL", ("社会", "技術"), ("人名", "地名"), "関係抽出", relation_labels=("所在地", "社長")
)
TCREE_LEARNED = learn_task(
    DEFAULT_REGISTRY["TCREE"],
    ["トピックニュース"],
    [
        [make_item("社長", "山田", "A社")],
        [make_item("所属", "鈴木", "B軍")],
        [make_item("本拠地", "B軍", "大阪")],
    ],
)
BIO_LEARNED = learn_task(
    TaskSpec("BIO", (), (), "生物抽出"),
    ["動物", "植物"],
    [[make_item("哺乳類", "猫")], [make_item("樹木", "桜")]],
)
TASKS = [*DEFAULT_REGISTRY.values(), TCREE_LEARNED, BIO_LEARNED, REL]


def gold_items(task: TaskSpec, record: dict) -> list[dict]:
    """Items of ``task``'s shape whose spans are the record's entity names."""
    names = [e["name"] for e in record["entities"] if ";" not in e["name"]]
    if task.relation_labels and len(names) >= 2:
        heads = [n for n in names if ":" not in n and n not in task.wl_labels]
        out = [
            make_item(task.relation_labels[i % len(task.relation_labels)], h, names[-1])
            for i, h in enumerate(heads[:2])
        ]
        if task.wl_labels:
            out.append(make_item(task.wl_labels[0], names[0]))
        return out
    if task.wl_labels:
        return [make_item(task.wl_labels[i % len(task.wl_labels)], n) for i, n in enumerate(names)]
    return []


def lark_tokenizer(tok):
    return llguidance.hf.from_tokenizer(tok, n_vocab=len(tok))


def ll_allowed(matcher, vocab: int) -> set[int]:
    bits = np.unpackbits(
        np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little"
    )[:vocab]
    return set(np.flatnonzero(bits).tolist())


class Pair:
    """The automaton and llguidance on one row, stepped together; ``check`` compares them."""

    def __init__(self, factory, ll_tok, tok, text: str, task: TaskSpec) -> None:
        self.c = factory.for_row(text, task, BIG)
        grammar = row_lark(task, text, factory.lead_space)
        self.m = llguidance.LLMatcher(ll_tok, grammar, log_level=0)
        assert not self.m.is_error(), (self.m.get_error(), grammar)
        self.vocab = len(tok)
        self.steps = 0

    def allowed(self) -> set[int]:
        ours = set(self.c.allowed_tokens())
        theirs = ll_allowed(self.m, self.vocab)
        assert ours == theirs, (sorted(ours - theirs)[:10], sorted(theirs - ours)[:10])
        self.steps += 1
        return ours

    def advance(self, token: int) -> None:
        self.c.advance(token)
        assert self.m.consume_token(token), self.m.get_error()


def sp_tokenizer(tmp_path, texts, kind: str):
    """A real SentencePiece model (byte fallback) loaded the way a Llama checkpoint is."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(tmp_path / "tokenizer"),
        vocab_size=3000,
        hard_vocab_limit=False,  # the 100-sentence excerpt (no ../shared) fills ~1.6k pieces
        model_type=kind,
        byte_fallback=True,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    return LlamaTokenizer.from_pretrained(str(tmp_path))


@pytest.fixture(scope="module")
def corpus(stockmark_records):
    recs = [r for r in stockmark_records[:400] if r["entities"]]
    targets = [
        build_target("社会", gold_items(DEFAULT_REGISTRY["SCNM"], r), DEFAULT_REGISTRY["SCNM"])
        for r in recs
    ]
    return recs, [r["text"] for r in recs] + targets


@pytest.fixture(scope="module")
def tokenizers(corpus, tmp_path_factory):
    from tests.unit.test_constraint_grammar import byte_bpe

    _, texts = corpus
    return {
        "byte-bpe": byte_bpe(texts, 3000, use_regex=False),
        "sp-bpe": sp_tokenizer(tmp_path_factory.mktemp("spbpe"), texts, "bpe"),
        "sp-unigram": sp_tokenizer(tmp_path_factory.mktemp("spuni"), texts, "unigram"),
    }


@pytest.mark.parametrize("name", ["byte-bpe", "sp-bpe", "sp-unigram"])
def test_automaton_and_llguidance_allow_the_same_tokens(tokenizers, corpus, name):
    tok = tokenizers[name]
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY, max_span_bytes=BIG)
    assert factory.lead_space == name.startswith("sp")
    ll_tok = lark_tokenizer(tok)
    recs, _ = corpus
    rng = random.Random(0)
    steps = golds = walks = 0
    for ti, task in enumerate(TASKS):
        for rec in recs[ti * 6 : ti * 6 + 6]:
            text = rec["text"]
            tl = task.tl_labels[0]
            target = build_target(tl, gold_items(task, rec), task)
            ids = tok.encode(target, add_special_tokens=False)
            pair = Pair(factory, ll_tok, tok, text, task)
            for t in ids:
                assert t in pair.allowed(), (task.name, target, tok.convert_ids_to_tokens([t]))
                pair.advance(t)
            assert tok.eos_token_id in pair.allowed()
            golds += 1
            steps += pair.steps
            for _ in range(2):  # random walks: mostly uniform, sometimes the longest-token choice
                pair = Pair(factory, ll_tok, tok, text, task)
                for _ in range(48):
                    allowed = sorted(pair.allowed())
                    t = rng.choice(allowed)
                    if t == tok.eos_token_id:
                        break
                    pair.advance(t)
                walks += 1
                steps += pair.steps
    assert golds == 6 * len(TASKS) and walks == 12 * len(TASKS)
    assert steps > 2000


def test_grammar_rejections_and_literal_quoting(tokenizers):
    tok = tokenizers["byte-bpe"]
    ll_tok = lark_tokenizer(tok)
    odd = TaskSpec("ODD", ('a"b', "c\\d"), ("x\ny",), 'in"st', none_marker='無"い')
    g = row_lark(odd, 'q"\\\n;')
    m = llguidance.LLMatcher(ll_tok, g, log_level=0)
    assert not m.is_error(), m.get_error()
    target = '<a"b>in"st:x\ny;q"\\\n'
    for t in tok.encode(target, add_special_tokens=False):
        assert m.consume_token(t), (target, m.get_error())
    assert m.is_accepting()
    assert lark_literal('"') == '"\\""'
    # A text with no usable character leaves only the none marker (or nothing) to write.
    m = llguidance.LLMatcher(ll_tok, row_lark(DEFAULT_REGISTRY["SCNM"], ";;;"), log_level=0)
    for t in tok.encode("<社会>固有表現抽出:無い;", add_special_tokens=False):
        assert m.consume_token(t)
    assert m.is_accepting()
    bad = llguidance.LLMatcher.validate_grammar(
        row_lark(DEFAULT_REGISTRY["SCNM"], "x") + "X: (", ll_tok
    )
    assert bad  # a grammar llguidance cannot compile is reported, not raised
