"""What ``giellm mre`` runs: the settings, the datasets compared, one :class:`Run` per model.

Pure (no torch, no Ray, no I/O): the runner reads the mix's ``manifest.json`` and hands it here.
For repeat ``i`` the seed is ``i`` (``--repeats 3``: seeds 0, 1, 2; a later ``--repeats 5``
reuses the first three). Per seed there is one **mixed** run, trained on ``MIX/train.parquet`` (the
whole mix) and scored on the concatenation of ``MIX/single/<ds>/test.parquet`` for the compared
datasets, and one **single** run per compared dataset, trained on ``MIX/single/<ds>/train.parquet``
and scored on ``MIX/single/<ds>/test.parquet``: mixed and single see exactly the same test rows.
Every run gets the same train config; the plan only sets ``data.train``, ``run_name`` and the seed
(``data.seed``: shuffling, batching, ``torch.manual_seed``; ``tiny.seed``: the tiny model's init,
which the runner builds once per seed and shares between both sides), so the recipe cannot drift
between the two sides.

Resources: a run keeps the recipe's ``num_workers`` and per-worker resources. ``--parallel N``
runs up to N of them side by side (one thread each driving its own ``run_training`` /
``run_score``); :func:`runs_that_fit` says how many fit the cluster at once, the rest queue in
Ray. Arithmetic for the 13B recipe (ZeRO-3, 8 workers, batch 1 per GPU): model states are
16 B/param (bf16 weights 2 + bf16 grads 2 + fp32 master 4 + Adam m, v 8) = 208 GB, 26 GB per GPU
on 8 x 80 GB, so one run fills one p4de node with room for activations. Its step is ~1.6e14 FLOPs
per GPU (6 x 13e9 x 2,048 tokens), ~1 s at 150 TFLOP/s, against ~78 GB of ZeRO-3 all-gather +
reduce-scatter per GPU per step over NVLink (~0.4 s at 200 GB/s). Spanning two nodes would put that
traffic on EFA (50 GB/s per node): 4x slower links for the same bytes. So side by side means one
run per node: ``--parallel`` = number of 8-GPU nodes, nothing in the recipe changed. Two runs on
one node (``--set num_workers=4 --set grad_accum=2``, same global batch 8) fit (52 GB of states
per GPU) but each GPU still moves the same all-gather bytes per step, so it buys no throughput.
On a 2-core machine the tiny recipe takes 1.5 of 2 CPUs: sequential (the default, ``--parallel
1``). Measured there (``benchmarks/mre_parallel.py``, quiet machine, the quick run's 3 runs):
115 s with 2 workers per run, 103 s with 1, 87 s with 1 and ``--parallel 2``: tiny runs are
start-up latency that overlaps, though each run's training slows from 24 s to 36 s.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from pydantic import Field

from giellm_ray.config import StrictModel
from giellm_ray.data.sink import safe_name
from giellm_ray.errors import UserError
from giellm_ray.metrics.report import DATASET_ORDER

# Keys the plan sets per run; a user --set of one of them would break the comparison.
RESERVED_TRAIN = ("data.train", "run_name", "data.seed", "tiny.seed")
RESERVED_SCORE = ("input", "output", "model.name_or_path")

QUICK_DATASETS = ("SCNM", "SCPOS:RW")
QUICK_TRAIN_ROWS = 40
"""Training rows per dataset drawn from the shipped sample by ``--quick``."""
QUICK_TEST_ROWS = 8
"""Test rows per dataset by ``--quick``."""
# Over jobs/configs/train/tiny-cpu.yaml: 2 epochs (10 optimizer steps for the 80-row mix), no
# intermediate checkpoints. The tiny model learns next to nothing in that: the point is the path.
QUICK_TRAIN = ("epochs=2", "checkpoint_every_steps=null", "keep_checkpoints=1", "log_every_steps=5")
# Over jobs/configs/score/cpu.yaml: one actor (a dozen rows do not need two processes), short
# outputs (sample targets are under ~40 tokens; an untrained model would babble to the bound).
QUICK_SCORE = (
    "num_actors=1",
    "num_cpus_per_actor=1",
    "progress_bars=false",
    "generation.max_new_tokens=48",
)
QUICK_DISCLAIMER = (
    "--quick: a ~0.2M-parameter model trained from scratch for seconds on synthetic, templated "
    "sentences. This run shows the mechanics of the comparison only; its numbers say nothing "
    "about the size, or even the sign, of the Mutual Reinforcement Effect. That needs a "
    "pretrained 7B/13B base fine-tuned on the paper's data on GPUs."
)


class MreConfig(StrictModel):
    """One ``giellm mre`` invocation (the command-line flags, validated)."""

    output: str
    """Directory (local or ``s3://``) for data (sample mixes), runs, scored outputs and reports."""
    data: str | None = None
    """A mix directory written by ``giellm data mix``; ``None``: build one from the shipped
    sample into ``OUTPUT/data``."""
    train_config: str | None = None
    """TrainConfig YAML used for every run (``--quick``: ``tiny-cpu.yaml``)."""
    score_config: str | None = None
    """ScoreConfig YAML; ``None``: ``gpu.yaml`` when the recipe trains on GPUs, else ``cpu.yaml``."""
    datasets: list[str] | None = None
    """Datasets to compare (single-task runs); ``None``: every dataset with train and test rows."""
    train_overrides: list[str] = []
    """``--set`` overrides for the train config (all runs)."""
    score_overrides: list[str] = []
    """``--score-set`` overrides for the score config (all runs)."""
    repeats: int = Field(1, ge=1)
    """Runs per side with seeds 0..repeats-1; the report shows mean ± sample std over them."""
    parallel: int = Field(1, ge=1)
    """Runs driven side by side (threads), each with the recipe's own resources."""
    quick: bool = False
    """Laptop size: shipped sample, tiny model, two datasets, a few dozen rows."""
    sample_train_rows: int | None = None
    """Per dataset, training rows drawn from the sample when ``data`` is ``None`` (``None``: all)."""
    sample_test_rows: int | None = None
    """Per dataset, test rows drawn from the sample when ``data`` is ``None`` (``None``: all)."""


@dataclass(frozen=True)
class Run:
    """One model: how it is trained and on which test rows it is scored."""

    name: str
    kind: str  # "mixed" | "single"
    seed: int
    datasets: tuple[str, ...]  # the datasets this run is compared on
    train: str  # training Parquet
    test: tuple[str, ...]  # scoring inputs
    scored: str  # score output directory

    def train_overrides(self) -> list[str]:
        """The per-run keys, applied after every user override."""
        return [
            f"data.train={json.dumps(self.train)}",
            f"run_name={json.dumps(self.name)}",
            f"data.seed={self.seed}",
            f"tiny.seed={self.seed}",
        ]

    def to_dict(self) -> dict:
        return asdict(self)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _key(assignment: str) -> str:
    return assignment.split("=", 1)[0].strip()


def check_overrides(overrides: list[str], reserved: tuple[str, ...], flag: str) -> None:
    """Refuse user overrides of keys the plan sets per run (they would break the pairing)."""
    for assignment in overrides:
        if _key(assignment) in reserved:
            raise UserError(
                f"{flag} {assignment}: giellm mre sets {_key(assignment)} for each "
                f"run itself (reserved: {', '.join(reserved)})"
            )


def select_datasets(manifest: dict, requested: list[str] | None, mix_dir: str) -> list[str]:
    """The datasets to compare, in the paper's order; errors name what the mix has."""
    entries = manifest.get("datasets") or {}
    usable = [d for d, e in entries.items() if e.get("path") and e.get("train") and e.get("test")]
    if requested:
        for name in requested:
            if name not in entries:
                raise UserError(
                    f"dataset {name!r} is not in {mix_dir}/manifest.json; it has {sorted(entries)}"
                )
            if name not in usable:
                e = entries[name]
                raise UserError(
                    f"dataset {name!r} has {e.get('train', 0)} training and "
                    f"{e.get('test', 0)} test rows in {mix_dir}; both are needed"
                )
        chosen = list(dict.fromkeys(requested))
    else:
        chosen = usable
    if not chosen:
        raise UserError(
            f"{mix_dir}: no dataset has both training and test rows "
            f"(manifest: {json.dumps(entries, ensure_ascii=False)})"
        )
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    return sorted(chosen, key=lambda d: (order.get(d, len(order)), d))


def run_name(kind: str, seed: int, dataset: str | None = None) -> str:
    return f"mixed-seed{seed}" if kind == "mixed" else f"single-{safe_name(dataset)}-seed{seed}"


def make_plan(
    mix_dir: str, output: str, manifest: dict, datasets: list[str], repeats: int
) -> list[Run]:
    """Per seed: the mixed run, then one single run per dataset."""
    paths = {d: _join(mix_dir, manifest["datasets"][d]["path"]) for d in datasets}
    runs = []
    for seed in range(repeats):
        name = run_name("mixed", seed)
        runs.append(
            Run(
                name,
                "mixed",
                seed,
                tuple(datasets),
                _join(mix_dir, "train.parquet"),
                tuple(_join(paths[d], "test.parquet") for d in datasets),
                _join(output, "scored", name),
            )
        )
        for d in datasets:
            name = run_name("single", seed, d)
            runs.append(
                Run(
                    name,
                    "single",
                    seed,
                    (d,),
                    _join(paths[d], "train.parquet"),
                    (_join(paths[d], "test.parquet"),),
                    _join(output, "scored", name),
                )
            )
    return runs


def training_footprint(
    num_workers: int, use_gpu: bool, resources_per_worker: dict[str, float]
) -> dict[str, float]:
    """Ray resources one training run reserves (Ray Train: 1 CPU per worker unless given)."""
    per = dict(resources_per_worker) or {"CPU": 1.0}
    if use_gpu:
        per.setdefault("GPU", 1.0)
    return {k: v * num_workers for k, v in per.items() if v}


def runs_that_fit(cluster: dict[str, float], need: dict[str, float]) -> int:
    """How many runs of footprint ``need`` the cluster's resources hold at once (0 if none)."""
    return min((math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items()), default=0)
