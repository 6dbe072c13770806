"""The training driver: builds the Ray Train ``TorchTrainer``, runs it, reports the export.

``run_training(cfg)`` resolves the base model (``tiny`` is built from the training corpus into
``<run>/base-model`` so a run is self-contained), reads the train/eval Parquet with Ray Data
(``filesystem=`` given explicitly, so ``s3://`` works with a custom endpoint), and fits a
``TorchTrainer`` with ``ScalingConfig`` + ``RunConfig(storage_path, CheckpointConfig(num_to_keep),
FailureConfig(max_failures))``; checkpoints go to storage through pyarrow's native S3 client.
``resume_from`` becomes one ``ray.train.Checkpoint`` built here, after checking it lies under
``storage_path`` (or ``trust_checkpoint``: loading a checkpoint runs its pickled code), and goes
to every worker in the loop config: the same object, so nothing is fetched per rank by accident
(each rank then reads only its own shard, see :mod:`giellm_ray.train.resume`). Ray Train V2
rejects ``TorchTrainer(resume_from_checkpoint=...)``, hence the worker config. Workers run
:func:`giellm_ray.train.loop.train_loop_per_worker` and write the final Hugging Face export to
``<run>/export``; after the run the driver removes checkpoint directories Ray's record does not
keep (orphans of workers killed between upload and report), writes the resolved config beside the
export (``train_config.yaml``) and returns where it is. Needs Ray first (``giellm train`` /
``jobs/train.py`` join or start it via :func:`giellm_ray.ray_session.connect_ray`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass

from giellm_ray import io
from giellm_ray.config import dump_config
from giellm_ray.ray_session import connect_ray
from giellm_ray.schema import DATASET, PROMPT, TARGET, TEXT
from giellm_ray.train.checkpoints import check_trusted, read_state, remove_orphans, uri
from giellm_ray.train.config import TrainConfig, WorkerConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a finished run left its outputs."""

    export_dir: str | None
    checkpoint: str | None
    metrics: dict


def read_dataset(path: str, columns: list[str]):
    """A Ray Dataset over a Parquet file/dir (local or ``s3://``) with only ``columns``.

    SFT corpora are small (the paper's is 4,500 rows), so the driver reads the table with
    pyarrow and hands it to Ray Data: no read tasks to schedule, which on a small box whose CPUs
    Train has reserved would wait for a CPU budget that never comes. For a corpus too big for
    the driver, ``ray.data.read_parquet(path, filesystem=...)`` is the drop-in replacement.
    """
    import ray.data

    from giellm_ray.log import is_quiet, quiet_ray_data_console

    quiet_ray_data_console()
    # Ray Train's split coordinator would draw Ray Data's bars into the job log: a terminal only.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty() and not is_quiet()
    if not io.exists(path):
        raise FileNotFoundError(f"training data not found: {path}")
    # io.read_parquet reads only ``columns`` and names any that are missing.
    return ray.data.from_arrow(io.read_parquet(path, columns))


def prepare_base_model(cfg: TrainConfig) -> str:
    """The base model path; for ``tiny``, build it from the corpus into ``<run>/base-model``."""
    if cfg.model.name_or_path != "tiny":
        return cfg.model.name_or_path
    from giellm_ray.model.tiny import build_tiny_from_corpus

    dest = io.join(io.absolute(cfg.run_dir()), "base-model")
    return build_tiny_from_corpus(
        dest, list(filter(None, [cfg.data.train, cfg.data.eval])), cfg.tiny
    )


def storage_filesystem(path: str):
    """``(filesystem, path)`` Ray Train writes checkpoints through: pyarrow's native S3 client
    for ``s3://`` (multipart uploads in C++, picklable to the workers), else local."""
    return io.resolve_native(io.absolute(path))


def resume_checkpoint(cfg: TrainConfig):
    """``resume_from`` as one ``ray.train.Checkpoint``, built here and shipped to every worker
    (``None`` without one). Refused outside ``storage_path`` unless ``trust_checkpoint``."""
    if not cfg.resume_from:
        return None
    import ray.train

    check_trusted(io.absolute(cfg.resume_from), io.absolute(cfg.storage_path), cfg.trust_checkpoint)
    fs, path = storage_filesystem(cfg.resume_from)
    if read_state(fs, path) is None:
        raise ValueError(
            f"resume_from {cfg.resume_from} is not a training checkpoint "
            "(no readable train_state.json)"
        )
    return ray.train.Checkpoint(path, filesystem=fs)


def build_trainer(cfg: TrainConfig, model_path: str, resume=None):
    """The ``TorchTrainer`` for ``cfg`` (not started); ``resume`` from :func:`resume_checkpoint`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from giellm_ray.train.loop import train_loop_per_worker

    datasets = {"train": read_dataset(cfg.data.train, [PROMPT, TARGET])}
    eval_rows = 0
    if cfg.data.eval:
        eval_columns = [PROMPT, TARGET, DATASET] + ([TEXT] if cfg.eval.constrained else [])
        datasets["eval"] = read_dataset(cfg.data.eval, eval_columns)
        eval_rows = datasets["eval"].count()
    metrics_on = cfg.generation_eval(eval_rows)
    if eval_rows and cfg.zero_stage == 3 and not metrics_on:
        log.info(
            "eval: loss only at ZeRO-3 (generation would all-gather the model every token); "
            "for the metrics run `giellm score` on the export"
        )
    max_rows = cfg.eval.max_rows or eval_rows
    storage_fs, storage = storage_filesystem(cfg.storage_path)
    from giellm_ray.formats import TaskRegistry

    worker = WorkerConfig(
        train=cfg,
        model_path=model_path,
        export_dir=io.join(io.absolute(cfg.run_dir()), "export"),
        resume_from=resume,
        has_eval=bool(eval_rows),
        eval_metrics=metrics_on,
        eval_max_rows_per_rank=math.ceil(max_rows / cfg.num_workers) if eval_rows else 0,
        tasks=TaskRegistry.load(cfg.tasks).to_dict() if cfg.tasks else None,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"worker": worker},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=dict(cfg.resources_per_worker) or None,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=storage,
            storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train, export, write the resolved config beside the export; raise if the run failed."""
    if not cfg.data.train:
        raise ValueError(
            "data.train is required (a Parquet file or directory; e.g. --set data.train=PATH)"
        )
    resume = resume_checkpoint(cfg)  # before any work: an untrusted checkpoint is refused
    model_path = prepare_base_model(cfg)
    connect_ray()  # after every check that needs no Ray (as run_score, start_service, run_mre)
    result = build_trainer(cfg, model_path, resume).fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    fs, _ = storage_filesystem(cfg.storage_path)
    kept = {c.path for c, _ in result.best_checkpoints or []}
    for path in remove_orphans(fs, result.path, kept):
        log.info(
            "removed checkpoint %s: not in Ray's record (a worker died before reporting "
            "it) or superseded",
            path,
        )
    export_dir = None
    if cfg.export.enabled:
        export_dir = io.join(io.absolute(cfg.run_dir()), "export")
        resolved = cfg.model_copy(deep=True)
        resolved.model.name_or_path = model_path
        dump_config(resolved, io.join(export_dir, "train_config.yaml"))
        if result.metrics and result.metrics.get("eval_counts"):
            from giellm_ray.metrics import write_report

            write_report(
                json.loads(result.metrics["eval_counts"]),
                io.join(export_dir, "eval"),
                title=f"{cfg.run_name}: end-of-training evaluation",
            )
    checkpoint = None
    if result.checkpoint is not None:
        checkpoint = uri(result.checkpoint.filesystem, result.checkpoint.path)
    return TrainResult(
        export_dir=export_dir, checkpoint=checkpoint, metrics=dict(result.metrics or {})
    )
