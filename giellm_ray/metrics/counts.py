"""Per-dataset counts for TL / WL / ALL accuracy, item P/R/F1 and parse failures.

Everything here returns **counts**, never ratios, so shards of a 187k-row job can be scored
independently, summed with :func:`merge_counts`, and turned into ratios once with
:func:`ratios`. Pure Python: no torch, no ray.

Levels (spec §3): TL = predicted TL label equals the gold one; WL = predicted items equal the gold
items as a multiset ("exact-set WL"); ALL = both. The item-level score counts multiset
intersections (micro P/R/F1). An output that does not parse is wrong at every level and counted in
``parse_failures``; a row with no prediction at all (a scoring error) in ``unscored``; a row whose
gold target does not parse (a data problem) in ``invalid_targets`` and is left out of ``n``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, parse

COUNT_KEYS = (
    "n",
    "tl_correct",
    "wl_correct",
    "all_correct",
    "parse_failures",
    "unscored",
    "invalid_targets",
    "item_tp",
    "item_fp",
    "item_fn",
)


def empty_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_KEYS, 0)


def _item_key(item: Mapping) -> tuple:
    return (item["label"], item["span"], item.get("tail"))


def score_row(
    dataset: str,
    target: str | None,
    prediction: str | None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
) -> dict:
    """Parse one target/prediction pair and say which levels match (never raises)."""
    row: dict[str, Any] = {
        "dataset": dataset,
        "target_tl_label": None,
        "target_items": [],
        "pred_tl_label": None,
        "pred_items": [],
        "tl_match": False,
        "wl_match": False,
        "all_match": False,
        "item_tp": 0,
        "item_fp": 0,
        "item_fn": 0,
        "target_error": None,
        "prediction_error": None,
    }
    try:
        task = registry[dataset]
    except KeyError as exc:
        row["target_error"] = str(exc.args[0])
        return row
    if target is None:
        row["target_error"] = "no target"
        return row
    gold = parse(target, task)
    if not gold.ok:
        row["target_error"] = f"target does not parse: {gold.error}"
        return row
    row["target_tl_label"], row["target_items"] = gold.tl_label, gold.items
    gold_bag = Counter(_item_key(i) for i in gold.items)
    if prediction is None:
        row["prediction_error"] = "no prediction"
        row["item_fn"] = sum(gold_bag.values())
        return row
    pred = parse(prediction, task)
    if not pred.ok:
        row["prediction_error"] = pred.error
        row["pred_tl_label"] = pred.tl_label
        row["item_fn"] = sum(gold_bag.values())
        return row
    pred_bag = Counter(_item_key(i) for i in pred.items)
    tp = sum((gold_bag & pred_bag).values())
    row.update(
        pred_tl_label=pred.tl_label,
        pred_items=pred.items,
        tl_match=pred.tl_label == gold.tl_label,
        wl_match=pred_bag == gold_bag,
        item_tp=tp,
        item_fp=sum(pred_bag.values()) - tp,
        item_fn=sum(gold_bag.values()) - tp,
    )
    row["all_match"] = row["tl_match"] and row["wl_match"]
    return row


def add_row(counts: dict[str, int], row: Mapping) -> None:
    """Fold one :func:`score_row` result into ``counts`` (in place)."""
    if row["target_error"]:
        counts["invalid_targets"] += 1
        return
    counts["n"] += 1
    counts["tl_correct"] += row["tl_match"]
    counts["wl_correct"] += row["wl_match"]
    counts["all_correct"] += row["all_match"]
    if row["prediction_error"] == "no prediction":
        counts["unscored"] += 1
    elif row["prediction_error"]:
        counts["parse_failures"] += 1
    for key in ("item_tp", "item_fp", "item_fn"):
        counts[key] += row[key]


def count_rows(
    datasets: Iterable[str],
    targets: Iterable[str | None],
    predictions: Iterable[str | None],
    registry: TaskRegistry = DEFAULT_REGISTRY,
) -> dict[str, dict[str, int]]:
    """Counts per dataset for parallel columns (an Arrow batch's columns as Python lists)."""
    out: dict[str, dict[str, int]] = {}
    for ds, tgt, pred in zip(datasets, targets, predictions, strict=True):
        add_row(out.setdefault(ds, empty_counts()), score_row(ds, tgt, pred, registry))
    return out


def merge_counts(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Sum per-dataset counts from several shards."""
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for ds, counts in part.items():
            acc = out.setdefault(ds, empty_counts())
            for key in COUNT_KEYS:
                acc[key] += int(counts.get(key, 0))
    return out


def _frac(num: int, den: int) -> float | None:
    return num / den if den else None


def ratios(counts: Mapping[str, int]) -> dict[str, float | int | None]:
    """Accuracies and rates (fractions in [0, 1]) from one dataset's counts."""
    n = counts["n"]
    tp, fp, fn = counts["item_tp"], counts["item_fp"], counts["item_fn"]
    p, r = _frac(tp, tp + fp), _frac(tp, tp + fn)
    if tp + fp + fn == 0 and n:  # no items predicted or expected anywhere: perfect agreement
        p = r = 1.0
    f1 = (2 * p * r / (p + r) if (p + r) else 0.0) if p is not None and r is not None else None
    return {
        "n": n,
        "tl_accuracy": _frac(counts["tl_correct"], n),
        "wl_accuracy": _frac(counts["wl_correct"], n),
        "all_accuracy": _frac(counts["all_correct"], n),
        "parse_failure_rate": _frac(counts["parse_failures"], n),
        "unscored_rate": _frac(counts["unscored"], n),
        "item_precision": p,
        "item_recall": r,
        "item_f1": f1,
        "invalid_targets": counts["invalid_targets"],
    }
