"""The training driver: builds the Ray Train ``TorchTrainer``, runs it, reports the export.

``run_training(cfg)`` resolves the base model (``tiny`` is built from the training corpus into
``<run>/base-model`` so a run is self-contained), reads the train/eval Parquet with Ray Data
(``filesystem=`` given explicitly, so ``s3://`` works with a custom endpoint), and fits a
``TorchTrainer`` with ``ScalingConfig`` + ``RunConfig(storage_path, CheckpointConfig(num_to_keep),
FailureConfig(max_failures))``. Workers run :func:`giellm_ray.train.loop.train_loop_per_worker`
and write the final Hugging Face export to ``<run>/export``; the driver writes the resolved
config beside it (``train_config.yaml``) and returns where it is. Needs Ray first
(``giellm train`` / ``jobs/train.py`` join or start it via :func:`giellm_ray.ray_session.connect_ray`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass

from giellm_ray import io
from giellm_ray.config import dump_config
from giellm_ray.schema import DATASET, PROMPT, TARGET, TEXT
from giellm_ray.train.config import TrainConfig


@dataclass
class TrainResult:
    """Where a finished run left its outputs."""

    export_dir: str | None
    checkpoint: str | None
    metrics: dict


def _absolute(path: str) -> str:
    return path if io.is_s3(path) else os.path.abspath(os.path.expanduser(path))


def read_dataset(path: str, columns: list[str]):
    """A Ray Dataset over a Parquet file/dir (local or ``s3://``) with only ``columns``.

    SFT corpora are small (the paper's is 4,500 rows), so the driver reads the table with
    pyarrow and hands it to Ray Data: no read tasks to schedule, which on a small box whose CPUs
    Train has reserved would wait for a CPU budget that never comes. For a corpus too big for
    the driver, ``ray.data.read_parquet(path, filesystem=...)`` is the drop-in replacement.
    """
    import ray.data

    if not io.exists(path):
        raise FileNotFoundError(f"training data not found: {path}")
    # io.read_parquet reads only ``columns`` and names any that are missing.
    return ray.data.from_arrow(io.read_parquet(path, columns))


def prepare_base_model(cfg: TrainConfig) -> str:
    """The base model path; for ``tiny``, build it from the corpus into ``<run>/base-model``."""
    if cfg.model.name_or_path != "tiny":
        return cfg.model.name_or_path
    from giellm_ray.model.tiny import build_tiny

    texts: list[str] = []
    for path in filter(None, [cfg.data.train, cfg.data.eval]):
        for batch in io.iter_parquet_batches(path, columns=[PROMPT, TARGET]):
            texts += [t for c in (PROMPT, TARGET) for t in batch.column(c).to_pylist() if t]
    dest = io.join(_absolute(cfg.run_dir()), "base-model")
    if not io.is_s3(dest):
        return build_tiny(dest, texts, cfg.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        io.copy_dir(build_tiny(tmp, texts, cfg.tiny), dest)
    return dest


def build_trainer(cfg: TrainConfig, model_path: str):
    """The ``TorchTrainer`` for ``cfg`` (not started)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from giellm_ray.train.loop import train_loop_per_worker

    datasets = {"train": read_dataset(cfg.data.train, [PROMPT, TARGET])}
    eval_rows = 0
    if cfg.data.eval:
        eval_columns = [PROMPT, TARGET, DATASET] + ([TEXT] if cfg.eval.constrained else [])
        datasets["eval"] = read_dataset(cfg.data.eval, eval_columns)
        eval_rows = datasets["eval"].count()
    metrics_on = bool(eval_rows) and (cfg.eval.metrics == "on" or (
        cfg.eval.metrics == "auto" and eval_rows <= cfg.eval.auto_max_rows))
    max_rows = cfg.eval.max_rows or eval_rows
    storage = _absolute(cfg.storage_path)
    storage_fs = None
    if io.is_s3(storage):
        storage_fs, storage = io.resolve(storage)
    loop_config = {
        "train_config": cfg.model_dump(mode="json"),
        "model_path": model_path,
        "export_dir": io.join(_absolute(cfg.run_dir()), "export"),
        "resume_from": _absolute(cfg.resume_from) if cfg.resume_from else None,
        "has_eval": bool(eval_rows),
        "eval_metrics": metrics_on,
        "eval_max_rows_per_rank": math.ceil(max_rows / cfg.num_workers) if eval_rows else 0,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
            resources_per_worker=dict(cfg.resources_per_worker) or None),
        run_config=ray.train.RunConfig(
            name=cfg.run_name, storage_path=storage, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train, export, write the resolved config beside the export; raise if the run failed."""
    if not cfg.data.train:
        raise ValueError("data.train is required (a Parquet file or directory; "
                         "e.g. --set data.train=PATH)")
    model_path = prepare_base_model(cfg)
    result = build_trainer(cfg, model_path).fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    export_dir = None
    if cfg.export:
        export_dir = io.join(_absolute(cfg.run_dir()), "export")
        resolved = cfg.model_copy(deep=True)
        resolved.model.name_or_path = model_path
        dump_config(resolved, io.join(export_dir, "train_config.yaml"))
        if result.metrics and result.metrics.get("eval_counts"):
            from giellm_ray.metrics import write_report

            write_report(json.loads(result.metrics["eval_counts"]), io.join(export_dir, "eval"),
                         title=f"{cfg.run_name}: end-of-training evaluation")
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return TrainResult(export_dir=export_dir, checkpoint=checkpoint,
                       metrics=dict(result.metrics or {}))
