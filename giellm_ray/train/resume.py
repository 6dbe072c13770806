"""Where a training worker group starts from: this run's furthest checkpoint, or ``resume_from``.

Ray Train 2.60 hands a restarted worker group ``ray.train.get_checkpoint()``: the latest checkpoint
its controller *registered*, which needs every rank's report to have been collected. A worker
killed between uploading and that collection (seconds, with large checkpoints) leaves a complete
checkpoint Ray does not know, and the group would restart from an older one or from step 0.
:func:`find_checkpoint` therefore takes the furthest-trained of Ray's checkpoint and the complete
ones in the run directory (:func:`giellm_ray.train.checkpoints.newest_complete`); only when the run
has none does it use the config's ``resume_from`` (a ``ray.train.Checkpoint`` the driver built
once and checked is trusted). Rank 0 decides and broadcasts, so every rank loads the same one.

:func:`restore` loads it. A full checkpoint restores DeepSpeed's model and optimizer state; from
remote storage each rank stages only its own shard plus the shared files (once per node) on the
node-local disk, then the staged copy is removed. A weights-only checkpoint (a run's final one)
was already loaded as the model weights by :func:`model_path`; the optimizer starts fresh and the
learning-rate schedule is moved to the checkpoint's step.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from giellm_ray.train.checkpoints import (
    CKPT_TAG,
    drop_staged,
    newest,
    newest_complete,
    read_state,
    stage_for_rank,
    uri,
)

log = logging.getLogger(__name__)


@dataclass
class Resume:
    """The checkpoint a worker group starts from."""

    checkpoint: Any  # ray.train.Checkpoint
    state: dict
    source: str  # "run" (this run's storage) or "resume_from"


def _choose(ray_ckpt, explicit, storage) -> tuple[str, str, dict] | None:
    """``(source, path, state)`` on rank 0 (see the module docstring)."""
    fs, run_path = storage.storage_filesystem, storage.experiment_fs_path
    candidates = []
    if ray_ckpt is not None and (state := read_state(ray_ckpt.filesystem, ray_ckpt.path)):
        candidates.append((ray_ckpt.path, state))
    found = newest_complete(fs, run_path)
    if found is not None:
        candidates.append(found)
    best = newest(candidates)
    if best is not None:
        registered = ray_ckpt is not None and best[0] == ray_ckpt.path
        log.info(
            "[train] resuming from %s (%s)",
            best[0],
            "Ray's latest" if registered else "complete in the run directory, not in Ray's record",
        )
        return "run", best[0], best[1]
    if explicit is None:
        return None
    state = read_state(explicit.filesystem, explicit.path)
    if state is None:
        raise ValueError(f"resume_from {explicit.path} has no readable train_state.json")
    return "resume_from", explicit.path, state


def find_checkpoint(explicit, rank: int) -> Resume | None:
    """The checkpoint this worker group starts from, the same on every rank (``None``: none);
    ``explicit``: ``WorkerConfig.resume_from``."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    storage = ray.train.get_context().get_storage()
    choice = None
    if rank == 0:
        choice = _choose(ray.train.get_checkpoint(), explicit, storage)
    choice = broadcast_from_rank_zero(choice)
    if choice is None:
        return None
    source, path, state = choice
    fs = storage.storage_filesystem if source == "run" else explicit.filesystem
    return Resume(ray.train.Checkpoint(path, filesystem=fs), state, source)


def model_path(base: str, resume: Resume | None, lora: bool = False) -> str:
    """The weights to build the model from: the base model, or a weights-only checkpoint's
    (a LoRA run always builds from the base; :func:`restore` loads the adapter)."""
    if lora or resume is None or not resume.state.get("weights_only"):
        return base
    ckpt = resume.checkpoint
    return resume.state.get("export_dir") or uri(ckpt.filesystem, ckpt.path)


def _check_compatible(state: dict, world: int, zero_stage: int) -> None:
    if state.get("weights_only"):
        return
    saved_world, saved_stage = state.get("world_size", world), state.get("zero_stage", zero_stage)
    if saved_world != world or saved_stage != zero_stage:
        raise ValueError(
            f"the checkpoint holds ZeRO-{saved_stage} optimizer shards of {saved_world} workers; "
            f"this run has ZeRO-{zero_stage} on {world}. DeepSpeed cannot re-shard them: set "
            f"num_workers={saved_world} and zero_stage={saved_stage}, or resume from a run's "
            "final (weights-only) checkpoint."
        )


def _adapter_dir(resume: Resume) -> str:
    """Where a LoRA run's weights-only checkpoint keeps its adapter."""
    from giellm_ray.train.lora import ADAPTER_DIR

    root = resume.state.get("export_dir") or uri(
        resume.checkpoint.filesystem, resume.checkpoint.path
    )
    return root.rstrip("/") + "/" + ADAPTER_DIR


def _load_full(
    engine, resume: Resume, rank: int, local_rank: int, staging: str, lora: bool = False
) -> None:
    from ray.train.collective import barrier

    fs, path = resume.checkpoint.filesystem, resume.checkpoint.path
    staged = None
    if not isinstance(fs, pafs.LocalFileSystem):  # local storage is read where it lies
        key = hashlib.sha1(uri(fs, path).encode()).hexdigest()[:12]
        staged = stage_for_rank(fs, path, os.path.join(staging, f"restore-{key}"), rank)
    # A LoRA checkpoint holds the adapter only: the frozen base keys are absent by design.
    loaded, _ = engine.load_checkpoint(staged or path, tag=CKPT_TAG, load_module_strict=not lora)
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint at {uri(fs, path)}")
    if staged is not None:
        barrier()  # every rank of every node has read its files
        if local_rank == 0:
            drop_staged(staged)


def restore(
    engine, resume: Resume | None, rank: int, world: int, local_rank: int, cfg, staging: str
) -> dict:
    """Load ``resume`` into ``engine``; returns its ``train_state`` (``{}`` for a fresh start)."""
    if resume is None:
        return {}
    state, zero_stage, lora = resume.state, cfg.zero_stage, cfg.lora is not None
    if bool(state.get("lora")) != lora:
        raise ValueError(
            "the checkpoint is from a "
            + ("LoRA" if state.get("lora") else "full")
            + " fine-tuning run and this run is not: set lora to match"
        )
    _check_compatible(state, world, zero_stage)
    if state.get("weights_only"):
        step = int(state["step"])
        if step and engine.lr_scheduler is not None:
            engine.lr_scheduler.step(step - 1)  # where `step` optimizer steps leave the schedule
        engine.global_steps = step
        if lora:
            from giellm_ray.train.lora import load_adapter_weights

            load_adapter_weights(engine.module, _adapter_dir(resume))
        if rank == 0:
            log.warning(
                "[train] resuming from weights only (%s): the optimizer state starts fresh",
                model_path("", resume),
            )
    else:
        _load_full(engine, resume, rank, local_rank, staging, lora)
    return state
