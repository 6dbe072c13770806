"""HFEngine on the tiny model: batched continuous batching equals one-row greedy decoding
token for token, EOS and max_new_tokens stop rows, constraints mask logits, errors stay per row."""

from __future__ import annotations

import random

import pytest

from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt
from giellm_ray.generation.base import GenerationRequest
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.generation.hf import HFEngine


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=tiny_model_dir)
    return load_model(cfg, "cpu"), load_tokenizer(cfg)


@pytest.fixture(scope="module")
def prompts(stockmark_records):
    task = DEFAULT_REGISTRY["SCNM"]
    rng = random.Random(0)
    texts = [r["text"] for r in rng.sample(stockmark_records, 16)]
    return [build_prompt(t, task) for t in texts]


def reference(model, tok, prompt: str, max_new: int, eos: int | None = None) -> list[int]:
    """One row through ``model.generate`` (greedy), the way a naive loop would do it."""
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(
        **ids,
        max_new_tokens=max_new,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos if eos is not None else tok.eos_token_id,
    )
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_batched_equals_one_row_greedy(tiny, prompts):
    model, tok = tiny
    rng = random.Random(1)
    reqs = [GenerationRequest(p, rng.randint(1, 12)) for p in prompts[:12]]
    # A small batch forces many evictions, prefills and cache merges.
    engine = HFEngine(model, tok, GenerationConfig(batch_size=4))
    results = engine.generate(reqs)
    assert engine.stats.refills > 3
    for req, res in zip(reqs, results, strict=True):
        ref = reference(model, tok, req.prompt, req.max_new_tokens)
        assert res.error is None
        assert res.num_generated_tokens == len(ref) == req.max_new_tokens
        assert res.text == tok.decode(ref, skip_special_tokens=True)
        assert res.finished is False  # hit the bound, no EOS


def test_eos_stops_row(tiny, prompts):
    model, tok = tiny
    free = reference(model, tok, prompts[0], 6)
    stop = free[3]  # pretend the 4th greedy token is EOS
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, stop]
    try:
        engine = HFEngine(model, tok, GenerationConfig(batch_size=4))
        res = engine.generate([GenerationRequest(p, 6) for p in prompts[:6]])
    finally:
        model.generation_config.eos_token_id = old
    first = free.index(stop)
    assert res[0].finished is True
    assert res[0].num_generated_tokens == first + 1  # EOS counted, not shown
    assert res[0].text == tok.decode(free[:first], skip_special_tokens=True)
    for p, r in zip(prompts[1:6], res[1:], strict=True):
        ref = reference(model, tok, p, 6, eos=stop)
        assert r.num_generated_tokens == len(ref)


def test_max_new_tokens_bound_and_global_cap(tiny, prompts):
    model, tok = tiny
    engine = HFEngine(model, tok, GenerationConfig(batch_size=8, max_new_tokens=3))
    res = engine.generate(
        [GenerationRequest(p, n) for p, n in zip(prompts[:4], [1, 2, 10, 0], strict=True)]
    )
    assert [r.num_generated_tokens for r in res] == [1, 2, 3, 0]
    assert res[3].text == "" and res[3].error is None


def test_refill_keeps_finished_slot_waste_low(tiny, prompts):
    model, tok = tiny
    rng = random.Random(2)
    lengths = [rng.choice([1, 2, 4, 8, 24]) for _ in prompts]
    reqs = [GenerationRequest(p, n) for p, n in zip(prompts, lengths, strict=True)]
    refill = HFEngine(model, tok, GenerationConfig(batch_size=6))
    static = HFEngine(model, tok, GenerationConfig(batch_size=6, refill_threshold=1.0))
    a, b = refill.generate(reqs), static.generate(reqs)
    assert [r.text for r in a] == [r.text for r in b]
    assert refill.stats.waste_fraction < 0.15
    assert static.stats.waste_fraction > 0.3  # static batches decode finished rows
    assert 0.0 <= refill.stats.padding_fraction < 0.2
    assert refill.stats.generated_tokens == sum(lengths)
    assert refill.stats.to_dict()["rows"] == len(reqs)


class ForcedSequence:
    """A RowConstraint that allows exactly one token per step, then says done."""

    def __init__(self, seq: list[int]) -> None:
        self.seq, self.pos, self.seen = seq, 0, []

    def allowed_tokens(self):
        return [self.seq[self.pos]] if self.pos < len(self.seq) else None

    def advance(self, token_id: int) -> None:
        self.seen.append(token_id)
        self.pos += 1

    def is_done(self) -> bool:
        return self.pos >= len(self.seq)


def test_constraint_masks_and_finishes_row(tiny, prompts):
    model, tok = tiny
    seq = tok("<社会>固有表現抽出", add_special_tokens=False)["input_ids"]
    c = ForcedSequence(seq)
    reqs = [GenerationRequest(prompts[0], 40, c), GenerationRequest(prompts[1], 5)]
    res = HFEngine(model, tok, GenerationConfig(batch_size=4)).generate(reqs)
    assert c.seen == seq
    assert res[0].text == "<社会>固有表現抽出" and res[0].finished
    # The EOS the done constraint forces counts, though HF never runs the model for it: the
    # token-count contract vLLM (which must sample it) follows too (generation/base.py).
    assert res[0].num_generated_tokens == len(seq) + 1
    assert res[1].num_generated_tokens == 5  # the unconstrained neighbour is unaffected
    assert res[1].text == tok.decode(reference(model, tok, prompts[1], 5), skip_special_tokens=True)


def test_constraint_done_without_room_for_eos_is_cut(tiny, prompts):
    model, tok = tiny
    seq = tok("<社会>固有表現抽出", add_special_tokens=False)["input_ids"]
    res = HFEngine(model, tok).generate(
        [GenerationRequest(prompts[0], len(seq), ForcedSequence(seq))]
    )
    # The output is complete but its EOS has no slot left: cut by the budget, as vLLM reports it.
    assert res[0].num_generated_tokens == len(seq) and not res[0].finished


class FailingModel:
    """Wraps the real model; fails every forward pass whose batch holds a poisoned token."""

    def __init__(self, model, poison: int) -> None:
        self.model, self.poison = model, poison
        self.config, self.generation_config = model.config, model.generation_config
        self.forward = model.forward  # the engine reads the KV-cache keyword off its signature

    def parameters(self):
        return self.model.parameters()

    def __call__(self, input_ids, **kwargs):
        if (input_ids == self.poison).any():
            raise RuntimeError("simulated device error")
        return self.model(input_ids=input_ids, **kwargs)


def test_engine_error_retries_rows_alone(tiny, prompts):
    model, tok = tiny
    poison = tok("☃", add_special_tokens=False)["input_ids"][0]
    reqs = [GenerationRequest(p, 4) for p in prompts[:5]]
    reqs.insert(2, GenerationRequest("☃" + prompts[5], 4))
    engine = HFEngine(FailingModel(model, poison), tok, GenerationConfig(batch_size=8))
    res = engine.generate(reqs)
    assert res[2].error and "simulated device error" in res[2].error
    good = [r for i, r in enumerate(res) if i != 2]
    assert all(r.error is None and r.num_generated_tokens == 4 for r in good)
    assert engine.stats.errors == 1


def test_cache_keyword_follows_the_forward_signature(tiny):
    """The KV cache's name comes from ``forward``: a wrong one would be swallowed by its
    ``**kwargs`` and the engine would decode without a cache (transformers renamed it in 5.24)."""
    import inspect

    from giellm_ray.generation.hf import cache_keyword

    model, _ = tiny
    params = inspect.signature(model.forward).parameters
    assert cache_keyword(model) in params

    class Old:
        def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs): ...

    class New:
        def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs): ...

    class Neither:
        def forward(self, input_ids=None, **kwargs): ...

    assert cache_keyword(Old()) == "past_key_values"
    assert cache_keyword(New()) == "cache"
    with pytest.raises(TypeError, match="neither `cache` nor `past_key_values`"):
        cache_keyword(Neither())
