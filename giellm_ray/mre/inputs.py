"""The inputs of the MRE runs: the mix (built from the shipped sample when none is given), every
run's TrainConfig / ScoreConfig and, for the ``tiny`` model, one base model per seed that both
sides start from.

Called by :mod:`giellm_ray.mre.runner` before any training. Configs are validated for all runs
up front (a typo fails before Ray starts); the mix and base models are skipped when they already
exist with the same settings (a resumed invocation rebuilds nothing).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

from giellm_ray import io
from giellm_ray.config import load_config
from giellm_ray.configs import config_path
from giellm_ray.mre import plan

log = logging.getLogger(__name__)


def sample_mix(cfg: plan.MreConfig, output: str) -> str:
    """Build (or reuse) a mix of the shipped sample in ``OUTPUT/data``; return its directory."""
    from giellm_ray.data.mix import build_mix
    from giellm_ray.sample import SIZES, sample_path

    wanted = cfg.datasets or (list(plan.QUICK_DATASETS) if cfg.quick else list(SIZES))
    unknown = [d for d in wanted if d not in SIZES]
    if unknown:
        raise ValueError(f"the shipped sample has no {unknown}; it has {list(SIZES)}")
    train_rows = cfg.sample_train_rows or (plan.QUICK_TRAIN_ROWS if cfg.quick else None)
    test_rows = cfg.sample_test_rows or (plan.QUICK_TEST_ROWS if cfg.quick else None)
    sizes = {d: (train_rows or SIZES[d][0]) if d in wanted else 0 for d in SIZES}
    test_sizes = {d: (test_rows or SIZES[d][1]) if d in wanted else 0 for d in SIZES}
    mix = io.join(output, "data")
    inputs = [sample_path("train"), sample_path("test")]
    manifest = io.join(mix, "manifest.json")
    if io.exists(manifest):
        old = json.loads(io.read_text(manifest))
        if (old.get("sizes"), old.get("test_sizes"), old.get("inputs")) == (
            sizes,
            test_sizes,
            inputs,
        ):
            log.info("mre: reusing the sample mix in %s", mix)
            return mix
    log.info(
        "mre: mixing the shipped sample -> %s (train %s, test %s per dataset)",
        mix,
        {d: n for d, n in sizes.items() if n},
        {d: n for d, n in test_sizes.items() if n},
    )
    build_mix(inputs, mix, seed=0, sizes=sizes, test_sizes=test_sizes)
    return mix


def share_tiny_base(train_configs: list, mix: str, output: str) -> None:
    """With ``model.name_or_path: tiny``, point the TrainConfigs of one seed at one base model
    (in place).

    The train driver would build a tiny model per run from that run's own corpus, so a single
    run's tokenizer and initial weights would differ from the mixed run's. Built here once per
    seed (``tiny.seed``) from the whole mix (which contains every single corpus) into
    ``OUTPUT/base/``, the two sides start from the same weights and tokenizer, as they do from a
    pretrained base.
    """
    from giellm_ray.model.tiny import TINY_MARKER, build_tiny_from_corpus

    for t in train_configs:
        if t.model.name_or_path != "tiny":
            continue
        # Named by its settings (seed included): another shape or seed is another directory.
        spec = json.dumps(t.tiny.model_dump(mode="json"), sort_keys=True)
        dest = io.join(output, "base", f"tiny-{hashlib.sha1(spec.encode()).hexdigest()[:10]}")
        if not io.exists(io.join(dest, TINY_MARKER)):
            build_tiny_from_corpus(dest, [io.join(mix, "train.parquet")], t.tiny, reuse=True)
            log.info("mre: built the shared tiny base model (%s) -> %s", spec, dest)
        t.model.name_or_path = dest


@dataclass
class Job:
    """A planned run with its resolved configs."""

    run: plan.Run
    train: object  # TrainConfig
    score: object  # ScoreConfig


def train_config_path(cfg: plan.MreConfig) -> str:
    """The TrainConfig YAML every run uses; required unless ``--quick``."""
    if cfg.train_config:
        return cfg.train_config
    if cfg.quick:
        return config_path("train", "tiny-cpu.yaml")
    raise ValueError(
        "--config is required: a TrainConfig YAML used for every run, e.g. "
        "jobs/configs/train/giellm-13b-jp.yaml (--quick uses tiny-cpu.yaml)"
    )


def resolve_jobs(cfg: plan.MreConfig, output: str, mix: str, runs: list[plan.Run]) -> list[Job]:
    """Every run's TrainConfig and ScoreConfig, validated up front (a typo fails before Ray)."""
    from giellm_ray.score.config import ScoreConfig
    from giellm_ray.train.config import TrainConfig

    plan.check_overrides(cfg.train_overrides, plan.RESERVED_TRAIN, "--set")
    plan.check_overrides(cfg.score_overrides, plan.RESERVED_SCORE, "--score-set")
    train_path = train_config_path(cfg)
    base_train = [
        f"storage_path={json.dumps(io.join(output, 'runs'))}",
        "data.eval=null",
        *(plan.QUICK_TRAIN if cfg.quick else ()),
        *cfg.train_overrides,
    ]
    tasks = io.join(mix, "tasks.json")
    if io.exists(tasks):  # training's own evaluation uses the mix's task inventory too
        base_train.insert(0, f"tasks={json.dumps(tasks)}")
    base_score = [
        *([f"tasks={json.dumps(tasks)}"] if io.exists(tasks) else []),
        *(plan.QUICK_SCORE if cfg.quick else ()),
        *cfg.score_overrides,
    ]
    jobs = []
    for run in runs:
        tcfg = load_config(TrainConfig, train_path, [*base_train, *run.train_overrides()])
        score_path = cfg.score_config or config_path(
            "score", "gpu.yaml" if tcfg.use_gpu else "cpu.yaml"
        )
        export = io.join(io.absolute(tcfg.run_dir()), "export")
        scfg = load_config(
            ScoreConfig,
            score_path,
            [
                *base_score,
                f"input={json.dumps(list(run.test))}",
                f"output={json.dumps(run.scored)}",
                f"model.name_or_path={json.dumps(export)}",
            ],
        )
        jobs.append(Job(run, tcfg, scfg))
    return jobs
