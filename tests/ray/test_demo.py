"""``giellm demo`` end to end at the ``--quick`` size: data, Ray Train + DeepSpeed, Ray Data
scoring with the metrics report, one Serve request, clean shutdown. Guards the README's first
command; the scores of a 2-epoch tiny model are not asserted (the run's shape is)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.mark.timeout(420)
def test_quick_demo_runs_every_step_and_cleans_up(ray_cluster, tmp_path, capsys):
    from ray import serve

    from giellm_ray.demo.run import DISCLAIMER, QUICK, DemoConfig, run_demo
    from giellm_ray.sample import SIZES

    work = tmp_path / "demo"
    result = run_demo(DemoConfig(workdir=str(work), **QUICK))
    out = capsys.readouterr().out

    for i in range(1, 7):
        assert f"=== [{i}/6]" in out and f"--- [{i}/6] done in" in out
    assert out.count(DISCLAIMER) == 2
    assert "paper GIELLM-13B-JP" in out  # the table beside the paper's

    # Step 1: the mixed corpus and the held-out file.
    train = pq.read_table(work / "data" / "train.parquet").to_pylist()
    assert len(train) == len(SIZES) * QUICK["train_rows_per_dataset"]
    heldout = pq.read_table(work / "heldout" / "test.parquet")
    assert heldout.num_rows == len(SIZES) * QUICK["test_rows_per_dataset"]
    assert not {r["text"] for r in train} & set(heldout.column("text").to_pylist())

    # Steps 3-4: an exported model, every held-out row scored, the report with its chart.
    assert (work / "runs" / "demo" / "export" / "config.json").exists()
    scored = pq.read_table(work / "scored").to_pylist()
    assert sorted(r["id"] for r in scored) == sorted(heldout.column("id").to_pylist())
    assert all(isinstance(r["prediction"], str) or r["error"] for r in scored)
    report = work / "scored" / "_metrics"
    assert (report / "metrics.png").stat().st_size > 1000
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == set(SIZES)
    assert all(m["n"] == QUICK["test_rows_per_dataset"] for m in metrics.values())
    assert result["metrics"] == metrics

    # Step 5: one answer from the Serve endpoint, then Serve is gone.
    answer = result["serve_answer"]
    assert answer["dataset"] == heldout.column("dataset")[0].as_py()
    assert isinstance(answer["raw_output"], str) and "request_id" in answer
    assert serve.status().applications == {}  # no Serve instance left running

    summary = json.loads((work / "demo_summary.json").read_text())
    assert set(summary["timings_s"]) and summary["total_s"] > 0
    # The session cluster was already running: the demo leaves it up.
    assert ray_cluster.is_initialized()
