"""The ``tiny`` preset: a random-init Llama and a byte-level BPE tokenizer trained locally.

Used by tests and the demo where no weights can be downloaded. ``build_tiny(output_dir, texts)``
trains a byte-level BPE tokenizer on ``texts`` (0.1 s for a few thousand sentences; byte-level
never yields ``<unk>`` and round-trips Japanese exactly), builds ``LlamaForCausalLM`` from a
config, and saves both in the normal Hugging Face layout so every later stage loads it with
``AutoTokenizer`` / ``AutoModelForCausalLM`` exactly like a real model. :func:`tokenizer_texts`
is the one recipe for what that tokenizer is trained on (tests, benchmarks, the demo's corpus).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from giellm_ray.config import StrictModel
from giellm_ray.model.loader import hf_progress_bars_off

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


class TinyConfig(StrictModel):
    """Shape of the tiny Llama."""

    vocab_size: int = 2000
    """Target BPE vocabulary size (the real size may be smaller on a small corpus)."""
    hidden_size: int = 64
    """Model width."""
    intermediate_size: int = 256
    """MLP width."""
    num_hidden_layers: int = 2
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Attention heads."""
    max_position_embeddings: int = 1024
    """Longest sequence (prompt + target) in tokens."""
    seed: int = 0
    """Seed for the random initialisation."""


def tokenizer_texts(texts: Iterable[str] = (), registry=None) -> list[str]:
    """``texts`` plus every format string of the registry's tasks (a prompt's frame, each
    ``<TL label>`` + instruction word, each ``:WL label;``), so a tokenizer trained on them has
    merges for the whole output format; ``registry`` defaults to the built-in tasks."""
    from giellm_ray.formats import DEFAULT_REGISTRY, build_prompt

    out = list(texts)
    for task in (registry or DEFAULT_REGISTRY).values():
        out.append(build_prompt("", task))
        out += [f"<{x}>{task.instruction}" for x in task.tl_labels]
        out += [f":{x};" for x in task.wl_labels]
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=1024,
    )


def build_tiny(output_dir: str, texts: Iterable[str], config: TinyConfig | None = None) -> str:
    """Train the tokenizer, build the random-init Llama, save both to ``output_dir``; return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = config or TinyConfig()
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    tokenizer.model_max_length = cfg.max_position_embeddings
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_attention_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
    )
    os.makedirs(output_dir, exist_ok=True)
    hf_progress_bars_off()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


TINY_MARKER = "tiny.json"


def build_tiny_from_corpus(
    dest: str, corpora: list[str], config: TinyConfig | None = None, reuse: bool = False
) -> str:
    """The tiny model built from the ``prompt`` and ``target`` texts of ``corpora`` (Parquet
    files or directories, local or ``s3://``) into ``dest`` (local or ``s3://``); returns ``dest``.

    ``tiny.json`` (the shape and seed) is written last and marks a complete build; ``reuse``
    keeps a complete build with the same settings (the MRE runs share one per seed).
    """
    import json
    import tempfile

    from giellm_ray import io
    from giellm_ray.schema import PROMPT, TARGET

    cfg = config or TinyConfig()
    spec = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    marker = io.join(dest, TINY_MARKER)
    if reuse and io.exists(marker) and io.read_text(marker) == spec:
        return dest
    texts = [
        t
        for path in corpora
        for batch in io.iter_parquet_batches(path, columns=[PROMPT, TARGET])
        for c in (PROMPT, TARGET)
        for t in batch.column(c).to_pylist()
        if t
    ]
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny(tmp, texts, cfg)
        with open(os.path.join(tmp, TINY_MARKER), "w") as f:
            f.write(spec)
        io.copy_dir(tmp, dest)
    return dest
