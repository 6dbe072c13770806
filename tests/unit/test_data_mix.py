"""The training mix: seeded sizes, disjoint splits, single-task corpora, shortfalls, bad input."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from giellm_ray import io
from giellm_ray.cli import main
from giellm_ray.data.mix import PAPER_SIZES, build_mix, parse_sizes
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, build_prompt, build_target
from giellm_ray.log import setup_logging
from giellm_ray.schema import dataset_table


def _rows(name: str, n: int, bad: int = 0) -> list[dict]:
    task = DEFAULT_REGISTRY[name]
    out = []
    for i in range(n):
        text = f"{name}の文{i}。"
        out.append(
            {
                "id": f"{name}-{i}",
                "dataset": name,
                "text": text,
                "prompt": build_prompt(text, task),
                "tl_label": task.tl_labels[0],
                "target": build_target(task.tl_labels[0], [], task),
                "items": [],
            }
        )
    for i in range(bad):
        out.append(
            {
                "id": f"{name}-bad{i}",
                "dataset": name,
                "text": "",
                "items": [],
                "error": "text is empty or missing",
            }
        )
    return out


@pytest.fixture
def inputs(tmp_path):
    a = tmp_path / "in" / "scnm.parquet"
    io.write_parquet(dataset_table(_rows("SCNM", 30, bad=5)), str(a))
    b = tmp_path / "in" / "scpos"
    io.write_parquet(
        dataset_table(_rows("SCPOS:RW", 20) + _rows("SCPOS:N&Adj", 12)), str(b / "part-0.parquet")
    )
    io.write_parquet(dataset_table(_rows("SCPOS:N", 8)), str(b / "part-1.parquet"))
    return [str(a), str(b)]


def test_mix_layout_counts_and_disjoint_splits(inputs, tmp_path, capsys):
    setup_logging("INFO")  # as the giellm command does: warnings go to stderr
    out = tmp_path / "mix"
    sizes = {"SCNM": 10, "SCPOS:RW": 5, "SCPOS:N&Adj": 4, "SCPOS:N": 20}
    manifest = build_mix(inputs, str(out), seed=3, sizes=sizes)
    train = pq.read_table(out / "train.parquet").to_pylist()
    test = pq.read_table(out / "test.parquet").to_pylist()
    assert manifest["train_rows"] == len(train) == 10 + 5 + 4 + 8
    assert len(test) == 20 + 15 + 8 + 0 == manifest["test_rows"]
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in test} == {"test"}
    assert not {r["id"] for r in train} & {r["id"] for r in test}
    assert all(r["error"] is None for r in train + test)  # error rows never mixed
    ds = manifest["datasets"]
    assert ds["SCNM"] == {
        "available": 30,
        "excluded_rows": 5,
        "train_asked": 10,
        "train": 10,
        "test": 20,
        "path": "single/SCNM",
    }
    assert ds["SCPOS:N"]["short_by"] == 12
    assert "SCPOS:N: asked for 20 training rows, only 8" in capsys.readouterr().err
    single = pq.read_table(out / "single" / "SCPOS_NAdj" / "train.parquet").to_pylist()
    assert len(single) == 4 and {r["dataset"] for r in single} == {"SCPOS:N&Adj"}
    assert pq.read_table(out / "single" / "SCPOS_NAdj" / "test.parquet").num_rows == 8
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert set(TaskRegistry.from_dict(json.loads((out / "tasks.json").read_text()))) >= set(
        DEFAULT_REGISTRY
    )


def test_seeded_and_test_sizes(inputs, tmp_path):
    def train_ids(seed, name):
        m = build_mix(
            inputs, str(tmp_path / name), seed=seed, sizes={"SCNM": 10}, test_sizes={"SCNM": 7}
        )
        assert m["datasets"]["SCNM"]["test"] == 7 and m["datasets"]["SCPOS:RW"]["test"] == 20
        return [r["id"] for r in pq.read_table(tmp_path / name / "train.parquet").to_pylist()]

    assert train_ids(1, "a") == train_ids(1, "b")
    assert sorted(train_ids(1, "a")) != sorted(train_ids(2, "c"))


def test_paper_sizes_default_report_missing_datasets(inputs, tmp_path):
    assert sum(PAPER_SIZES.values()) == 4500
    manifest = build_mix(inputs, str(tmp_path / "m"))
    assert manifest["datasets"]["TCREE"]["short_by"] == 1000
    assert manifest["datasets"]["TCREE"]["available"] == 0


def test_cli_mix_and_bad_inputs(inputs, tmp_path, capsys):
    out = str(tmp_path / "m")
    assert (
        main(
            [
                "data",
                "mix",
                "--input",
                *inputs,
                "--output",
                out,
                "--sizes",
                "SCNM=3,SCPOS:RW=2",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_rows"] == 5
    assert main(["data", "mix", "--input", *inputs, "--output", out, "--sizes", "SCNX=3"]) == 2
    assert "unknown dataset 'SCNX'" in capsys.readouterr().err
    assert main(["data", "mix", "--input", *inputs, "--output", out, "--sizes", "SCNM"]) == 2
    assert "is not NAME=COUNT" in capsys.readouterr().err
    assert main(["data", "mix", "--input", str(tmp_path / "nope"), "--output", out]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    other = tmp_path / "other.parquet"
    pq.write_table(dataset_table([]).drop_columns(["target"]), other)
    assert main(["data", "mix", "--input", str(other), "--output", out]) == 2
    assert "missing column(s) ['target']" in capsys.readouterr().err
    assert parse_sizes(["SCPOS:N&Adj=5", "SCNM=1,TCREE=2"]) == {
        "SCPOS:N&Adj": 5,
        "SCNM": 1,
        "TCREE": 2,
    }


def test_mix_and_authors_on_s3(inputs, s3_server, tmp_path):
    from pathlib import Path

    io.write_bytes("s3://giellm-test/mixin/scnm.parquet", Path(inputs[0]).read_bytes())
    assert (
        main(
            [
                "data",
                "mix",
                "--input",
                "s3://giellm-test/mixin/scnm.parquet",
                "--output",
                "s3://giellm-test/mixout",
                "--sizes",
                "SCNM=4",
            ]
        )
        == 0
    )
    assert io.read_parquet("s3://giellm-test/mixout/train.parquet").num_rows == 4
    assert io.read_parquet("s3://giellm-test/mixout/single/SCNM/test.parquet").num_rows == 26
    assert json.loads(io.read_text("s3://giellm-test/mixout/manifest.json"))["train_rows"] == 4
    assets = Path(__file__).resolve().parents[1] / "assets" / "data"
    io.write_bytes("s3://giellm-test/authors/a.csv", (assets / "authors_scnm.csv").read_bytes())
    assert (
        main(
            [
                "data",
                "authors",
                "--input",
                "s3://giellm-test/authors/a.csv",
                "--output",
                "s3://giellm-test/authors/out/scnm.parquet",
            ]
        )
        == 0
    )
    assert io.read_parquet("s3://giellm-test/authors/out/scnm.parquet").num_rows == 5
    assert "SCNM" in json.loads(io.read_text("s3://giellm-test/authors/out/tasks.json"))
