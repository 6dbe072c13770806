"""Confidence scores end to end on the HF engine: token log-probabilities equal a teacher-forced
forward pass (unconstrained) and are 0 where the constraint forces the token; the Extractor's item
scores and TL scores are probabilities; a memorized item on a briefly trained tiny model scores
above the items the constraint forces out of the random-init one."""

from __future__ import annotations

import pytest
import torch

from giellm_ray import schema as S
from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt, build_target
from giellm_ray.generation.base import GenerationRequest
from giellm_ray.generation.config import GenerationConfig
from giellm_ray.generation.hf import HFEngine
from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer

ROWS = [  # (dataset, text, TL label, items)
    (
        "SCNM",
        "レッドフォックス株式会社は、東京都千代田区に本社を置くITサービス企業である。",
        "技術",
        [("法人名", "レッドフォックス株式会社"), ("地名", "東京都千代田区")],
    ),
    (
        "SCNM",
        "松友美佐紀は、日本のバドミントン選手。",
        "社会",
        [("人名", "松友美佐紀"), ("地名", "日本")],
    ),
    (
        "SCNM",
        "山田太郎は大阪大学を卒業し、トヨタ自動車に入社した。",
        "社会",
        [("人名", "山田太郎"), ("施設名", "大阪大学"), ("法人名", "トヨタ自動車")],
    ),
    (
        "SCPOS:RW",
        "この商品はとても良いです。値段も安くて満足しています。",
        "積極",
        [("ポジティブ", "良い"), ("ポジティブ", "満足")],
    ),
]


def rows_in():
    return [{S.TEXT: text, S.DATASET: ds} for ds, text, _, _ in ROWS]


def targets():
    out = []
    for ds, _, tl, items in ROWS:
        out.append(
            build_target(
                tl,
                [{"label": lab, "span": sp, "tail": None} for lab, sp in items],
                DEFAULT_REGISTRY[ds],
            )
        )
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs ~30x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    cfg = ModelConfig(name_or_path=tiny_model_dir)
    return cfg, load_model(cfg, "cpu"), load_tokenizer(cfg)


def make_extractor(cfg, model, tok, **gen):
    """The one place these tests build an Extractor."""
    from giellm_ray.generation.build import hf_extractor

    return hf_extractor(cfg, GenerationConfig(**gen), model=model, tokenizer=tok)


def test_logprobs_equal_a_teacher_forced_forward(tiny):
    _, model, tok = tiny
    prompts = [build_prompt(text, DEFAULT_REGISTRY[ds]) for ds, text, _, _ in ROWS]
    reqs = [
        GenerationRequest(p, n, scores=True) for p, n in zip(prompts, [3, 9, 5, 12], strict=True)
    ]
    res = HFEngine(model, tok, GenerationConfig(batch_size=2)).generate(reqs)
    plain = HFEngine(model, tok, GenerationConfig(batch_size=2)).generate(
        [GenerationRequest(r.prompt, r.max_new_tokens) for r in reqs]
    )
    for req, r, p in zip(reqs, res, plain, strict=True):
        assert r.text == p.text and p.token_ids is None and p.token_logprobs is None
        assert len(r.token_ids) == len(r.token_logprobs) == req.max_new_tokens
        prompt_ids = tok(req.prompt)["input_ids"]
        ids = torch.tensor([prompt_ids + r.token_ids])
        with torch.inference_mode():
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        n = len(prompt_ids)
        want = [logp[n - 1 + k, t].item() for k, t in enumerate(r.token_ids)]
        assert r.token_logprobs == pytest.approx(want, abs=1e-4)
        assert all(lp <= 0.0 for lp in r.token_logprobs)


class ForcedSequence:
    """A RowConstraint that allows exactly one token per step, then says done."""

    def __init__(self, seq: list[int]) -> None:
        self.seq, self.pos = seq, 0

    def allowed_tokens(self):
        return (self.seq[self.pos],)

    def advance(self, token_id: int) -> None:
        self.pos += 1

    def is_done(self) -> bool:
        return self.pos >= len(self.seq)


def test_forced_tokens_have_probability_one(tiny):
    _, model, tok = tiny
    seq = tok("<社会>固有表現抽出", add_special_tokens=False)["input_ids"]
    res = HFEngine(model, tok).generate(
        [
            GenerationRequest(
                build_prompt("東京", DEFAULT_REGISTRY["SCNM"]), 40, ForcedSequence(seq), scores=True
            )
        ]
    )
    assert res[0].token_ids == seq and res[0].token_logprobs == [0.0] * len(seq)


def scored(rows_out):
    items = [it[S.SCORE] for r in rows_out for it in r[S.PRED_ITEMS] or []]
    return items, [r[S.TL_SCORE] for r in rows_out]


def train_tiny(cfg, tok, steps: int = 150):
    """The tiny model fine-tuned in-process (plain torch) until it has memorized ``ROWS``."""
    from giellm_ray.model.sft import build_examples, collate

    model = load_model(cfg, "cpu")  # a fresh copy of the random init
    prompts = [build_prompt(text, DEFAULT_REGISTRY[ds]) for ds, text, _, _ in ROWS]
    examples, _ = build_examples(zip(prompts, targets(), strict=True), tok, 512)
    batch = collate(examples, tok.pad_token_id)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, loss.item()


def test_memorized_items_score_above_forced_random_ones(tiny):
    cfg, random_model, tok = tiny
    rand = make_extractor(cfg, random_model, tok).extract(rows_in())
    rand_items, rand_tl = scored(rand)
    trained_model, loss = train_tiny(cfg, tok)
    assert loss < 0.05
    memo = make_extractor(cfg, trained_model, tok).extract(rows_in())
    assert [r[S.PREDICTION] for r in memo] == targets()  # memorized
    memo_items, memo_tl = scored(memo)
    assert len(memo_items) == 9 and rand_items  # the constraint forced items out of the random one
    for s in [*rand_items, *rand_tl, *memo_items, *memo_tl]:
        assert s is not None and 0.0 <= s <= 1.0
    assert min(memo_items) > max(rand_items)
    assert min(memo_items) > 0.5 and min(memo_tl) > 0.5
    # Off: the same outputs, no scores.
    off = make_extractor(cfg, trained_model, tok, scores=False).extract(rows_in())
    assert [r[S.PREDICTION] for r in off] == targets()
    assert scored(off) == ([None] * 9, [None] * 4)
