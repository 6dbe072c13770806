"""Confidence scores on hand-built token sequences: the TL label's and each item's character range
in the output, the tokens overlapping it (checked against the tokenizer's own offset mapping) for a
byte-level BPE tokenizer whose tokens split multi-byte characters and for a SentencePiece one with
byte fallback, the exact fallback path, and the joint probability in [0, 1]."""

from __future__ import annotations

import io
import math
import random

import pytest

from giellm_ray.formats import DEFAULT_REGISTRY, parse
from giellm_ray.formats.tasks import TaskSpec
from giellm_ray.generation.confidence import (
    TokenPieces,
    joint_probability,
    output_ranges,
    range_scores,
    score_output,
)

SCNM = DEFAULT_REGISTRY["SCNM"]
# Spans holding the separators, a rare kanji pair (split into bytes by a small vocabulary) and Latin.
OUTPUT = "<社会>固有表現抽出:人名;鬱蒼:地名;J:COM春日部:法人名;Pi:Co"


def test_output_ranges_follow_the_parsed_items():
    parsed = parse(OUTPUT, SCNM)
    assert parsed.ok and len(parsed.items) == 3
    tl, ranges = output_ranges(OUTPUT, parsed.tl_label, parsed.items, SCNM)
    assert OUTPUT[slice(*tl)] == "<社会>"
    assert [OUTPUT[slice(*r)] for r in ranges] == [
        ":人名;鬱蒼",
        ":地名;J:COM春日部",
        ":法人名;Pi:Co",
    ]


def test_output_ranges_of_relation_items():
    task = TaskSpec(
        name="REL",
        tl_labels=("スポーツ",),
        wl_labels=("人名",),
        instruction="関係抽出",
        relation_labels=("所属",),
    )
    out = "<スポーツ>関係抽出:山田;所属;巨人:人名;田中"
    parsed = parse(out, task)
    _, ranges = output_ranges(out, parsed.tl_label, parsed.items, task)
    assert [out[slice(*r)] for r in ranges] == [":山田;所属;巨人", ":人名;田中"]


def test_output_ranges_unplaceable_items_are_none():
    items = [{"label": "人名", "span": "鈴木", "tail": None}]
    tl, ranges = output_ranges("<社会>固有表現抽出:人名;佐藤", "社会", items, SCNM)
    assert tl == (0, 4) and ranges == [None]
    assert output_ranges("<自然>固有表現抽出", "社会", [], SCNM) == (None, [])


def oracle(tok, text: str, logprobs: list[float], ranges) -> list[float]:
    """The joint probability over the tokens the tokenizer's offset mapping says overlap."""
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [
        math.exp(sum(lp for (s, e), lp in zip(offsets, logprobs, strict=True) if s < b and e > a))
        for a, b in ranges
    ]


def check_against_offsets(tok, pieces: TokenPieces, text: str):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    rng = random.Random(len(ids))
    logprobs = [-rng.uniform(0.0, 0.3) for _ in ids]
    parsed = parse(text, SCNM)
    tl, ranges = output_ranges(text, parsed.tl_label, parsed.items, SCNM)
    got = range_scores(pieces, ids, logprobs, text, [tl, *ranges])
    want = oracle(tok, text, logprobs, [tl, *ranges])
    assert got == pytest.approx(want, rel=1e-12)
    assert all(0.0 < g <= 1.0 for g in got)
    return ids, logprobs, got


@pytest.fixture(scope="module")
def bpe(tiny_model_dir):
    from giellm_ray.model.loader import ModelConfig, load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))


@pytest.fixture(scope="module")
def sentencepiece_tok(tmp_path_factory):
    """A Llama (SentencePiece BPE, byte fallback) tokenizer trained here on a few lines."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import LlamaTokenizer

    lines = [
        "レッドフォックス株式会社は、東京都千代田区に本社を置く企業である。",
        "松友美佐紀は、日本のバドミントン選手。",
        "<社会>固有表現抽出:法人名;レッドフォックス株式会社",
        ":人名;松友美佐紀:地名;東京都",
    ] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=400,
        byte_fallback=True,
        model_type="bpe",
        character_coverage=0.98,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    out = tmp_path_factory.mktemp("sp-tokenizer")
    (out / "tokenizer.model").write_bytes(model.getvalue())
    return LlamaTokenizer.from_pretrained(str(out))


def test_byte_level_tokens_splitting_a_character(bpe):
    ids = bpe(OUTPUT, add_special_tokens=False)["input_ids"]
    # The case this covers: some token holds only part of a character's UTF-8 bytes.
    assert any("\ufffd" in bpe.decode([t]) for t in ids)
    pieces = TokenPieces(bpe)
    check_against_offsets(bpe, pieces, OUTPUT)
    assert pieces.mode == "bytelevel"


def test_sentencepiece_with_byte_fallback(sentencepiece_tok):
    tok = sentencepiece_tok
    ids = tok(OUTPUT, add_special_tokens=False)["input_ids"]
    pieces_text = tok.convert_ids_to_tokens(ids)
    assert any(p.startswith("<0x") for p in pieces_text)  # 鬱蒼 is spelled in bytes
    assert pieces_text[0].startswith("▁")  # the leading space the decoder strips
    pieces = TokenPieces(tok)
    check_against_offsets(tok, pieces, OUTPUT)
    assert pieces.mode == "sentencepiece"


class ExactOnly(TokenPieces):
    MODES = ()


@pytest.mark.parametrize("which", ["bpe", "sentencepiece_tok"])
def test_exact_fallback_agrees_with_the_fast_path(which, request):
    tok = request.getfixturevalue(which)
    ids, logprobs, fast = check_against_offsets(tok, TokenPieces(tok), OUTPUT)
    parsed = parse(OUTPUT, SCNM)
    tl, ranges = output_ranges(OUTPUT, parsed.tl_label, parsed.items, SCNM)
    exact = range_scores(ExactOnly(tok), ids, logprobs, OUTPUT, [tl, *ranges])
    assert exact == pytest.approx(fast, rel=1e-12)


def test_tokens_that_do_not_spell_the_text_give_no_scores(bpe):
    ids = bpe("<社会>固有表現抽出:人名;鈴木", add_special_tokens=False)["input_ids"]
    parsed = parse("<社会>固有表現抽出:人名;佐藤", SCNM)
    tl, items = score_output(
        bpe,
        ids,
        [-0.1] * len(ids),
        "<社会>固有表現抽出:人名;佐藤",
        parsed.tl_label,
        parsed.items,
        SCNM,
    )
    assert tl is None and items == [None]


def test_no_logprobs_no_scores(bpe):
    parsed = parse(OUTPUT, SCNM)
    assert score_output(bpe, None, None, OUTPUT, parsed.tl_label, parsed.items, SCNM) == (
        None,
        [None, None, None],
    )


def test_forced_tokens_leave_the_product_unchanged_and_scores_are_probabilities():
    assert joint_probability([0.0, math.log(0.5), 0.0, math.log(0.5)]) == pytest.approx(0.25)
    assert joint_probability([0.0, 0.0]) == 1.0
    assert joint_probability([1e-9]) == 1.0  # rounding above 0 is clipped
    assert joint_probability([-800.0]) == 0.0
    assert joint_probability([]) is None
