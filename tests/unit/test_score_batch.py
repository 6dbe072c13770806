"""``ScoreBatch`` (the Ray Data UDF) called directly on Arrow batches: columns kept, caps honoured,
and hostile input (invalid UTF-8 in every text column, lone surrogates as bytes, NUL, 1 MB text,
bidi/zero-width characters, absurd caps, binary typed as string) harms only its own row."""

from __future__ import annotations

import pyarrow as pa
import pytest

from giellm_ray import schema as S
from giellm_ray.score.config import ScoreConfig
from giellm_ray.score.udf import ScoreBatch, decode_column, extract_isolated


@pytest.fixture(scope="module")
def udf(tiny_model_dir):
    cfg = ScoreConfig(constrained=False, torch_threads=1)
    cfg.model.name_or_path = tiny_model_dir
    cfg.generation.max_new_tokens = 5
    return ScoreBatch(cfg, None)


def test_score_batch_keeps_columns_and_reads_the_per_row_cap(udf, stockmark_records):
    texts = [r["text"] for r in stockmark_records[:3]]
    batch = pa.table(
        {
            "id": ["a", "b", "c"],
            S.DATASET: ["SCNM"] * 3,
            S.TEXT: texts,
            S.MAX_NEW_TOKENS: pa.array([1, None, 3], pa.int64()),
        }
    )
    out = udf(batch)
    assert out.num_rows == 3
    assert out.column_names == [
        "id",
        S.DATASET,
        S.TEXT,
        S.MAX_NEW_TOKENS,
        *(f.name for f in S.SCORED_FIELDS),
    ]
    assert out.column(S.NUM_GENERATED_TOKENS).to_pylist() == [1, 5, 3]
    assert out.column("id").to_pylist() == ["a", "b", "c"]


def raw_strings(values: list[bytes | str | None]) -> pa.Array:
    """A string column holding exactly these bytes (no UTF-8 validation, as a Parquet file can)."""
    data = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
    return pa.array(data, pa.binary()).view(pa.string())


GOOD = "東京都に本社を置く株式会社である。"
HOSTILE = {  # id: (dataset, text, prompt, max_new_tokens, expected error or None)
    "bad-utf8-text": ("SCNM", b"\xff\xfe\x00abc", None, None, "column 'text' is not valid UTF-8"),
    "surrogate-text": (
        "SCNM",
        b"ok \xed\xa0\x80 ok",
        None,
        None,
        "column 'text' is not valid UTF-8 (byte 3",
    ),
    "bad-utf8-dataset": (b"SC\xc3NM", GOOD, None, None, "column 'dataset' is not valid UTF-8"),
    "bad-utf8-prompt": ("SCNM", GOOD, b"\x80prompt", None, "column 'prompt' is not valid UTF-8"),
    "binary-as-text": ("SCNM", bytes(range(256)), None, None, "column 'text' is not valid UTF-8"),
    "nul-bytes": ("SCNM", "東京\x00\x00都", None, None, None),
    "bidi-zero-width": ("SCNM", "\u202e東京\u200b\u200d\ufeff都\u2066", None, None, None),
    "huge-text": ("SCNM", "長" * 350_000, None, None, "prompt too long"),
    "cap-null": ("SCNM", GOOD, None, None, None),
    "cap-negative": ("SCNM", GOOD, None, -3, "max_new_tokens must be a positive integer, got -3"),
    "cap-zero": ("SCNM", GOOD, None, 0, "max_new_tokens must be a positive integer, got 0"),
    "cap-huge": ("SCNM", GOOD, None, 2**62, None),
    "good": ("SCNM", GOOD, None, 2, None),
}


def hostile_batch() -> pa.Table:
    ids = list(HOSTILE)
    col = {
        k: [HOSTILE[i][n] for i in ids]
        for n, k in enumerate((S.DATASET, S.TEXT, S.PROMPT, S.MAX_NEW_TOKENS))
    }
    return pa.table(
        {
            "id": ids,
            S.DATASET: raw_strings(col[S.DATASET]),
            S.TEXT: raw_strings(col[S.TEXT]),
            S.PROMPT: raw_strings(col[S.PROMPT]),
            S.MAX_NEW_TOKENS: pa.array(col[S.MAX_NEW_TOKENS], pa.int64()),
            "extra": raw_strings([b"\xc0keep-me-" + i.encode() for i in ids]),  # passed through
        }
    )


def test_hostile_rows_only_harm_themselves(udf):
    batch = hostile_batch()
    out = udf(batch)
    assert out.num_rows == batch.num_rows  # rows in == rows out
    for name in batch.column_names:  # every input column intact, bad bytes included
        assert out.column(name).equals(batch.column(name)), name  # compares bytes, no decode
    errors = dict(zip(out.column("id").to_pylist(), out.column(S.ERROR).to_pylist(), strict=True))
    gen = dict(
        zip(
            out.column("id").to_pylist(),
            out.column(S.NUM_GENERATED_TOKENS).to_pylist(),
            strict=True,
        )
    )
    for rid, (*_, expected) in HOSTILE.items():
        if expected is None:  # scored (a parse error of the random model is allowed)
            assert errors[rid] is None or errors[rid].startswith(("parse:", "output truncated")), (
                rid,
                errors[rid],
            )
            assert gen[rid] >= 1, rid
        else:
            assert errors[rid] is not None and errors[rid].startswith(expected), (rid, errors[rid])
            assert gen[rid] == 0, rid
    assert gen["good"] == 2 and gen["cap-huge"] == 5
    # the good row scores as it does alone: a hostile neighbour changes nothing
    alone = udf(batch.slice(len(HOSTILE) - 1, 1))
    assert alone.column(S.PREDICTION).to_pylist() == out.column(S.PREDICTION).to_pylist()[-1:]


def test_decode_column_falls_back_per_value():
    values, errors = decode_column(raw_strings([b"ok", b"\xff", None, "東".encode()]), "text")
    assert values == ["ok", None, None, "東"]
    assert list(errors) == [1] and "byte 0: b'\\xff'" in errors[1]
    large = (
        raw_strings([b"a", b"\xfe"])
        .cast(pa.binary())
        .cast(pa.large_binary())
        .view(pa.large_string())
    )
    assert decode_column(large, "text")[0] == ["a", None]


def test_extract_isolated_confines_a_raising_row_to_itself():
    calls = []

    def extract(rows):  # a stand-in engine that raises whenever the poison row is in the batch
        calls.append(len(rows))
        if any(r["text"] == "poison" for r in rows):
            raise RuntimeError("engine blew up")
        return [{S.PREDICTION: r["text"], S.ERROR: None} for r in rows]

    rows = [{"text": f"t{i}"} for i in range(64)]
    rows[37]["text"] = "poison"
    outputs = extract_isolated(extract, rows)
    assert len(outputs) == 64
    assert [o[S.ERROR] for o in outputs].count(None) == 63
    assert outputs[37][S.ERROR] == "scoring error: RuntimeError: engine blew up"
    assert [o[S.PREDICTION] for i, o in enumerate(outputs) if i != 37] == [
        f"t{i}" for i in range(64) if i != 37
    ]
    assert len(calls) <= 2 * 7 + 1  # halving, not one call per row
