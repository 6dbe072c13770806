"""End-of-epoch evaluation inside a training worker: held-out loss and the paper's metrics.

Each worker takes every ``world_size``-th eval row (``rows[rank::world]``), computes the loss on
its rows and greedily generates answers, then the counts from ``giellm_ray.metrics.count_rows``
are gathered and merged on rank 0 (counts sum across shards). Every rank runs the same number of
forward/generate calls (short shards repeat their last batch, results discarded) because ZeRO-3
gathers parameters collectively; generation uses ``synced_gpus`` for the same reason.
Below ZeRO-3 greedy decoding goes through the Extractor ``giellm score`` uses (HF engine, the
format constraint when ``eval.constrained``, the run's task registry from ``TrainConfig.tasks``,
so a TCREE run is prompted, constrained and counted with its learned labels); at ZeRO-3 it is
plain ``model.generate``. At ZeRO-3
``eval.metrics: auto`` does not generate at all: every decode step would all-gather the sharded
model (13B: 26 GB per token step; 256 tokens x ~8 batches per rank is ~10-15 min per epoch), so
the loss stays here and ``giellm score`` on the export gives the metrics. Reductions go through
:mod:`giellm_ray.train.collectives` (tensors on the worker's device, which NCCL requires).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from giellm_ray.formats import DEFAULT_REGISTRY
from giellm_ray.model.sft import IGNORE_INDEX, build_examples, collate
from giellm_ray.schema import DATASET, PREDICTION, PROMPT, TARGET
from giellm_ray.train.collectives import gather_objects, reduce_values


def _padded_batches(n: int, batch_size: int, num_batches: int) -> list[tuple[list[int], bool]]:
    """``num_batches`` index batches over ``n`` rows; extra ones repeat the last (``False``)."""
    real = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    filler = real[-1] if real else []
    return [(b, True) for b in real] + [(filler, False)] * (num_batches - len(real))


def _dummy_example(tokenizer):
    """A two-token stand-in row for a rank with no eval rows: it runs the forward (ZeRO-3's
    parameter gathers are collective) and its loss is never counted."""
    from giellm_ray.model.sft import SftExample

    tok = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return SftExample(input_ids=[tok, tok], labels=[IGNORE_INDEX, IGNORE_INDEX])


def eval_loss(engine, rows: Sequence[dict], tokenizer, cfg, device) -> tuple[float, int]:
    """Summed target-token loss and target-token count on this worker's rows (all ranks sum).

    Every rank runs the same number of forwards: a rank with fewer batches repeats its last one,
    and a rank with no rows at all (fewer eval rows than workers, or all of its rows dropped)
    runs a dummy row, uncounted. At ZeRO-3 a rank that skipped its forwards would leave the
    others waiting in their parameter all-gathers until the collective timeout (30 min, NCCL).
    """
    import torch

    examples, _ = build_examples(
        ((r[PROMPT], r[TARGET]) for r in rows), tokenizer, cfg.data.max_length, cfg.data.overlong
    )
    bs = cfg.eval.batch_size
    num = int(reduce_values([math.ceil(len(examples) / bs)], "max", device)[0])
    pool = examples or [_dummy_example(tokenizer)]
    total = [0.0, 0.0]  # summed target-token loss, target tokens
    engine.eval()
    with torch.no_grad():
        for idx, real in _padded_batches(len(examples), bs, num):
            batch_examples = [pool[i] for i in idx] or pool[:1]
            batch = {
                k: v.to(device) for k, v in collate(batch_examples, tokenizer.pad_token_id).items()
            }
            logits = engine(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits.float()
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            if real:
                total[0] += loss.item()
                total[1] += (labels != IGNORE_INDEX).sum().item()
    engine.train()
    loss_sum, n_tokens = reduce_values(total, "sum", device)
    return loss_sum / max(n_tokens, 1), int(n_tokens)


def training_extractor(model, tokenizer, registry, cfg):
    """The Extractor end-of-epoch evaluation generates with: the scoring row contract (prompts,
    the format constraint of each row's task in ``registry``, parsing) over the model being
    trained, on the HF engine. The one place training builds an Extractor."""
    from giellm_ray.generation.build import hf_extractor
    from giellm_ray.generation.config import GenerationConfig

    gen_cfg = GenerationConfig(
        batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens
    )
    return hf_extractor(
        cfg.model,
        gen_cfg,
        registry,
        constrained=cfg.eval.constrained,
        model=model,
        tokenizer=tokenizer,
    )


def greedy_generate(
    model,
    tokenizer,
    rows: Sequence[dict],
    cfg,
    num_batches: int,
    synced: bool,
    device,
    registry=DEFAULT_REGISTRY,
) -> list[str | None]:
    """Greedy answers for ``rows`` (``prompt``, ``dataset``; ``text`` when constrained).

    Without ZeRO-3 this is :func:`training_extractor` (a row it cannot generate, e.g. an
    unknown dataset, answers ``None`` and counts as wrong); under ZeRO-3 every rank must run
    exactly ``num_batches`` collective ``generate`` calls (plain ``model.generate`` with
    ``synced_gpus``, unconstrained).
    """
    import torch

    if not synced:
        if not rows:
            return []
        extractor = training_extractor(model, tokenizer, registry, cfg)
        return [out[PREDICTION] for out in extractor.extract(list(rows))]
    prompts = [r[PROMPT] for r in rows]
    out: list[str | None] = []
    for idx, real in _padded_batches(len(prompts), cfg.eval.batch_size, num_batches):
        batch = [prompts[i] for i in idx] or [""]
        enc = tokenizer(batch, return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=cfg.eval.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                synced_gpus=synced,
                use_cache=True,
            )
        if real:
            out += tokenizer.batch_decode(
                gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
    return out


def eval_metrics(
    engine, rows: Sequence[dict], tokenizer, cfg, device, synced: bool, registry=DEFAULT_REGISTRY
) -> dict | None:
    """Merged metric counts on rank 0 (``None`` on other ranks); ``registry``: the run's tasks."""
    import torch.distributed as dist

    from giellm_ray.metrics import count_rows, merge_counts

    bs = cfg.eval.batch_size
    num = int(reduce_values([math.ceil(len(rows) / bs)], "max", device)[0])
    model = engine.module
    model.eval()
    preds = greedy_generate(model, tokenizer, rows, cfg, num, synced, device, registry)
    model.train()
    counts = count_rows([r[DATASET] for r in rows], [r[TARGET] for r in rows], preds, registry)
    gathered = gather_objects(counts)
    return merge_counts(gathered) if (not dist.is_initialized() or dist.get_rank() == 0) else None
