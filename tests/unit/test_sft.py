"""SFT example building: loss only on target tokens, EOS appended, over-long policy, batching."""

from __future__ import annotations

import pytest

from giellm_ray.model.loader import ModelConfig, load_tokenizer
from giellm_ray.model.sft import (
    IGNORE_INDEX,
    build_examples,
    collate,
    length_grouped_batches,
    padding_waste,
)

PROMPT = "松友美佐紀は、日本のバドミントン選手。<社会><文芸>固有表現抽出"
TARGET = "<社会>固有表現抽出:人名;松友美佐紀"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))


def test_labels_mask_prompt_and_end_with_eos(tok):
    (ex,), stats = build_examples([(PROMPT, TARGET)], tok, max_length=512)
    prompt_ids = tok(PROMPT)["input_ids"]
    target_ids = tok(TARGET, add_special_tokens=False)["input_ids"]
    assert ex.input_ids == prompt_ids + target_ids + [tok.eos_token_id]
    assert ex.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert ex.labels[len(prompt_ids) :] == target_ids + [tok.eos_token_id]
    assert (
        tok.decode([t for t in ex.labels if t != IGNORE_INDEX], skip_special_tokens=True) == TARGET
    )
    assert stats.kept == 1 and stats.target_tokens == len(target_ids) + 1


def test_overlong_drop_and_truncate_never_cut_target(tok):
    (ex,), _ = build_examples([(PROMPT, TARGET)], tok, max_length=512)
    n_target = sum(t != IGNORE_INDEX for t in ex.labels)
    limit = len(ex) - 3
    dropped, stats = build_examples([(PROMPT, TARGET)], tok, max_length=limit, overlong="drop")
    assert dropped == [] and stats.dropped_overlong == 1 and stats.kept == 0
    (cut,), stats = build_examples(
        [(PROMPT, TARGET)], tok, max_length=limit, overlong="truncate_prompt_left"
    )
    assert len(cut) == limit and stats.truncated_prompt == 1
    assert cut.input_ids[-n_target:] == ex.input_ids[-n_target:]  # target intact
    assert (
        cut.input_ids[:-n_target] == ex.input_ids[3 : len(ex) - n_target]
    )  # prompt cut on the left
    none, stats = build_examples(
        [(PROMPT, TARGET)], tok, max_length=n_target, overlong="truncate_prompt_left"
    )
    assert none == [] and stats.dropped_target_too_long == 1


def test_rows_without_target_are_skipped_and_counted(tok):
    examples, stats = build_examples([(PROMPT, None), ("", TARGET), (PROMPT, TARGET)], tok, 512)
    assert len(examples) == 1 and stats.rows == 3 and stats.skipped_no_target == 2


def test_collate_pads_right_and_masks_padding(tok):
    examples, _ = build_examples([(PROMPT, TARGET), ("短い<社会>固有表現抽出", "<社会>")], tok, 512)
    batch = collate(examples, tok.pad_token_id)
    short = len(examples[1])
    assert batch["input_ids"].shape == (2, len(examples[0]))
    assert batch["attention_mask"][1].sum().item() == short
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == tok.pad_token_id).all()


def test_length_grouping_cuts_padding_and_covers_every_row_once():
    lengths = [((i * 37) % 200) + 5 for i in range(400)]
    grouped = length_grouped_batches(lengths, 8, seed=1)
    plain = length_grouped_batches(lengths, 8, seed=1, group_factor=0)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(400))
    assert padding_waste(grouped, lengths) < padding_waste(plain, lengths) / 3
    assert length_grouped_batches(lengths, 8, seed=1) == grouped  # deterministic for resume
    assert length_grouped_batches(lengths, 8, seed=2) != grouped
