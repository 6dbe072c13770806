"""HFEngine admits rows by KV bytes: with a small forced budget the padded cache never exceeds it,
fewer rows than ``batch_size`` decode together, and every output equals the unbudgeted run."""

from __future__ import annotations

import random

import pytest

from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt
from giellm_ray.generation.base import GenerationRequest
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.generation.hf import HFEngine, cache_keyword, kv_bytes_per_token


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=tiny_model_dir)
    return load_model(cfg, "cpu"), load_tokenizer(cfg)


@pytest.fixture(scope="module")
def requests_(stockmark_records):
    rng = random.Random(3)
    task = DEFAULT_REGISTRY["SCNM"]
    texts = [r["text"] for r in rng.sample(stockmark_records, 24)]
    return [GenerationRequest(build_prompt(t, task), rng.choice([2, 5, 9, 16])) for t in texts]


def test_kv_bytes_per_token_matches_the_real_cache(tiny):
    import torch
    from transformers import DynamicCache

    model, tok = tiny
    ids = tok(["東京都の会社", "大阪"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        kw = cache_keyword(model)
        out = model(**ids, use_cache=True, **{kw: DynamicCache()})
    layers = getattr(out, kw).layers
    cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)
    positions = ids["input_ids"].numel()
    cfg = model.config  # 2 layers x 4 KV heads x head_dim 16 x (K, V) x 4 B (fp32)
    assert (
        kv_bytes_per_token(model)
        == cache_bytes // positions
        == (cfg.num_hidden_layers * cfg.num_key_value_heads * 16 * 2 * 4)
    )


class CacheWatch:
    """Records the rows and the attention width (cache columns) of every decode forward."""

    def __init__(self, model) -> None:
        self.decode: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, _module, _args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        if ids.shape[1] == 1:
            self.decode.append((ids.shape[0], mask.shape[1]))


def run(model, tok, requests, **cfg):
    engine = HFEngine(model, tok, GenerationConfig(batch_size=16, **cfg))
    watch = CacheWatch(model)
    try:
        results = engine.generate(requests)
    finally:
        watch.handle.remove()
    return engine, results, watch.decode


def test_small_budget_bounds_the_cache_and_keeps_outputs(tiny, requests_):
    model, tok = tiny
    per_token = kv_bytes_per_token(model)
    longest = max(len(tok(r.prompt)["input_ids"]) + r.max_new_tokens for r in requests_)
    cells = 4 * longest  # room for ~4 of the longest rows, 16 allowed by row count
    _, free, free_steps = run(model, tok, requests_)
    engine, bound, bound_steps = run(model, tok, requests_, kv_budget_bytes=cells * per_token)
    assert engine.kv_budget == cells * per_token
    # The budget binds: the unbudgeted run decodes more rows at once than the budget allows.
    assert max(rows * width for rows, width in free_steps) > cells
    assert all(rows * width <= cells for rows, width in bound_steps)
    assert 1 < max(rows for rows, _ in bound_steps) < 16
    assert [(r.text, r.num_generated_tokens, r.finished, r.error) for r in bound] == [
        (r.text, r.num_generated_tokens, r.finished, r.error) for r in free
    ]


def test_a_row_larger_than_the_budget_still_runs_alone(tiny, requests_):
    model, tok = tiny
    _, free, _ = run(model, tok, requests_[:6])
    _, tight, steps = run(model, tok, requests_[:6], kv_budget_bytes=1)
    assert max(rows for rows, _ in steps) == 1
    assert [r.text for r in tight] == [r.text for r in free]


def test_no_budget_on_cpu_by_default(tiny, requests_):
    model, tok = tiny
    engine, _, steps = run(model, tok, requests_)
    assert engine.kv_budget is None  # CPU: rows only (batch_size)
    assert max(rows for rows, _ in steps) == 16


@pytest.mark.gpu
def test_cuda_budget_is_a_share_of_free_memory(tiny_model_dir):
    import torch

    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=tiny_model_dir)
    model, tok = load_model(cfg, "cuda"), load_tokenizer(cfg)
    engine = HFEngine(model, tok, GenerationConfig(kv_memory_fraction=0.5))
    engine.generate([GenerationRequest("東京", 3)])
    free, total = torch.cuda.mem_get_info()
    assert 0 < engine.kv_budget <= 0.5 * total
    assert engine.kv_budget >= 0.4 * free
