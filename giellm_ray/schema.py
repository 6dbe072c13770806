"""Parquet column names and Arrow schemas shared by every stage (one place, no drift).

Dataset files (written by ``giellm data ...``, read by training, scoring and evaluation)::

    id        string   stable row id (e.g. "scnm-2415078")
    dataset   string   task name: SCNM, SCPOS:RW, SCPOS:N, SCPOS:Adj, SCPOS:N&Adj, TCREE
    text      string   source text
    prompt    string   unified-format input  (TEXT<tl1>…<tlN>IW)
    target    string   unified-format output (<TL>IW:LABEL;SPAN…), null if unlabelled
    tl_label  string   gold TL label (null if unknown)
    items     list<struct<label, span, tail>>  gold WL items (tail set for relation items)
    split     string   train / test (mix builder), else null
    error     string   why the row could not be built (null when fine); such rows have no target

Scoring also reads an optional ``max_new_tokens`` (integer) column: a per-row cap on generated
tokens, applied below the task's bound (e.g. to bound cost when expected outputs are short),
and an optional ``adapter`` (string) column: the LoRA adapter of the config's ``adapters`` that
scores the row (null: the base model; a name the config lacks: that row's ``error``).

Scored files add ``prediction``, ``pred_tl_label``, ``pred_items`` (items with character
offsets and a ``score``), ``num_generated_tokens``, ``tl_score`` and reuse ``error`` for the
scoring error. ``score`` / ``tl_score``: the model's confidence in that item / TL label, a
probability in [0, 1] (``giellm_ray.generation.confidence``), null when scores were off or could
not be computed; files written before they existed lack both, and readers take that as null.
Pure pyarrow.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

ID = "id"
DATASET = "dataset"
TEXT = "text"
PROMPT = "prompt"
TARGET = "target"
TL_LABEL = "tl_label"
ITEMS = "items"
SPLIT = "split"
ERROR = "error"
PREDICTION = "prediction"
PRED_TL_LABEL = "pred_tl_label"
PRED_ITEMS = "pred_items"
NUM_GENERATED_TOKENS = "num_generated_tokens"
TL_SCORE = "tl_score"
SCORE = "score"  # the field of a scored item
MAX_NEW_TOKENS = "max_new_tokens"
ADAPTER = "adapter"

ITEM_TYPE = pa.struct([("label", pa.string()), ("span", pa.string()), ("tail", pa.string())])
GROUNDED_ITEM_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("span", pa.string()),
        ("tail", pa.string()),
        ("start", pa.int32()),
        ("end", pa.int32()),
        ("tail_start", pa.int32()),
        ("tail_end", pa.int32()),
    ]
)

# A predicted item: grounded, with the model's confidence in it.
SCORED_ITEM_TYPE = pa.struct([*GROUNDED_ITEM_TYPE, pa.field(SCORE, pa.float64())])

DATASET_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (DATASET, pa.string()),
        (TEXT, pa.string()),
        (PROMPT, pa.string()),
        (TARGET, pa.string()),
        (TL_LABEL, pa.string()),
        (ITEMS, pa.list_(ITEM_TYPE)),
        (SPLIT, pa.string()),
        (ERROR, pa.string()),
    ]
)

# Columns a scored file adds to its input's columns.
SCORED_FIELDS = [
    pa.field(PREDICTION, pa.string()),
    pa.field(PRED_TL_LABEL, pa.string()),
    pa.field(PRED_ITEMS, pa.list_(SCORED_ITEM_TYPE)),
    pa.field(ERROR, pa.string()),
    pa.field(NUM_GENERATED_TOKENS, pa.int32()),
    pa.field(TL_SCORE, pa.float64()),
]


SCORED_NAMES = [f.name for f in SCORED_FIELDS]


def empty_scored(error: str | None) -> dict:
    """The scored columns of a row that was not generated (``error`` says why)."""
    return {
        PREDICTION: None,
        PRED_TL_LABEL: None,
        PRED_ITEMS: None,
        ERROR: error,
        NUM_GENERATED_TOKENS: 0,
        TL_SCORE: None,
    }


# ``giellm eval``'s per-row analysis file (``DIR/rows.parquet``): parsed target and prediction,
# which levels matched, why parsing failed. Items carry offsets where the text is known, as in
# scored files.
TARGET_TL_LABEL = "target_tl_label"
TARGET_ITEMS = "target_items"
EVAL_ROWS_SCHEMA = pa.schema(
    [
        (ID, pa.string()),
        (DATASET, pa.string()),
        (TARGET, pa.string()),
        (PREDICTION, pa.string()),
        (TARGET_TL_LABEL, pa.string()),
        (TARGET_ITEMS, pa.list_(GROUNDED_ITEM_TYPE)),
        (PRED_TL_LABEL, pa.string()),
        (PRED_ITEMS, pa.list_(GROUNDED_ITEM_TYPE)),
        ("tl_match", pa.bool_()),
        ("wl_match", pa.bool_()),
        ("all_match", pa.bool_()),
        ("item_tp", pa.int32()),
        ("item_fp", pa.int32()),
        ("item_fn", pa.int32()),
        ("target_error", pa.string()),
        ("prediction_error", pa.string()),
    ]
)


def dataset_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with any subset of the dataset columns) as a table in ``DATASET_SCHEMA``."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in DATASET_SCHEMA}
    return pa.Table.from_pydict(cols, schema=DATASET_SCHEMA)


def with_score_columns(table: pa.Table) -> pa.Table:
    """A scored table from before confidence scores, read as a current one: a null ``tl_score``
    column and a null ``score`` in every item of ``pred_items`` where they are missing."""
    if TL_SCORE not in table.column_names:
        table = table.append_column(
            pa.field(TL_SCORE, pa.float64()), pa.nulls(table.num_rows, pa.float64())
        )
    if PRED_ITEMS not in table.column_names:
        return table
    col = table.column(PRED_ITEMS)
    item_type = col.type.value_type
    if SCORE in [f.name for f in item_type]:
        return table
    new_type = pa.list_(pa.struct([*item_type, pa.field(SCORE, pa.float64())]))
    chunks = []
    for chunk in col.chunks:
        offsets = chunk.offsets  # into the whole child array, also for a sliced chunk
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        offsets = pc.subtract(offsets, pa.scalar(first, offsets.type))
        items = chunk.values.slice(first, last - first)
        fields = [items.field(i) for i in range(items.type.num_fields)]
        scored = pa.StructArray.from_arrays(
            [*fields, pa.nulls(len(items), pa.float64())],
            fields=list(new_type.value_type),
            mask=items.is_null(),
        )
        chunks.append(
            pa.ListArray.from_arrays(offsets, scored, type=new_type, mask=chunk.is_null())
        )
    index = table.column_names.index(PRED_ITEMS)
    return table.set_column(
        index, pa.field(PRED_ITEMS, new_type), pa.chunked_array(chunks, type=new_type)
    )
