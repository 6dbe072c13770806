"""Every input and output can be ``s3://``: eval reads predictions from and writes its report to a
local S3 server (moto on 127.0.0.1)."""

from __future__ import annotations

import json

import pyarrow as pa

from giellm_ray import io
from giellm_ray.cli import main

GOLD = "<社会>固有表現抽出:人名;山田"


def test_io_round_trip_and_listing(s3_server):
    io.write_text("s3://giellm-test/io/a.txt", "日本語")
    assert io.read_text("s3://giellm-test/io/a.txt") == "日本語"
    table = pa.table({"dataset": ["SCNM"], "target": [GOLD], "prediction": [GOLD]})
    io.write_parquet(table, "s3://giellm-test/io/preds/part-0.parquet")
    io.write_parquet(table, "s3://giellm-test/io/preds/sub/part-1.parquet")
    assert io.parquet_files("s3://giellm-test/io/preds") == [
        "s3://giellm-test/io/preds/part-0.parquet",
        "s3://giellm-test/io/preds/sub/part-1.parquet",
    ]
    assert io.read_parquet("s3://giellm-test/io/preds").num_rows == 2


def test_eval_from_and_to_s3(s3_server):
    table = pa.table(
        {
            "dataset": ["SCNM"] * 3,
            "target": [GOLD] * 3,
            "prediction": [GOLD, GOLD, "<社会>固有表現抽出:人名;田中"],
        }
    )
    io.write_parquet(table, "s3://giellm-test/eval/preds.parquet")
    assert (
        main(
            [
                "eval",
                "s3://giellm-test/eval/preds.parquet",
                "--output",
                "s3://giellm-test/eval/report",
            ]
        )
        == 0
    )
    metrics = json.loads(io.read_text("s3://giellm-test/eval/report/metrics.json"))
    assert metrics["SCNM"]["n"] == 3
    assert abs(metrics["SCNM"]["all_accuracy"] - 2 / 3) < 1e-9
    assert io.exists("s3://giellm-test/eval/report/metrics.png")
    assert io.read_parquet("s3://giellm-test/eval/report/rows.parquet").num_rows == 3
