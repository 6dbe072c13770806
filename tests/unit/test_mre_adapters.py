"""``giellm mre --set lora.r=16`` without Ray: every run's TrainConfig carries the LoRA settings and
one base, a LoRA export is recognised by its adapter directory, each run's test rows are copied
with its name in the ``adapter`` column, counts split back per adapter, and one ScoreConfig per
base lists every run's adapter (the last needs ``ScoreConfig.adapters`` from the adapters branch:
it is skipped until that is merged; the lead runs it after the merge)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from giellm_ray import io
from giellm_ray.config import dump_config
from giellm_ray.mre import adapters as A
from giellm_ray.mre import plan as P
from giellm_ray.mre.inputs import resolve_jobs, sample_mix
from giellm_ray.mre.runner import trained_export
from giellm_ray.score.config import ScoreConfig


@pytest.fixture(scope="module")
def lora_jobs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mre-lora"))
    cfg = P.MreConfig(output=out, quick=True, train_overrides=["lora.r=16"])
    mix = sample_mix(cfg, out)
    manifest = json.loads(Path(mix, "manifest.json").read_text())
    runs = P.make_plan(mix, out, manifest, list(P.QUICK_DATASETS), repeats=1)
    return out, mix, resolve_jobs(cfg, out, mix, runs)


def test_lora_runs_share_one_recipe_and_are_recognised_by_their_adapter(lora_jobs, tmp_path):
    out, mix, jobs = lora_jobs
    assert all(A.is_lora(j) and j.train.lora.r == 16 for j in jobs)
    assert all(j.train.tasks == f"{mix}/tasks.json" for j in jobs)
    assert len(A.groups_by_base(jobs)) == 1  # one seed: one base for every adapter
    t = jobs[0].train.model_copy(update={"storage_path": str(tmp_path)})
    export = tmp_path / t.run_name / "export"
    dump_config(t, str(export / "train_config.yaml"))
    (export / "config.json").write_text("{}")
    assert trained_export(t) is None  # a LoRA export is its adapter, not a full model
    (export / "adapter").mkdir()
    (export / "adapter" / "adapter_config.json").write_text("{}")
    assert trained_export(t) == str(export)


def test_inputs_carry_the_adapter_and_counts_split_by_it(lora_jobs):
    out, _, jobs = lora_jobs
    paths = {j.run.name: A.prepare_inputs(j, out) for j in jobs[:2]}
    for name, files in paths.items():
        for f in files:
            assert set(pq.read_table(f).column(A.ADAPTER).to_pylist()) == {name}
    # A scored directory as the score job writes it: input columns plus the prediction.
    scored = Path(out, "scored-test")
    scored.mkdir()
    for name, files in paths.items():
        t = pq.read_table(files[0])
        t = t.append_column("prediction", t.column("target"))  # a perfect model
        pq.write_table(t, scored / f"{name}.parquet")
    from giellm_ray.formats import TaskRegistry

    registry = TaskRegistry.load(jobs[0].score.tasks)
    counts = A.counts_by_adapter(str(scored), registry)
    assert set(counts) == set(paths)
    for name, files in paths.items():
        n = pq.read_table(files[0]).num_rows
        assert sum(c["n"] for c in counts[name].values()) == n
        assert all(c["all_correct"] == c["n"] for c in counts[name].values())


@pytest.mark.skipif(
    "adapters" not in ScoreConfig.model_fields,
    reason="ScoreConfig.adapters comes with the adapters branch",
)
def test_one_score_config_per_base_lists_every_adapter(lora_jobs):
    out, _, jobs = lora_jobs
    exports = {j.run.name: io.join(out, "runs", j.run.name, "export") for j in jobs}
    scfg = A.score_config(jobs, out, exports)
    assert scfg.model.name_or_path == jobs[0].train.model.name_or_path
    assert scfg.adapters == {n: f"{e}/adapter" for n, e in exports.items()}
    assert len(scfg.input) == sum(len(j.run.test) for j in jobs)
    table = pa.concat_tables([pq.read_table(p) for p in scfg.input])
    assert set(table.column(A.ADAPTER).to_pylist()) == set(exports)
