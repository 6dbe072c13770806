"""Final export of a DeepSpeed-trained model in Hugging Face format (safetensors) from a worker.

``export_hf(engine, tokenizer, dest, zero_stage, rank, staging)`` must run on every rank: at
ZeRO-3 the full state dict is gathered collectively (``stage3_gather_16bit_weights_on_model_save``;
the weights keep their training dtype), at ZeRO-2 rank 0 already holds every weight. Rank 0 writes
``model.safetensors`` + ``config.json`` + the tokenizer into a directory under ``staging`` (the
node-local NVMe when there is one) and uploads it to ``dest`` (local or ``s3://``, through pyarrow's
native S3 client), which ``AutoModelForCausalLM.from_pretrained`` loads. 13B in bf16: 26 GB
written once and uploaded once (~20 s at ~1.5 GB/s). :func:`save_hf` is the same write into a
given directory (the final weights-only checkpoint when ``export`` is off); :func:`export_lora`
is a LoRA run's export (the adapter, optionally the merged model).
"""

from __future__ import annotations

import tempfile

import pyarrow.fs as pafs

from giellm_ray import io
from giellm_ray.model.loader import hf_progress_bars_off

_CHUNK = 64 * 1024 * 1024


def gather_state(engine, zero_stage: int, rank: int) -> dict | None:
    """The full 16-bit state dict on rank 0 (``None`` elsewhere); collective at ZeRO-3."""
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()  # full dict on rank 0 only
    return engine.module.state_dict() if rank == 0 else None


def save_hf(engine, state: dict, tokenizer, local_dir: str) -> None:
    """Write model weights, config, generation config and tokenizer into ``local_dir``."""
    model = engine.module
    model.config.use_cache = True  # training turned it off for activation checkpointing
    hf_progress_bars_off()
    model.save_pretrained(local_dir, state_dict=state)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(local_dir)
    tokenizer.save_pretrained(local_dir)


def upload_dir(local: str, dest: str) -> None:
    """Copy a local directory to ``dest``; ``s3://`` goes through pyarrow's native S3 client."""
    if not io.is_s3(dest):
        io.copy_dir(local, dest)
        return
    fs, path = io.resolve_native(dest)
    fs.create_dir(path, recursive=True)
    # use_threads=False: pyarrow's threaded S3 *uploads* are unsafe (apache/arrow#32372); the S3
    # output stream still sends multipart parts in the background.
    pafs.copy_files(
        local,
        path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=fs,
        use_threads=False,
        chunk_size=_CHUNK,
    )


def export_hf(
    engine, tokenizer, dest: str, zero_stage: int, rank: int, staging: str | None = None
) -> str | None:
    """Write the trained model + tokenizer to ``dest``; returns ``dest`` on rank 0."""
    state = gather_state(engine, zero_stage, rank)
    if rank != 0:
        return None
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        save_hf(engine, state, tokenizer, tmp)
        upload_dir(tmp, dest)
    return dest


def export_lora(
    engine, tokenizer, dest: str, cfg, base_path: str, rank: int, staging: str | None = None
) -> str | None:
    """A LoRA run's export (every rank calls it; rank 0 writes): ``dest/adapter`` and, with
    ``export.merge``, ``dest/merged`` (see :mod:`giellm_ray.train.lora`); returns ``dest`` on
    rank 0."""
    from giellm_ray.model.loader import resolve_dtype
    from giellm_ray.train.lora import (
        ADAPTER_DIR,
        MERGED_DIR,
        gather_trainable,
        merge_adapter,
        save_adapter,
    )

    state = gather_trainable(engine, cfg.zero_stage, rank)
    if rank != 0:
        return None
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        adapter = f"{tmp}/{ADAPTER_DIR}"
        save_adapter(engine.module, state, tokenizer, adapter)
        if cfg.export.merge:
            dtype = resolve_dtype("bfloat16" if cfg.resolved_precision() == "bf16" else "float32")
            merge_adapter(base_path, adapter, tokenizer, f"{tmp}/{MERGED_DIR}", dtype)
        upload_dir(tmp, dest)
    return dest
