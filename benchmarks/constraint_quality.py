"""Accuracy with and without grammar-constrained decoding, same rows, same run.

1. A random-init tiny Llama (the worst case): share of outputs that parse, whose labels are all in
   the inventory, whose spans all occur in the text, constrained vs not, on ``--random-rows``
   Stockmark rows (default: all).
2. The same tiny Llama briefly trained (plain torch, ``--train-seconds``) on Stockmark rows in the
   SCNM format (TL label 社会 for every row: the raw data has none), then TL / WL / ALL accuracy and
   item F1 (``giellm_ray.metrics``) constrained vs not on ``--heldout`` held-out rows.

Prints JSON lines; not run by pytest::

    .venv/bin/python -m benchmarks.constraint_quality --train-seconds 240 --random-rows 1000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time

from benchmarks.common import stockmark_records, tiny_model


def validity(rows: list[dict], outs: list[dict], task) -> dict[str, float]:
    from giellm_ray.metrics import format_validity

    v = format_validity([r["text"] for r in rows], [o["prediction"] or "" for o in outs], task)
    return {"parse_rate": v["parse"], "label_rate": v["labels"], "span_rate": v["spans"]}


def sft_batches(tokenizer, records: list[dict], task, batch_size: int, rng: random.Random):
    """Endless shuffled batches of prompt+target+EOS with the loss on the target only."""
    import torch

    from giellm_ray.formats import build_prompt, build_target, make_item

    examples = []
    for r in records:
        items = [make_item(e["type"], e["name"]) for e in r["entities"]]
        p = tokenizer.encode(build_prompt(r["text"], task), add_special_tokens=False)
        t = tokenizer.encode(build_target("社会", items, task), add_special_tokens=False)
        examples.append((p, t + [tokenizer.eos_token_id]))
    while True:
        rng.shuffle(examples)
        for i in range(0, len(examples) - batch_size + 1, batch_size):
            chunk = examples[i : i + batch_size]
            width = max(len(p) + len(t) for p, t in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
            labels = torch.full((len(chunk), width), -100)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (p, t) in enumerate(chunk):
                seq = p + t
                ids[k, : len(seq)] = torch.tensor(seq)
                labels[k, len(p) : len(seq)] = torch.tensor(t)
                mask[k, : len(seq)] = 1
            yield ids, mask, labels


def train(model, tokenizer, records, task, seconds: float, batch_size: int) -> dict:
    import torch

    torch.manual_seed(0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    steps, loss = 0, float("nan")
    start = time.perf_counter()
    for ids, mask, labels in sft_batches(tokenizer, records, task, batch_size, random.Random(0)):
        if time.perf_counter() - start > seconds:
            break
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        steps, loss = steps + 1, float(out.loss.detach())
    model.eval()
    return {"steps": steps, "final_loss": round(loss, 4), "seconds": round(seconds, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-rows", type=int, default=None, help="default: all rows")
    ap.add_argument("--heldout", type=int, default=400)
    ap.add_argument("--train-seconds", type=float, default=240)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden-size", type=int, default=128)
    args = ap.parse_args()

    from giellm_ray.formats import DEFAULT_REGISTRY, build_target, make_item
    from giellm_ray.generation.build import hf_extractor
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.metrics import count_rows, ratios
    from giellm_ray.model.loader import ModelConfig, load_model, load_tokenizer
    from giellm_ray.model.tiny import TinyConfig

    task = DEFAULT_REGISTRY["SCNM"]
    records = stockmark_records()
    gen = GenerationConfig(batch_size=args.batch_size)

    def extract_both(model_dir: str, model, rows: list[dict]) -> dict[str, list[dict]]:
        mcfg = ModelConfig(name_or_path=model_dir)
        tok = load_tokenizer(mcfg)
        return {
            mode: hf_extractor(
                mcfg,
                gen,
                constrained=(mode == "constrained"),
                device="cpu",
                model=model,
                tokenizer=tok,
            ).extract(rows)
            for mode in ("unconstrained", "constrained")
        }

    # 1. Random init, the worst case.
    tmp = tempfile.mkdtemp(prefix="giellm-quality-")
    rand_dir = tiny_model(f"{tmp}/random", [r["text"] for r in records])
    rows = [{"text": r["text"], "dataset": "SCNM"} for r in records[: args.random_rows]]
    model = load_model(ModelConfig(name_or_path=rand_dir), "cpu")
    for mode, outs in extract_both(rand_dir, model, rows).items():
        print(
            json.dumps(
                {
                    "bench": "constraint_quality",
                    "model": "random-init",
                    "mode": mode,
                    "rows": len(rows),
                    **validity(rows, outs, task),
                }
            ),
            flush=True,
        )

    # 2. Briefly trained: held-out rows are the last --heldout ones.
    train_recs, held = records[: -args.heldout], records[-args.heldout :]
    texts = [r["text"] for r in records] + [f":{task.none_marker};"]
    trained_dir = tiny_model(
        f"{tmp}/trained",
        texts,
        TinyConfig(
            vocab_size=1500, hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size
        ),
    )
    mcfg = ModelConfig(name_or_path=trained_dir)
    model = load_model(mcfg, "cpu")
    info = train(model, load_tokenizer(mcfg), train_recs, task, args.train_seconds, 32)
    print(
        json.dumps(
            {
                "bench": "constraint_quality",
                "train": info,
                "params": sum(p.numel() for p in model.parameters()),
                "train_rows": len(train_recs),
            }
        ),
        flush=True,
    )
    rows = [{"text": r["text"], "dataset": "SCNM"} for r in held]
    targets = [
        build_target("社会", [make_item(e["type"], e["name"]) for e in r["entities"]], task)
        for r in held
    ]
    for mode, outs in extract_both(trained_dir, model, rows).items():
        counts = count_rows(["SCNM"] * len(rows), targets, [o["prediction"] for o in outs])
        r = ratios(counts["SCNM"])
        print(
            json.dumps(
                {
                    "bench": "constraint_quality",
                    "model": "trained",
                    "mode": mode,
                    "rows": len(rows),
                    **validity(rows, outs, task),
                    **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()},
                },
                ensure_ascii=False,
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
