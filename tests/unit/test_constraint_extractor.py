"""Constrained decoding through the real Extractor on a random-init tiny Llama (the worst case):
every output parses, every label is in the inventory, every span occurs in its text."""

from __future__ import annotations

import pytest

from giellm_ray.formats import DEFAULT_REGISTRY
from giellm_ray.generation.build import hf_extractor
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.metrics import format_validity
from giellm_ray.model.loader import ModelConfig

SCNM = DEFAULT_REGISTRY["SCNM"]
GEN = GenerationConfig(batch_size=64, max_new_tokens=48)  # below SCNM's 128: the budget must bind


def rates(rows: list[dict], outs: list[dict]) -> dict[str, float]:
    """Shares of outputs that parse, whose labels are all known, whose spans are all in the text
    (an output the Extractor flagged with an error counts as not parsed)."""
    return format_validity(
        [r["text"] for r in rows], [None if o["error"] else o["prediction"] for o in outs], SCNM
    )


@pytest.fixture(scope="module")
def rows(stockmark_records):
    return [{"text": r["text"], "dataset": "SCNM"} for r in stockmark_records[:80]]


def test_random_init_model_constrained_outputs_are_all_valid(tiny_model_dir, rows):
    ex = hf_extractor(ModelConfig(name_or_path=tiny_model_dir), GEN, device="cpu")
    assert ex.constrained
    outs = ex.extract(rows)
    assert rates(rows, outs) == {"parse": 1.0, "labels": 1.0, "spans": 1.0}
    assert all(o["error"] is None for o in outs)
    assert all(it["start"] is not None for o in outs for it in o["pred_items"])
    assert all(o["num_generated_tokens"] <= 48 for o in outs)  # the budget closed every output


def test_unconstrained_random_init_model_mostly_fails(tiny_model_dir, rows):
    # The comparison the constraint is for: the same model without it writes garbage.
    ex = hf_extractor(
        ModelConfig(name_or_path=tiny_model_dir), GEN, constrained=False, device="cpu"
    )
    outs = ex.extract(rows[:64])
    assert rates(rows[:64], outs)["parse"] < 0.5
