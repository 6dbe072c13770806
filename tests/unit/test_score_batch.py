"""``ScoreBatch`` (the Ray Data UDF) called directly on Arrow batches: columns kept, caps honoured."""

from __future__ import annotations

import pyarrow as pa

from giellm_ray import schema as S
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.pipeline import ScoreBatch


def test_score_batch_keeps_columns_and_reads_the_per_row_cap(tiny_model_dir, stockmark_records):
    cfg = ScoreConfig(constrained=False, torch_threads=1)
    cfg.model.name_or_path = tiny_model_dir
    cfg.generation.max_new_tokens = 5
    udf = ScoreBatch(cfg, None)
    texts = [r["text"] for r in stockmark_records[:3]]
    batch = pa.table({"id": ["a", "b", "c"], S.DATASET: ["SCNM"] * 3, S.TEXT: texts,
                      S.MAX_NEW_TOKENS: pa.array([1, None, 3], pa.int64())})
    out = udf(batch)
    assert out.num_rows == 3
    assert out.column_names == ["id", S.DATASET, S.TEXT, S.MAX_NEW_TOKENS,
                                *(f.name for f in S.SCORED_FIELDS)]
    assert out.column(S.NUM_GENERATED_TOKENS).to_pylist() == [1, 5, 3]
    assert out.column("id").to_pylist() == ["a", "b", "c"]
