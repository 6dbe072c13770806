"""Drives the MRE runs through the public drivers: ``run_training``, then ``run_score``, resumable.

``run_mre(cfg)`` finds or builds the mix (``--quick`` / no ``--data``: the shipped sample through
:func:`giellm_ray.data.mix.build_mix` into ``OUTPUT/data``), lays out the runs
(:mod:`giellm_ray.mre.plan`), validates every run's TrainConfig / ScoreConfig before any work,
joins or starts Ray once, trains and scores each run, recomputes per-dataset counts from the
scored Parquet with :mod:`giellm_ray.metrics` and writes the report (:mod:`giellm_ray.mre.report`).

Layout under OUTPUT: ``plan.json``, ``runs/<run>/`` (the training storage; ``--set storage_path``
moves it), ``scored/<run>/`` (score outputs), ``state/<run>.json`` (what was done, with which
configs), ``mre.{json,md,png}``. Resume: a run whose ``export/train_config.yaml`` exists is not
retrained (a different recipe there is an error, never silently reused or overwritten); a score
whose ``_SUCCESS`` exists and whose state records the same model, inputs and score config, written
after the model's training, is not redone. Anything else is (re)done, so an interrupted invocation
finishes on the next. On a multi-node cluster OUTPUT must be shared storage (``s3://``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from giellm_ray import io
from giellm_ray.config import load_config
from giellm_ray.configs import config_path
from giellm_ray.errors import UserError
from giellm_ray.mre import plan
from giellm_ray.mre.adapters import groups_by_base, is_lora, score_group
from giellm_ray.mre.inputs import (
    Job,
    resolve_jobs,
    sample_mix,
    share_tiny_base,
    train_config_path,
)
from giellm_ray.mre.report import build_mre, write_mre

log = logging.getLogger(__name__)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {prefix + k: v})
    return out


def trained_export(tcfg) -> str | None:
    """The export dir when this run was already trained with this recipe, else ``None``."""
    from giellm_ray.train.config import TrainConfig

    export = io.join(io.absolute(tcfg.run_dir()), "export")
    marker = io.join(export, "train_config.yaml")
    # The driver writes train_config.yaml after the workers wrote the model (config.json; a
    # LoRA run: adapter/adapter_config.json).
    model_file = (
        "adapter/adapter_config.json" if getattr(tcfg, "lora", None) is not None else "config.json"
    )
    if not (io.exists(marker) and io.exists(io.join(export, model_file))):
        return None
    stored = _flat(load_config(TrainConfig, marker).model_dump(mode="json"))
    wanted = _flat(tcfg.model_dump(mode="json"))
    diff = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
    if diff:
        detail = "; ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in diff[:6])
        raise UserError(
            f"{export} was trained with another recipe ({detail}). Use another "
            "--output, or delete that run to retrain it."
        )
    return export


def _state_path(output: str, run: plan.Run) -> str:
    return io.join(output, "state", f"{run.name}.json")


def _read_state(path: str) -> dict:
    return json.loads(io.read_text(path)) if io.exists(path) else {}


def _train(job: Job, output: str, label: str) -> tuple[str, str, float]:
    """Train unless exported with this recipe; ``(export, status, seconds)``."""
    from giellm_ray.train.driver import run_training

    export = trained_export(job.train)
    if export:
        log.info("mre: %s: already trained -> %s", label, export)
        return export, "resumed", 0.0
    log.info("mre: %s: training on %s", label, job.run.train)
    start = time.monotonic()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        result = run_training(job.train)
    finally:
        if in_main:  # the trainer's Ctrl-C handler points at a finished controller afterwards
            signal.signal(signal.SIGINT, previous)
    seconds = time.monotonic() - start
    if not result.export_dir:
        raise UserError(
            f"{job.run.name}: the train config has export: false; giellm mre "
            "scores the exported model"
        )
    # A fresh model invalidates any earlier score of this run.
    io.write_text(
        _state_path(output, job.run),
        json.dumps(
            {"run": job.run.name, "export": result.export_dir, "train_s": seconds, "scored": None},
            indent=2,
        ),
    )
    log.info("mre: %s: trained in %.1f s -> %s", label, seconds, result.export_dir)
    return result.export_dir, "trained", seconds


def _score(job: Job, output: str, export: str, retrained: bool, label: str) -> tuple[str, float]:
    """Score unless committed for this model/inputs/config; ``(status, seconds)``."""
    from giellm_ray.score.driver import SUCCESS, run_score

    state_path = _state_path(output, job.run)
    state = _read_state(state_path)
    record = {
        "model": export,
        "inputs": list(job.run.test),
        "score_config": job.score.model_dump(mode="json"),
    }
    done = state.get("scored") or {}
    if (
        not retrained
        and io.exists(io.join(job.run.scored, SUCCESS))
        and {k: done.get(k) for k in record} == record
    ):
        log.info("mre: %s: already scored -> %s", label, job.run.scored)
        return "resumed", 0.0
    log.info("mre: %s: scoring %s", label, ", ".join(job.run.test))
    start = time.monotonic()
    run_score(job.score)
    seconds = time.monotonic() - start
    state.update(run=job.run.name, export=export, scored={**record, "score_s": seconds})
    io.write_text(state_path, json.dumps(state, ensure_ascii=False, indent=2))
    log.info("mre: %s: scored in %.1f s -> %s", label, seconds, job.run.scored)
    return "scored", seconds


def scored_counts(scored: str, registry) -> tuple[list[str], dict]:
    """The scored Parquet files and their per-dataset counts (streamed, three columns)."""
    from giellm_ray.metrics import count_scored

    files = io.parquet_files(scored)
    return files, count_scored(files, registry)


def finish(
    job: Job, output: str, registry, label: str, export: str, train_status: str, train_s: float
) -> dict:
    """Score a trained run (unless already scored) and count its rows: its report record."""
    score_status, score_s = _score(job, output, export, train_status == "trained", label)
    files, counts = scored_counts(job.run.scored, registry)
    run = job.run
    return {
        "name": run.name,
        "kind": run.kind,
        "seed": run.seed,
        "datasets": list(run.datasets),
        "model": export,
        "scored": run.scored,
        "files": files,
        "counts": counts,
        "status": {"train": train_status, "score": score_status},
        "seconds": {"train": round(train_s, 1), "score": round(score_s, 1)},
    }


def run_all(jobs: list[Job], output: str, registry, parallel: int) -> list[dict]:
    """Every job: trained ``parallel`` at a time, scored one at a time, records in plan order.

    Scoring is serialised: two Ray Data jobs side by side each hold their actors' CPUs and can
    starve each other's read tasks (seen here: two quick scorings on 2 CPUs stalled until
    interrupted), and on a GPU cluster one scoring job already uses every actor it is given.
    Trainings go on while a finished run is scored. After a training failure no new run starts;
    runs already going finish and queued scores are done (all kept for the next invocation),
    then the error is raised.
    """
    labels = {j.run.name: f"[{i}/{len(jobs)}] {j.run.name}" for i, j in enumerate(jobs, 1)}
    if is_lora(jobs[0]):
        return run_all_adapters(jobs, output, registry, parallel, labels)
    if parallel == 1:
        return [
            finish(j, output, registry, labels[j.run.name], *_train(j, output, labels[j.run.name]))
            for j in jobs
        ]
    trainers = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="mre-train")
    scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mre-score")
    try:
        trains = {trainers.submit(_train, j, output, labels[j.run.name]): j for j in jobs}
        scores, failed = [], None
        for fut in as_completed(trains):
            if fut.cancelled():
                continue
            if fut.exception() is not None:
                if failed is None:
                    failed = fut.exception()
                    log.error(
                        "mre: %s failed; letting the runs in progress finish", trains[fut].run.name
                    )
                    for other in trains:
                        other.cancel()
                continue
            job = trains[fut]
            scores.append(
                scorer.submit(finish, job, output, registry, labels[job.run.name], *fut.result())
            )
        records = {r["name"]: r for r in (s.result() for s in scores)}
        if failed is not None:
            raise failed
        return [records[j.run.name] for j in jobs]
    finally:  # Ctrl-C: return at once; Ray's shutdown ends the runs still going
        trainers.shutdown(wait=False, cancel_futures=True)
        scorer.shutdown(wait=False, cancel_futures=True)


def run_all_adapters(
    jobs: list[Job], output: str, registry, parallel: int, labels: dict[str, str]
) -> list[dict]:
    """LoRA: train every run's adapter (``parallel`` at a time), then score each base's adapters
    in one job (:mod:`giellm_ray.mre.adapters`); records in plan order."""
    exports, trained = {}, {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="mre-train") as pool:
        futures = {j.run.name: pool.submit(_train, j, output, labels[j.run.name]) for j in jobs}
        for name, fut in futures.items():
            export, status, seconds = fut.result()
            exports[name], trained[name] = export, (status, seconds)
    records = {}
    for group in groups_by_base(jobs).values():
        for rec in score_group(group, output, exports, registry, trained):
            records[rec["name"]] = rec
    return [records[j.run.name] for j in jobs]


def _check_fit(jobs: list[Job], parallel: int) -> None:
    import ray

    t = jobs[0].train
    need = plan.training_footprint(t.num_workers, t.use_gpu, t.resources_per_worker)
    fit = plan.runs_that_fit(ray.cluster_resources(), need)
    log.info(
        "mre: %d runs, %d at a time; one training run reserves %s, the cluster has room for %d now",
        len(jobs),
        parallel,
        need,
        fit,
    )
    if parallel > max(fit, 1):
        log.warning(
            "mre: --parallel %d but only %d run(s) fit the cluster now: the rest wait "
            "for resources (an autoscaling cluster may add nodes)",
            parallel,
            fit,
        )


def _meta(cfg: plan.MreConfig, mix: str, manifest: dict, datasets: list[str], gpu: bool) -> dict:
    """What ran, for the head of mre.json (configs by path plus the overrides applied)."""
    return {
        "title": "Mixed vs single-task training (MRE)",
        "quick": cfg.quick,
        "disclaimer": plan.QUICK_DISCLAIMER if cfg.quick else None,
        "mix": mix,
        "mix_seed": manifest.get("seed"),
        "datasets_compared": datasets,
        "repeats": cfg.repeats,
        "train_config": train_config_path(cfg),
        "train_overrides": [*(plan.QUICK_TRAIN if cfg.quick else ()), *cfg.train_overrides],
        "score_config": cfg.score_config or config_path("score", "gpu.yaml" if gpu else "cpu.yaml"),
        "score_overrides": [*(plan.QUICK_SCORE if cfg.quick else ()), *cfg.score_overrides],
    }


def run_mre(cfg: plan.MreConfig) -> dict:
    """Run the comparison; return the ``mre.json`` object (also written to OUTPUT)."""
    from giellm_ray.deps import require
    from giellm_ray.formats import TaskRegistry
    from giellm_ray.ray_session import connect_ray

    start = time.monotonic()
    train_config_path(cfg)  # a missing --config fails before any work
    output = io.absolute(cfg.output)
    mix = io.absolute(cfg.data) if cfg.data else sample_mix(cfg, output)
    manifest_path = io.join(mix, "manifest.json")
    if not io.exists(manifest_path):
        raise FileNotFoundError(
            f"{manifest_path} not found: --data takes a directory written "
            "by `giellm data mix` (train.parquet, single/<dataset>/...)"
        )
    manifest = json.loads(io.read_text(manifest_path))
    datasets = plan.select_datasets(manifest, cfg.datasets, mix)
    runs = plan.make_plan(mix, output, manifest, datasets, cfg.repeats)
    missing = [p for r in runs for p in (r.train, *r.test) if not io.exists(p)]
    if missing:
        raise FileNotFoundError(f"{mix} lacks {sorted(set(missing))}")
    jobs = resolve_jobs(cfg, output, mix, runs)
    require("train")
    share_tiny_base([j.train for j in jobs], mix, output)
    for job in jobs:  # an export made with another recipe stops us now, not hours later
        trained_export(job.train)
    require("score", engine=getattr(jobs[0].score, "engine", "hf"))
    registry = TaskRegistry.load(jobs[0].score.tasks)
    io.write_text(
        io.join(output, "plan.json"),
        json.dumps(
            {
                "mix": mix,
                "datasets": datasets,
                "seeds": list(range(cfg.repeats)),
                "parallel": cfg.parallel,
                "runs": [r.to_dict() for r in runs],
            },
            ensure_ascii=False,
            indent=2,
        ),
    )
    log.info(
        "mre: %d datasets %s, %d seed(s): %d training + scoring runs -> %s",
        len(datasets),
        datasets,
        cfg.repeats,
        len(runs),
        output,
    )
    started = connect_ray()
    try:
        _check_fit(jobs, cfg.parallel)
        records = run_all(jobs, output, registry, cfg.parallel)
    finally:
        if started:
            import ray

            ray.shutdown()
    meta = _meta(cfg, mix, manifest, datasets, jobs[0].train.use_gpu)
    meta["seconds"] = round(time.monotonic() - start, 1)
    mre = build_mre(records, datasets, meta)
    paths = write_mre(mre, output)
    log.info("mre: wrote %s", ", ".join(paths.values()))
    return mre
