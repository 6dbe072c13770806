"""Supervised fine-tuning examples: ``prompt + target + EOS`` with the loss on the target only.

``build_examples(pairs, tokenizer, max_length, overlong)`` tokenizes the prompt exactly as
inference does (``tokenizer(prompt)``, so a Llama BOS comes first) and the target without special
tokens, appends EOS and masks the prompt positions with ``IGNORE_INDEX`` so only the answer is
learned. Rows longer than ``max_length`` follow an explicit policy and are counted in
:class:`SftStats`; a target is never cut (a row whose target alone does not fit is dropped).
``length_grouped_batches`` orders examples so a batch holds similar lengths (less padding), and
``collate`` pads a batch on the right into tensors. Torch only, no Ray.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

IGNORE_INDEX = -100
Overlong = Literal["drop", "truncate_prompt_left"]


@dataclass
class SftExample:
    """One tokenized training row; ``labels`` is ``IGNORE_INDEX`` on the prompt."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SftStats:
    """What happened to the rows: summable across workers."""

    rows: int = 0
    kept: int = 0
    skipped_no_target: int = 0
    dropped_overlong: int = 0
    truncated_prompt: int = 0
    dropped_target_too_long: int = 0
    target_tokens: int = 0
    tokens: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def build_example(
    prompt: str, target: str, tokenizer, max_length: int, overlong: Overlong, stats: SftStats
) -> SftExample | None:
    """Tokenize one row, apply the over-length policy, update ``stats``; ``None`` if dropped."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
    total = len(prompt_ids) + len(target_ids)
    if total > max_length:
        if overlong == "drop":
            stats.dropped_overlong += 1
            return None
        # Keep the target whole; if it alone (with one prompt token) cannot fit, drop the row.
        room = max_length - len(target_ids)
        if room < 1:
            stats.dropped_target_too_long += 1
            return None
        bos = tokenizer.bos_token_id
        keep_bos = bos is not None and prompt_ids[:1] == [bos] and room >= 2
        # Cut from the left: the end of the prompt (task words) is what the answer depends on.
        prompt_ids = [bos] + prompt_ids[-(room - 1) :] if keep_bos else prompt_ids[-room:]
        stats.truncated_prompt += 1
    stats.kept += 1
    stats.target_tokens += len(target_ids)
    stats.tokens += len(prompt_ids) + len(target_ids)
    return SftExample(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + target_ids,
    )


def build_examples(
    pairs: Iterable[tuple[str | None, str | None]],
    tokenizer,
    max_length: int,
    overlong: Overlong = "drop",
) -> tuple[list[SftExample], SftStats]:
    """Examples for ``(prompt, target)`` pairs; rows without a prompt or target are skipped."""
    stats = SftStats()
    examples: list[SftExample] = []
    for prompt, target in pairs:
        stats.rows += 1
        if not prompt or target is None or target == "":
            stats.skipped_no_target += 1
            continue
        example = build_example(prompt, target, tokenizer, max_length, overlong, stats)
        if example is not None:
            examples.append(example)
    return examples, stats


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int = 0, group_factor: int = 50
) -> list[list[int]]:
    """Index batches of similar length: shuffle, sort within mega-chunks, shuffle the batches.

    Deterministic for a given ``seed`` (the epoch), so a resumed run can skip batches it did.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = max(batch_size * group_factor, batch_size)
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i], reverse=True)
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: Sequence[SftExample], pad_token_id: int) -> dict:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors for a batch."""
    import torch

    width = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        input_ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def padding_waste(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padded positions over all batches (0 = no padding)."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches if b)
    real = sum(lengths[i] for b in batches for i in b)
    return 0.0 if padded == 0 else 1.0 - real / padded
