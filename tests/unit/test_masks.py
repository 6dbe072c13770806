"""The two mask modes (``vllm.mask_mode``: ``cache`` = MaskCache, ``scatter`` = scatter_mask) mask
logits identically: on random allowed sets (empty ones, ids outside the vocabulary, duplicates,
unconstrained rows) and on the sets the real format constraint produces while it decodes."""

from __future__ import annotations

import random

import pytest
import torch

from giellm_ray.generation.masks import MaskCache, scatter_mask

EOS = 2


def both_modes(logits: torch.Tensor, allowed: list) -> tuple[torch.Tensor, torch.Tensor]:
    cached = MaskCache(fallback_id=EOS).apply(logits.clone(), allowed)
    scattered = scatter_mask(logits.clone(), allowed, fallback_id=EOS)
    return cached, scattered


def random_allowed(rng: random.Random, vocab: int):
    kind = rng.random()
    if kind < 0.2:
        return None  # unconstrained row
    if kind < 0.35:
        return ()  # nothing allowed: the row must be able to end (EOS), not pick token 0
    ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
    if rng.random() < 0.4:  # ids the vocabulary does not hold (a tokenizer bigger than the head)
        ids += [vocab + rng.randrange(5), -1 - rng.randrange(3)][: rng.randint(1, 2)]
    if rng.random() < 0.3:
        ids += ids[:2]  # duplicates
    rng.shuffle(ids)
    return tuple(ids)


def test_random_trials_agree():
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    differ = 0
    for _ in range(300):
        vocab = rng.randint(8, 64)
        n_rows = rng.randint(1, 6)
        allowed = [random_allowed(rng, vocab) for _ in range(n_rows)]
        logits = torch.randn(n_rows, vocab, generator=gen)
        cached, scattered = both_modes(logits, allowed)
        differ += not torch.equal(cached, scattered)
        assert torch.equal(cached.argmax(-1), scattered.argmax(-1))
    assert differ == 0


@pytest.mark.parametrize("allowed", [(), (99,), (-1, 40)])
def test_nothing_in_range_leaves_only_eos(allowed):
    logits = torch.zeros(2, 32)
    logits[0, 0] = 5.0  # token 0 is the best pick if everything were masked the same way
    for out in both_modes(logits, [allowed, None]):
        assert out[0].isfinite().nonzero().flatten().tolist() == [EOS]
        assert out[0].argmax().item() == EOS
        assert out[1].isfinite().all()  # the unconstrained row is untouched


def test_last_token_stays_masked_with_an_out_of_range_id():
    logits = torch.zeros(1, 16)
    logits[0, 15] = 9.0
    for out in both_modes(logits, [(3, 16, 40)]):
        assert out[0].isfinite().nonzero().flatten().tolist() == [3]


def test_real_constraint_sets_agree(tiny_model_dir, stockmark_records):
    """Decode with each row's real constraint, comparing the two masks at every step."""
    from giellm_ray.decoding import build_constraint_factory
    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.model.loader import ModelConfig, load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=tiny_model_dir))
    factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
    vocab = len(tok)
    gen = torch.Generator().manual_seed(1)
    rows = [
        (r["text"], DEFAULT_REGISTRY[ds])
        for r, ds in zip(stockmark_records[:8], ["SCNM", "SCPOS:RW"] * 4, strict=True)
    ]
    constraints = [factory.for_row(text, task, 40) for text, task in rows]
    cache = MaskCache(fallback_id=tok.eos_token_id)
    steps = 0
    while not all(c.is_done() for c in constraints) and steps < 40:
        allowed = [None if c.is_done() else c.allowed_tokens() for c in constraints]
        logits = torch.randn(len(constraints), vocab, generator=gen)
        cached = cache.apply(logits.clone(), allowed)
        scattered = scatter_mask(logits.clone(), allowed, fallback_id=tok.eos_token_id)
        assert torch.equal(cached, scattered)
        for c, a, t in zip(constraints, allowed, cached.argmax(-1).tolist(), strict=True):
            if a is not None and t != tok.eos_token_id:
                c.advance(t)
        steps += 1
    assert steps > 5
