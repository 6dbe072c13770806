"""Per-row grammar build and per-token mask cost: our automaton against llguidance (vLLM's
``guidance`` backend running ``row_lark``'s grammar), at vocabularies of ~1.5k, 32k and ~150k.

For each vocabulary: the per-tokenizer set-up once (our token table and trie; llguidance's
``LLTokenizer``), then on the same Stockmark rows (SCNM gold targets) the per-row build (the
automaton's ``for_row``; ``row_lark`` + ``LLMatcher`` compile) and, stepping through each gold
target, the per-token cost (``allowed_tokens`` + ``advance``; ``fill_next_token_bitmask`` into a
preallocated bitmask, what vLLM calls, + ``consume_token``). The automaton is the baseline, in the
same run, on one thread. Large vocabularies are built from the corpus: byte-level BPE trained on
it (1.5k, 32k is out of its reach, so 32k and 150k add the most frequent 2-8 character n-grams of
the texts as whole tokens, as a big Japanese vocabulary has them). JSON lines.

    python -m benchmarks.grammar_cost [--rows 40] [--vocabs 1500,32000,150000]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

from benchmarks.common import emit, stockmark_records
from giellm_ray.decoding import build_constraint_factory
from giellm_ray.decoding.lark_grammar import row_lark
from giellm_ray.formats import DEFAULT_REGISTRY, build_target, make_item

SCNM = DEFAULT_REGISTRY["SCNM"]


def tokenizer(texts: list[str], vocab: int):
    """A byte-level BPE of ``vocab`` tokens: trained merges, topped up with frequent n-grams."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=min(vocab, 4000),
            special_tokens=["<pad>", "<unk>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    missing = vocab - tok.get_vocab_size()
    if missing > 0:
        grams = Counter(
            t[i : i + n] for t in texts for n in range(2, 9) for i in range(len(t) - n + 1)
        )
        have = set(tok.get_vocab())
        extra = [g for g, _ in grams.most_common(missing * 2) if g not in have][:missing]
        tok.add_tokens(extra)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--vocabs", default="1500,32000,150000")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread, as measured
    import llguidance
    import llguidance.hf
    import llguidance.torch
    import torch

    torch.set_num_threads(1)
    recs = [r for r in stockmark_records() if r["entities"]]
    rows = [
        (
            r["text"],
            build_target("社会", [make_item(e["type"], e["name"]) for e in r["entities"]], SCNM),
        )
        for r in recs[: args.rows]
    ]
    texts = [r["text"] for r in recs[:3000]] + [t for _, t in rows]
    for vocab in (int(v) for v in args.vocabs.split(",")):
        tok = tokenizer(texts, vocab)
        t0 = time.perf_counter()
        factory = build_constraint_factory(tok, DEFAULT_REGISTRY)
        ours_setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        ll_tok = llguidance.hf.from_tokenizer(tok, n_vocab=len(tok))
        ll_setup = time.perf_counter() - t0
        bitmask = llguidance.torch.allocate_token_bitmask(1, ll_tok.vocab_size)
        cost = {"ours": [0.0, 0.0, 0], "llguidance": [0.0, 0.0, 0]}  # build s, step s, steps
        for text, target in rows:
            ids = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
            t0 = time.perf_counter()
            c = factory.for_row(text, SCNM, 1 << 20)
            cost["ours"][0] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for t in ids:
                c.allowed_tokens()
                if t != tok.eos_token_id:
                    c.advance(t)
            cost["ours"][1] += time.perf_counter() - t0
            cost["ours"][2] += len(ids)
            t0 = time.perf_counter()
            m = llguidance.LLMatcher(ll_tok, row_lark(SCNM, text, factory.lead_space), log_level=0)
            cost["llguidance"][0] += time.perf_counter() - t0
            t0 = time.perf_counter()
            for t in ids:
                llguidance.torch.fill_next_token_bitmask(m, bitmask, 0)
                if t != tok.eos_token_id:
                    m.consume_token(t)
            cost["llguidance"][1] += time.perf_counter() - t0
            cost["llguidance"][2] += len(ids)
        base = cost["ours"]
        for name, (build, step, steps) in cost.items():
            emit(
                vocab=len(tok),
                engine=name,
                rows=len(rows),
                steps=steps,
                tokenizer_setup_s=round(ours_setup if name == "ours" else ll_setup, 3),
                build_ms_per_row=round(1000 * build / len(rows), 3),
                mask_us_per_token=round(1e6 * step / steps, 1),
                vs_ours_per_token=round((step / steps) / (base[1] / base[2]), 2),
            )


if __name__ == "__main__":
    main()
