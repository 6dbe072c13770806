"""Extractor on the tiny model: bad rows carry their reason, good rows get every scored column."""

from __future__ import annotations

import pytest

from giellm_ray import schema as S
from giellm_ray.generation.build import hf_extractor
from giellm_ray.generation.config import GenerationConfig


@pytest.fixture(scope="module")
def extractor(tiny_model_dir):
    from giellm_ray.model.loader import ModelConfig

    return hf_extractor(
        ModelConfig(name_or_path=tiny_model_dir),
        GenerationConfig(max_new_tokens=6),
        constrained=False,
    )


def test_bad_rows_get_errors_and_good_rows_are_scored(extractor, stockmark_records):
    text = stockmark_records[0]["text"]
    rows = [
        {S.DATASET: "SCNM", S.TEXT: text},
        {S.DATASET: "SCNM", S.TEXT: None},
        {S.DATASET: "SCNM", S.TEXT: "   "},
        {S.DATASET: "NOPE", S.TEXT: text},
        {S.DATASET: "SCNM", S.TEXT: "長" * 3000},
        {S.DATASET: "SCPOS:N", S.TEXT: "良い", S.PROMPT: "良い<積極><消極>名詞"},
    ]
    out = extractor.extract(rows)
    assert len(out) == len(rows)
    for o in out:
        assert set(o) == {f.name for f in S.SCORED_FIELDS}
    assert out[1][S.ERROR] == "text is null"
    assert out[2][S.ERROR] == "text is empty"
    assert "unknown dataset 'NOPE'" in out[3][S.ERROR]
    assert out[4][S.ERROR].startswith("prompt too long")
    for o in (out[0], out[5]):
        assert isinstance(o[S.PREDICTION], str) and o[S.NUM_GENERATED_TOKENS] == 6
    for o in out[1:5]:
        assert o[S.PREDICTION] is None and o[S.NUM_GENERATED_TOKENS] == 0
    # A random model's output does not parse: the reason is recorded, nothing raised.
    assert out[0][S.ERROR] is None or out[0][S.ERROR].startswith(("parse:", "output truncated"))


def test_empty_batch(extractor):
    assert extractor.extract([]) == []


def test_per_row_max_new_tokens_caps_generation(extractor, stockmark_records):
    text = stockmark_records[1]["text"]
    rows = [
        {S.DATASET: "SCNM", S.TEXT: text, S.MAX_NEW_TOKENS: 2},
        {S.DATASET: "SCNM", S.TEXT: text, S.MAX_NEW_TOKENS: 50},  # above the engine cap (6)
        {S.DATASET: "SCNM", S.TEXT: text, S.MAX_NEW_TOKENS: None},
        {S.DATASET: "SCNM", S.TEXT: text, S.MAX_NEW_TOKENS: 0},
        {S.DATASET: "SCNM", S.TEXT: text, S.MAX_NEW_TOKENS: True},
    ]
    out = extractor.extract(rows)
    assert [o[S.NUM_GENERATED_TOKENS] for o in out] == [2, 6, 6, 0, 0]
    assert out[0][S.PREDICTION] is not None
    for o in out[3:]:
        assert o[S.ERROR].startswith("max_new_tokens must be a positive integer")
