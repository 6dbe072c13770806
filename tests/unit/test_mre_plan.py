"""``giellm mre`` without Ray: the plan (datasets, runs, seeds, pairing, resources), the report
from given counts (means, sample std, paired deltas, the paper's figures, the chart), the configs
each run gets (one recipe for both sides), the resume guard, and the ``jobs/mre.py`` wiring."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from giellm_ray.config import dump_config, load_config
from giellm_ray.configs import config_path
from giellm_ray.metrics import empty_counts, ratios
from giellm_ray.mre import plan
from giellm_ray.mre.inputs import resolve_jobs
from giellm_ray.mre.report import build_mre, markdown, render_chart, summarize
from giellm_ray.mre.runner import trained_export
from giellm_ray.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = {
    "seed": 0,
    "datasets": {
        "SCPOS:RW": {"train": 40, "test": 8, "path": "single/SCPOS_RW"},
        "SCNM": {"train": 40, "test": 8, "path": "single/SCNM"},
        "SCPOS:N": {"train": 0, "test": 30, "path": "single/SCPOS_N"},
        "TCREE": {"train": 10, "test": 0, "path": "single/TCREE"},
    },
}


def test_datasets_default_to_those_with_train_and_test_rows_in_paper_order():
    assert plan.select_datasets(MANIFEST, None, "mix") == ["SCNM", "SCPOS:RW"]
    assert plan.select_datasets(MANIFEST, ["SCPOS:RW"], "mix") == ["SCPOS:RW"]
    with pytest.raises(ValueError, match=r"'NOPE' is not in mix/manifest.json; it has"):
        plan.select_datasets(MANIFEST, ["NOPE"], "mix")
    with pytest.raises(ValueError, match="0 training and 30 test rows"):
        plan.select_datasets(MANIFEST, ["SCPOS:N"], "mix")
    with pytest.raises(ValueError, match="no dataset has both"):
        plan.select_datasets({"datasets": {}}, None, "mix")


def test_plan_pairs_each_single_run_with_the_mixed_run_on_the_same_rows():
    runs = plan.make_plan("s3://b/mix", "s3://b/out", MANIFEST, ["SCNM", "SCPOS:RW"], repeats=3)
    assert [r.name for r in runs[:3]] == [
        "mixed-seed0",
        "single-SCNM-seed0",
        "single-SCPOS_RW-seed0",
    ]
    assert len(runs) == 9 and [r.seed for r in runs] == [0] * 3 + [1] * 3 + [2] * 3
    mixed, scnm, rw = runs[3:6]
    assert mixed.train == "s3://b/mix/train.parquet" and mixed.kind == "mixed"
    assert scnm.train == "s3://b/mix/single/SCNM/train.parquet"
    # The mixed model is scored on exactly the single models' test files, nothing else.
    assert mixed.test == scnm.test + rw.test
    assert rw.test == ("s3://b/mix/single/SCPOS_RW/test.parquet",)
    assert mixed.scored == "s3://b/out/scored/mixed-seed1"
    assert len({r.scored for r in runs}) == len({r.name for r in runs}) == 9
    assert scnm.train_overrides() == [
        'data.train="s3://b/mix/single/SCNM/train.parquet"',
        'run_name="single-SCNM-seed1"',
        "data.seed=1",
        "tiny.seed=1",
    ]


def test_reserved_keys_and_resource_split():
    plan.check_overrides(["lr=2e-5", "data.max_length=512"], plan.RESERVED_TRAIN, "--set")
    with pytest.raises(ValueError, match="sets data.train for each run"):
        plan.check_overrides(["data.train=x.parquet"], plan.RESERVED_TRAIN, "--set")
    with pytest.raises(ValueError, match="--score-set input="):
        plan.check_overrides(["input=[a]"], plan.RESERVED_SCORE, "--score-set")
    # 13B recipe: 8 GPU workers with 8 CPUs each = one p4de node per run.
    need = plan.training_footprint(8, True, {"CPU": 8})
    assert need == {"CPU": 64, "GPU": 8}
    assert plan.runs_that_fit({"CPU": 192 + 16, "GPU": 16}, need) == 2
    assert plan.runs_that_fit({"CPU": 16}, need) == 0  # GPU nodes not up yet
    # tiny-cpu on this 2-core box: 2 workers x 0.75 CPU -> one at a time.
    assert plan.runs_that_fit({"CPU": 2}, plan.training_footprint(2, False, {"CPU": 0.75})) == 1
    assert plan.training_footprint(2, False, {}) == {"CPU": 2}


def test_summarize_is_mean_and_sample_std():
    s = summarize([0.5, 0.7, None, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["count"] == 3
    assert s["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.6]))  # n - 1, i.e. 0.1
    assert (s["min"], s["max"]) == (0.5, 0.7)
    assert summarize([0.4])["std"] is None
    assert summarize([None])["mean"] is None


def _counts(n: int, tl: int, wl: int, tp: int = 0, fp: int = 0, fn: int = 0, fail: int = 0):
    c = empty_counts()
    c.update(
        n=n,
        tl_correct=tl,
        wl_correct=wl,
        all_correct=min(tl, wl),
        item_tp=tp,
        item_fp=fp,
        item_fn=fn,
        parse_failures=fail,
    )
    return c


def _records(mixed_tl: list[int], single_tl: list[int]) -> list[dict]:
    recs = []
    for seed, (m, s) in enumerate(zip(mixed_tl, single_tl, strict=True)):
        recs.append(
            {
                "name": f"mixed-seed{seed}",
                "kind": "mixed",
                "seed": seed,
                "datasets": ["SCNM", "TCREE"],
                "model": "m",
                "scored": f"out/m{seed}",
                "files": [f"out/m{seed}/a.parquet"],
                "counts": {"SCNM": _counts(10, m, 5, 8, 2, 2), "TCREE": _counts(4, 4, 1)},
            }
        )
        recs.append(
            {
                "name": f"single-SCNM-seed{seed}",
                "kind": "single",
                "seed": seed,
                "datasets": ["SCNM"],
                "model": "s",
                "scored": f"out/s{seed}",
                "files": [f"out/s{seed}/b.parquet"],
                "counts": {"SCNM": _counts(10, s, 3, 6, 4, 4, fail=1)},
            }
        )
        recs.append(
            {
                "name": f"single-TCREE-seed{seed}",
                "kind": "single",
                "seed": seed,
                "datasets": ["TCREE"],
                "model": "t",
                "scored": f"out/t{seed}",
                "files": [f"out/t{seed}/c.parquet"],
                "counts": {"TCREE": _counts(4, 2, 2)},
            }
        )
    return recs


def test_report_from_given_counts_pairs_deltas_by_seed():
    mre = build_mre(_records([8, 6, 7], [5, 6, 4]), ["SCNM", "TCREE"], {"quick": False})
    scnm = mre["datasets"]["SCNM"]
    assert scnm["mixed"]["n"] == scnm["single"]["n"] == 10
    assert scnm["mixed"]["tl"] == pytest.approx(0.7) and scnm["single"]["tl"] == pytest.approx(0.5)
    # Paired deltas per seed: 0.3, 0.0, 0.3 -> mean 0.2, sample std 0.1732.
    assert [round(p["tl"], 6) for p in scnm["delta"]["per_seed"]] == [0.3, 0.0, 0.3]
    assert scnm["delta"]["tl"] == pytest.approx(0.2)
    assert scnm["delta"]["spread"]["tl"]["std"] == pytest.approx(statistics.stdev([0.3, 0, 0.3]))
    assert scnm["mixed"]["item_f1"] == pytest.approx(ratios(_counts(10, 8, 5, 8, 2, 2))["item_f1"])
    assert scnm["single"]["parse_fail"] == pytest.approx(0.1)
    assert scnm["delta"]["parse_fail"] == pytest.approx(-0.1)
    assert [r["scored"] for r in scnm["mixed"]["runs"]] == ["out/m0", "out/m1", "out/m2"]
    assert mre["seeds"] == [0, 1, 2] and "standard deviation" in mre["spread"]
    assert mre["datasets"]["TCREE"]["paper"]["tl"] == {"mixed": 96.49, "single": 95.89}
    assert "paper" not in scnm

    table = markdown(mre)
    assert "| SCNM | TL | 10 | 70.00 ± 10.00 | 50.00 ± 10.00 | +20.00 ± 17.32 | – | – |" in table
    assert "| TCREE | WL (exact set) | 4 |" in table and "| 73.12 | 58.73 |" in table
    assert "mean ± sample std over seeds" in table and "`out/s2`" in table
    png = render_chart(mre)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_quick_report_carries_the_disclaimer():
    meta = {"quick": True, "disclaimer": plan.QUICK_DISCLAIMER}
    mre = build_mre(_records([8], [5]), ["SCNM"], meta)
    assert mre["datasets"]["SCNM"]["mixed"]["spread"]["tl"]["std"] is None
    table = markdown(mre)
    assert plan.QUICK_DISCLAIMER in table and "±" not in table.split("|---")[1]
    assert "| SCNM | TL | 10 | 80.00 | 50.00 | +30.00 | – | – |" in table


@pytest.fixture(scope="module")
def sample_mix_dir(tmp_path_factory):
    from giellm_ray.mre.inputs import sample_mix

    out = tmp_path_factory.mktemp("mre")
    cfg = plan.MreConfig(output=str(out), quick=True)
    return str(out), sample_mix(cfg, str(out))


def test_every_run_gets_one_recipe_and_only_its_own_data_name_and_seed(sample_mix_dir):
    out, mix = sample_mix_dir
    manifest = json.loads(Path(mix, "manifest.json").read_text())
    assert {d for d, e in manifest["datasets"].items() if e["train"]} == set(plan.QUICK_DATASETS)
    runs = plan.make_plan(mix, out, manifest, list(plan.QUICK_DATASETS), repeats=2)
    cfg = plan.MreConfig(
        output=out, quick=True, train_overrides=["lr=5e-3"], score_overrides=["constrained=false"]
    )
    jobs = resolve_jobs(cfg, out, mix, runs)
    dumps = [j.train.model_dump(mode="json") for j in jobs]
    own = {("data", "train"), ("run_name",), ("data", "seed"), ("tiny", "seed")}
    for d in dumps:
        for path in own:
            node = d
            for k in path[:-1]:
                node = node[k]
            node.pop(path[-1])
    assert all(d == dumps[0] for d in dumps)  # identical recipes apart from the plan's keys
    first = jobs[0].train
    assert first.lr == 5e-3 and first.epochs == 2 and first.data.eval is None
    assert first.storage_path == f"{out}/runs" and first.run_name == "mixed-seed0"
    assert jobs[4].train.data.seed == 1 and jobs[4].train.tiny.seed == 1
    score = jobs[1].score
    assert score.input == list(runs[1].test) and score.output == runs[1].scored
    assert score.model.name_or_path == f"{out}/runs/single-SCNM-seed0/export"
    assert score.constrained is False and score.tasks == f"{mix}/tasks.json"
    with pytest.raises(ValueError, match="reserved"):
        resolve_jobs(
            plan.MreConfig(output=out, quick=True, train_overrides=["run_name=x"]), out, mix, runs
        )
    with pytest.raises(ValueError, match="--config is required"):
        resolve_jobs(plan.MreConfig(output=out), out, mix, runs)


def test_an_export_with_another_recipe_is_an_error_not_a_reuse(tmp_path):
    cfg = load_config(
        TrainConfig,
        config_path("train", "tiny-cpu.yaml"),
        [f"storage_path={tmp_path}", "run_name=mixed-seed0"],
    )
    assert trained_export(cfg) is None  # nothing there: train it
    export = tmp_path / "mixed-seed0" / "export"
    dump_config(cfg, str(export / "train_config.yaml"))
    assert trained_export(cfg) is None  # no model beside it: not a finished export
    (export / "config.json").write_text("{}")
    assert trained_export(cfg) == str(export)
    other = cfg.model_copy(update={"lr": 0.5})
    with pytest.raises(ValueError, match=r"another recipe \(lr: 0.01 there, 0.5 now\)"):
        trained_export(other)


def test_jobs_driver_reaches_the_same_command():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "mre.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: giellm mre" in proc.stdout and "--repeats" in proc.stdout


def test_inputs_and_configs_on_s3(s3_server):
    from giellm_ray import io
    from giellm_ray.mre.inputs import sample_mix, share_tiny_base

    out = "s3://giellm-test/mre-unit"
    cfg = plan.MreConfig(output=out, quick=True)
    mix = sample_mix(cfg, out)
    assert mix == f"{out}/data" and io.exists(f"{mix}/single/SCNM/test.parquet")
    assert sample_mix(cfg, out) == mix  # reused, not rebuilt
    manifest = json.loads(io.read_text(f"{mix}/manifest.json"))
    runs = plan.make_plan(mix, out, manifest, plan.select_datasets(manifest, None, mix), 1)
    jobs = resolve_jobs(cfg, out, mix, runs)
    assert jobs[0].train.storage_path == f"{out}/runs"
    assert jobs[2].score.output == f"{out}/scored/single-SCPOS_RW-seed0"
    share_tiny_base([j.train for j in jobs], mix, out)
    bases = {j.train.model.name_or_path for j in jobs}
    assert len(bases) == 1 and io.exists(f"{bases.pop()}/tiny.json")
    assert all(trained_export(j.train) is None for j in jobs)
