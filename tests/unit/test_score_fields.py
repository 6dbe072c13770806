"""Where confidence scores land: the scored Parquet schema (``pred_items[].score``, ``tl_score``),
older scored files read as current ones, and serve's response model."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from giellm_ray import schema as S
from giellm_ray.generation.base import GenerationResult
from giellm_ray.generation.extractor import finish_row
from giellm_ray.score.udf import append_scored
from giellm_ray.serve.api import ExtractRequest, Item, to_response

ITEM = {
    "label": "人名",
    "span": "山田",
    "tail": None,
    "start": 0,
    "end": 2,
    "tail_start": None,
    "tail_end": None,
}


def test_scored_columns_round_trip_through_parquet(tmp_path):
    rows = [
        {
            S.PREDICTION: "<社会>固有表現抽出:人名;山田",
            S.PRED_TL_LABEL: "社会",
            S.PRED_ITEMS: [{**ITEM, S.SCORE: 0.9}],
            S.ERROR: None,
            S.NUM_GENERATED_TOKENS: 9,
            S.TL_SCORE: 0.8,
        },
        S.empty_scored("text is empty"),
    ]
    table = append_scored(pa.table({S.ID: ["a", "b"]}), rows)
    pq.write_table(table, tmp_path / "part.parquet")
    back = pq.read_table(tmp_path / "part.parquet").to_pylist()
    assert back[0][S.PRED_ITEMS][0][S.SCORE] == 0.9 and back[0][S.TL_SCORE] == 0.8
    assert back[1][S.TL_SCORE] is None and back[1][S.PRED_ITEMS] is None


def test_finish_row_without_logprobs_gives_null_scores():
    from giellm_ray.formats import DEFAULT_REGISTRY

    out = finish_row(
        GenerationResult("<社会>固有表現抽出:人名;山田", 9, True),
        DEFAULT_REGISTRY["SCNM"],
        "山田は来た。",
    )
    assert out[S.TL_SCORE] is None and out[S.PRED_ITEMS][0][S.SCORE] is None
    assert out[S.PRED_ITEMS][0]["start"] == 0


def test_old_scored_files_read_as_current_ones():
    old_items = pa.list_(S.GROUNDED_ITEM_TYPE)
    old = pa.table(
        {
            S.ID: ["a", "b", "c"],
            S.PRED_ITEMS: pa.array([[ITEM, {**ITEM, "span": "田中"}], None, []], type=old_items),
        }
    )
    for table in (old, old.slice(1), pa.concat_tables([old.slice(0, 1), old.slice(1)])):
        new = S.with_score_columns(table)
        assert new.schema.field(S.PRED_ITEMS).type == pa.list_(S.SCORED_ITEM_TYPE)
        assert new.column(S.TL_SCORE).null_count == table.num_rows
        want = [
            None if r is None else [{**it, S.SCORE: None} for it in r]
            for r in table.column(S.PRED_ITEMS).to_pylist()
        ]
        assert new.column(S.PRED_ITEMS).to_pylist() == want
    current = S.with_score_columns(old)
    assert S.with_score_columns(current) is current  # already current: unchanged


def test_response_exposes_scores():
    row = {
        S.PREDICTION: "x",
        S.PRED_TL_LABEL: "社会",
        S.ERROR: None,
        S.NUM_GENERATED_TOKENS: 3,
        S.PRED_ITEMS: [{**ITEM, S.SCORE: 0.25}],
        S.TL_SCORE: 0.5,
    }
    resp = to_response(
        row, ExtractRequest(text="t", dataset="SCNM"), request_id="r", model="m", latency_ms=1.0
    )
    body = resp.model_dump()
    assert body["tl_score"] == 0.5 and body["items"][0]["score"] == 0.25
    old = {k: v for k, v in row.items() if k != S.TL_SCORE}  # a row without scores
    old[S.PRED_ITEMS] = [ITEM]
    resp = to_response(
        old, ExtractRequest(text="t", dataset="SCNM"), request_id="r", model="m", latency_ms=1.0
    )
    assert resp.tl_score is None and resp.items[0].score is None
    with pytest.raises(ValidationError):
        Item(label="a", span="b", score=1.5)
