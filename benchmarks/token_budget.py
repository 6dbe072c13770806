"""How often a gold output needs more tokens than its task's budget (``max_new_tokens``).

vLLM's grammars carry no token budget (``giellm_ray.decoding.lark_grammar``): a row whose model
wants to write more than the budget is cut, keeps its complete items and is flagged
(``docs/decisions/token-budget.md``). A trained model writes about what it was trained on, so the
share of gold targets longer than the budget is the share of rows a trained model gets cut. Per
task, on the Stockmark texts (SCNM gold; SCPOS-shaped targets from the same entities, as the
oracle test builds them), for three tokenizers: byte-level BPE at 1.5k and 8k (trained here on the
same texts: optimistic) and raw UTF-8 bytes (the worst case: every byte one token). JSON lines.

    python -m benchmarks.token_budget [--limit 6000]
"""

from __future__ import annotations

import argparse

from benchmarks.common import emit, stockmark_records
from giellm_ray.formats import DEFAULT_REGISTRY, build_target, make_item


def byte_bpe(texts, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return lambda s: len(tok.encode(s).ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=6000)
    args = ap.parse_args()
    recs = stockmark_records()[: args.limit]
    tasks = [DEFAULT_REGISTRY[n] for n in ("SCNM", "SCPOS:RW", "SCPOS:Adj", "SCPOS:N&Adj")]
    targets = {}
    for task in tasks:
        rows = []
        for r in recs:
            names = [e["name"] for e in r["entities"] if ";" not in e["name"]]
            labels = task.wl_labels
            items = [make_item(labels[i % len(labels)], n) for i, n in enumerate(names)]
            rows.append(build_target(task.tl_labels[0], items, task))
        targets[task.name] = rows
    texts = [r["text"] for r in recs] + targets["SCNM"]
    counters = {
        "byte-bpe-1.5k": byte_bpe(texts, 1500),
        "byte-bpe-8k": byte_bpe(texts, 8000),
        "utf8-bytes": lambda s: len(s.encode("utf-8")),
    }
    for task in tasks:
        for name, count in counters.items():
            lengths = sorted(count(t) + 1 for t in targets[task.name])  # + EOS
            over = sum(n > task.max_new_tokens for n in lengths)
            emit(
                task=task.name,
                tokenizer=name,
                rows=len(lengths),
                budget=task.max_new_tokens,
                over_budget=over,
                over_share=round(over / len(lengths), 4),
                p50=lengths[len(lengths) // 2],
                p99=lengths[int(len(lengths) * 0.99)],
                max=lengths[-1],
            )


if __name__ == "__main__":
    main()
