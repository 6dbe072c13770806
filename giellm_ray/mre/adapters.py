"""MRE with LoRA (``giellm mre --set lora.r=16``): every run trains an adapter on one shared base,
and all adapters of a base are scored in ONE job, each row choosing its adapter by the ``adapter``
column (``ScoreConfig.adapters``; see the adapters contract).

Why one job: the mixed run and the 6 single-task runs are 7 adapters (~0.9 GB each at 13B r 16)
on one 26 GB base, so one engine per GPU holds them all, where 7 full models would be 7 model
loads (7 x 26 GB read and 7 engine start-ups). The test rows of each run are copied with that
run's name in the ``adapter`` column into ``OUTPUT/adapter-inputs/<run>/``, scored together into
``OUTPUT/scored/adapters-<base>/``, and the counts are split back per run by that column.
With ``repeats > 1`` the tiny model has one base per seed (``tiny.seed``): one job per base.
"""

from __future__ import annotations

import hashlib
import logging
import time

from giellm_ray import io
from giellm_ray.schema import DATASET, PREDICTION, TARGET

log = logging.getLogger(__name__)

ADAPTER = "adapter"  # giellm_ray.schema.ADAPTER in the adapters contract
ADAPTER_SUBDIR = "adapter"  # a LoRA export's adapter directory (giellm_ray.train.lora)


def is_lora(job) -> bool:
    return getattr(job.train, "lora", None) is not None


def groups_by_base(jobs: list) -> dict[str, list]:
    """Jobs grouped by the base model their adapters are trained on, in plan order."""
    out: dict[str, list] = {}
    for job in jobs:
        out.setdefault(job.train.model.name_or_path, []).append(job)
    return out


def prepare_inputs(job, output: str) -> list[str]:
    """The run's test files with its name in the ``adapter`` column (written once)."""
    import pyarrow as pa

    paths = []
    for i, src in enumerate(job.run.test):
        dest = io.join(output, "adapter-inputs", job.run.name, f"{i:03d}.parquet")
        if not io.exists(dest):
            table = io.read_parquet(src)
            if ADAPTER in table.column_names:
                table = table.drop_columns([ADAPTER])
            table = table.append_column(
                ADAPTER, pa.array([job.run.name] * table.num_rows, pa.string())
            )
            io.write_parquet(table, dest)
        paths.append(dest)
    return paths


def score_config(group: list, output: str, exports: dict[str, str]):
    """One ScoreConfig for a base's adapters: the first run's score config on the base model,
    every run's adapter by name, every run's prepared inputs."""
    from giellm_ray.score.config import ScoreConfig

    base = group[0].train.model.name_or_path
    inputs = [p for job in group for p in prepare_inputs(job, output)]
    adapters = {job.run.name: io.join(exports[job.run.name], ADAPTER_SUBDIR) for job in group}
    tag = hashlib.sha1(base.encode()).hexdigest()[:10]
    first = group[0].score.model_dump(mode="json")
    return ScoreConfig.model_validate(
        {
            **first,
            "input": inputs,
            "output": io.join(output, "scored", f"adapters-{tag}"),
            "model": {**first["model"], "name_or_path": base},
            "adapters": adapters,
        }
    )


def counts_by_adapter(scored: str, registry) -> dict[str, dict]:
    """Per-dataset counts of a scored directory, split by the ``adapter`` column."""
    from giellm_ray.metrics import count_rows, merge_counts

    parts: dict[str, list] = {}
    for f in io.parquet_files(scored):
        for batch in io.iter_parquet_batches(f, columns=[ADAPTER, DATASET, TARGET, PREDICTION]):
            cols = [batch.column(i).to_pylist() for i in range(4)]
            for name in set(cols[0]):
                keep = [k for k, a in enumerate(cols[0]) if a == name]
                parts.setdefault(name, []).append(
                    count_rows(
                        [str(cols[1][k]) for k in keep],
                        [cols[2][k] for k in keep],
                        [cols[3][k] for k in keep],
                        registry,
                    )
                )
    return {name: merge_counts(p) for name, p in parts.items()}


def score_group(
    group: list,
    output: str,
    exports: dict[str, str],
    registry,
    trained: dict[str, tuple[str, float]],
) -> list[dict]:
    """Score one base's adapters in one job; the report records of its runs."""
    from giellm_ray.score.driver import run_score

    scfg = score_config(group, output, exports)
    log.info(
        "mre: scoring %d adapters on %s in one job -> %s",
        len(group),
        scfg.model.name_or_path,
        scfg.output,
    )
    start = time.monotonic()
    run_score(scfg)
    seconds = time.monotonic() - start
    counts = counts_by_adapter(scfg.output, registry)
    files = io.parquet_files(scfg.output)
    records = []
    for job in group:
        run = job.run
        status, train_s = trained[run.name]
        records.append(
            {
                "name": run.name,
                "kind": run.kind,
                "seed": run.seed,
                "datasets": list(run.datasets),
                "model": io.join(exports[run.name], ADAPTER_SUBDIR),
                "base": scfg.model.name_or_path,
                "scored": scfg.output,
                "files": files,
                "counts": counts.get(run.name, {}),
                "status": {"train": status, "score": "scored"},
                "seconds": {"train": round(train_s, 1), "score": round(seconds / len(group), 1)},
            }
        )
    return records
