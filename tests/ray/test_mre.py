"""``giellm mre --quick`` end to end on two datasets: the shipped sample mixed, three tiny models
trained with Ray Train + DeepSpeed (mixed, single SCNM, single SCPOS:RW), each scored with Ray
Data, the report written. Checks mre.json's shape, that every number in it is recomputed here from
the scored Parquet files it names (with giellm_ray.metrics), that both sides were scored on the
same rows, and that a second invocation redoes nothing (file timestamps and the recorded status)
while a removed ``_SUCCESS`` is rescored alone. The tiny models' scores are not asserted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from giellm_ray.cli import main
from giellm_ray.formats import TaskRegistry
from giellm_ray.metrics import count_rows, merge_counts, ratios
from giellm_ray.mre.plan import QUICK_DATASETS, QUICK_DISCLAIMER, QUICK_TEST_ROWS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

LEVELS = {
    "tl": "tl_accuracy",
    "wl": "wl_accuracy",
    "all": "all_accuracy",
    "item_f1": "item_f1",
    "parse_fail": "parse_failure_rate",
}


def _recount(files: list[str], registry) -> dict:
    parts = []
    for f in files:
        t = pq.read_table(f, columns=["dataset", "target", "prediction"]).to_pydict()
        parts.append(count_rows(t["dataset"], t["target"], t["prediction"], registry))
    return merge_counts(parts)


def _stamps(out: Path) -> dict[str, int]:
    """Modification times of everything a run produces (exports, scores, data, base models)."""
    keep = (
        "train_config.yaml",
        "model.safetensors",
        "_SUCCESS",
        ".parquet",
        "manifest.json",
        "tiny.json",
    )
    return {
        str(p): p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.name.endswith(keep) and "checkpoint_" not in str(p)
    }


def _check_numbers(mre: dict, out: Path) -> None:
    registry = TaskRegistry.load(str(out / "data" / "tasks.json"))
    for ds, entry in mre["datasets"].items():
        for side in ("mixed", "single"):
            s = entry[side]
            assert s["n"] == QUICK_TEST_ROWS
            (run,) = s["runs"]  # one seed
            assert run["seed"] == 0 and Path(run["scored"]).parent == out / "scored"
            assert run["files"] and all(Path(f).parent == Path(run["scored"]) for f in run["files"])
            counts = _recount(run["files"], registry)[ds]
            assert run["counts"] == counts
            expect = ratios(counts)
            for key, src in LEVELS.items():
                assert s[key] == run[key] == expect[src], (ds, side, key)
        for key in LEVELS:
            m, s = entry["mixed"][key], entry["single"][key]
            assert entry["delta"][key] == pytest.approx(m - s)
        # Both sides scored on exactly the same rows: the dataset's own test split.
        ids = []
        for side in ("mixed", "single"):
            files = entry[side]["runs"][0]["files"]
            t = (
                pq.read_table(files[0]).to_pydict()
                if len(files) == 1
                else pq.ParquetDataset(files).read().to_pydict()
            )
            ids.append(sorted(i for i, d in zip(t["id"], t["dataset"], strict=True) if d == ds))
        test = pq.read_table(out / "data" / "single" / ds.replace(":", "_") / "test.parquet")
        assert ids[0] == ids[1] == sorted(test.column("id").to_pylist())


@pytest.mark.timeout(600)
def test_quick_mre_two_datasets_end_to_end_and_resume(ray_cluster, tmp_path, capsys):
    out = tmp_path / "mre"
    assert main(["mre", "--quick", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(QUICK_DISCLAIMER) == 2  # before the run and in the table
    assert "| SCPOS:RW | TL | 8 |" in printed

    mre = json.loads((out / "mre.json").read_text())
    assert list(mre["datasets"]) == list(QUICK_DATASETS) and mre["seeds"] == [0]
    assert mre["quick"] is True and mre["disclaimer"] == QUICK_DISCLAIMER
    for entry in mre["datasets"].values():
        assert set(entry) == {"mixed", "single", "delta"}
        for side in ("mixed", "single"):
            assert set(LEVELS) | {"n", "spread", "runs"} <= set(entry[side])
    names = sorted(r["name"] for r in mre["runs"])
    assert names == ["mixed-seed0", "single-SCNM-seed0", "single-SCPOS_RW-seed0"]
    assert all(r["status"] == {"train": "trained", "score": "scored"} for r in mre["runs"])
    _check_numbers(mre, out)
    # Both sides started from one shared tiny base model.
    bases = {
        yaml.safe_load((out / "runs" / n / "export" / "train_config.yaml").read_text())["model"][
            "name_or_path"
        ]
        for n in names
    }
    assert len(bases) == 1 and str(out / "base") in bases.pop()
    assert QUICK_DISCLAIMER in (out / "mre.md").read_text()
    assert (out / "mre.png").stat().st_size > 20_000

    # Second invocation: nothing is retrained, rescored, re-mixed or rebuilt.
    before = _stamps(out)
    assert main(["mre", "--quick", "--output", str(out)]) == 0
    assert _stamps(out) == before
    again = json.loads((out / "mre.json").read_text())
    assert all(r["status"] == {"train": "resumed", "score": "resumed"} for r in again["runs"])
    assert again["datasets"] == mre["datasets"]

    # A score that never committed (its output is gone) is redone, and only that one. (A score
    # without its _SUCCESS but with its Parquet is refused by `giellm score` itself: it cannot
    # prove it wrote those files; an interrupted commit leaves a journal it finishes instead.)
    shutil.rmtree(out / "scored" / "single-SCNM-seed0")
    assert main(["mre", "--quick", "--output", str(out)]) == 0
    third = {r["name"]: r["status"] for r in json.loads((out / "mre.json").read_text())["runs"]}
    assert third.pop("single-SCNM-seed0") == {"train": "resumed", "score": "scored"}
    assert all(s == {"train": "resumed", "score": "resumed"} for s in third.values())
    after = _stamps(out)
    assert {k for k in after if after[k] != before.get(k)} <= {
        str(p) for p in (out / "scored" / "single-SCNM-seed0").rglob("*")
    }
