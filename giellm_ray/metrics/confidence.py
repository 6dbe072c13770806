"""How well confidence scores rank right against wrong answers: summable bins, then ratios.

Each predicted item (``pred_items[].score``) and each row's text-level label (``tl_score``) has a
score in [0, 1] (or none, for outputs written before scores existed) and is right or wrong: an
item is right when it matches a gold item (multiset matching on label, span and tail, as the
item P/R/F1 counts); a TL label when it equals the gold one. :func:`add_scores` drops each into
one of ``BINS`` equal-width bins over [0, 1] and keeps, per bin, how many, how many right and the
sum of their scores. Bins from shards add up (:func:`merge_score_counts`), so a 187k-row job is
binned per file and summarised once.

From the bins (:func:`confidence`):

- ``precision_at``: for thresholds 0.0, 0.1, ..., 0.9, the share right among answers scored at
  least the threshold, how many are kept, and (items) the recall that is left: right items kept
  over gold items. Thresholds sit on bin edges, so these are exact, not interpolated.
- ``calibration``: per bin, count, mean score and share right; ``ece`` (expected calibration
  error) = sum over bins of count/total * |share right - mean score|.

Pure Python: no torch, no ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

BINS = 10
KINDS = ("item", "tl")


def empty_bins() -> dict:
    """One kind's counts: per bin ``n``/``correct``/``score_sum``, plus unscored answers."""
    return {
        "n": [0] * BINS,
        "correct": [0] * BINS,
        "score_sum": [0.0] * BINS,
        "unscored": 0,
        "unscored_correct": 0,
    }


def empty_score_counts() -> dict:
    return {kind: empty_bins() for kind in KINDS}


def bin_of(score: float) -> int:
    """The bin of a score: ``[k/10, (k+1)/10)``, the last bin closed at 1."""
    return min(BINS - 1, max(0, int(score * BINS)))


def add_answer(bins: dict, score: float | None, correct: bool) -> None:
    """Fold one scored answer into one kind's bins (in place); ``None`` counts as unscored."""
    if score is None or score != score:  # NaN: no usable score
        bins["unscored"] += 1
        bins["unscored_correct"] += bool(correct)
        return
    k = bin_of(float(score))
    bins["n"][k] += 1
    bins["correct"][k] += bool(correct)
    bins["score_sum"][k] += float(score)


def add_scores(
    counts: dict,
    item_results: Iterable[tuple[float | None, bool]],
    tl: tuple[float | None, bool] | None,
) -> None:
    """Fold one row: its predicted items as ``(score, right)`` pairs and its TL ``(score, right)``
    (``None`` when the row has no TL prediction to judge)."""
    for score, ok in item_results:
        add_answer(counts["item"], score, ok)
    if tl is not None:
        add_answer(counts["tl"], *tl)


def merge_score_counts(parts: Iterable[Mapping[str, Mapping]]) -> dict[str, dict]:
    """Sum per-dataset score counts (``{dataset: {kind: bins}}``) from several shards."""
    out: dict[str, dict] = {}
    for part in parts:
        for ds, kinds in part.items():
            acc = out.setdefault(ds, empty_score_counts())
            for kind in KINDS:
                src, dst = kinds.get(kind) or empty_bins(), acc[kind]
                for key in ("n", "correct", "score_sum"):
                    dst[key] = [a + b for a, b in zip(dst[key], src[key], strict=True)]
                dst["unscored"] += src["unscored"]
                dst["unscored_correct"] += src["unscored_correct"]
    return out


def _frac(num: float, den: float) -> float | None:
    return num / den if den else None


def confidence(bins: Mapping, gold_items: int | None = None) -> dict:
    """Precision at thresholds and the calibration table of one kind's bins.

    ``gold_items`` (item kind: gold items of the dataset) adds ``recall`` to each threshold.
    """
    total = sum(bins["n"])
    precision_at = []
    for k in range(BINS):
        kept = sum(bins["n"][k:])
        right = sum(bins["correct"][k:])
        entry = {
            "threshold": round(k / BINS, 2),
            "kept": kept,
            "precision": _frac(right, kept),
            "coverage": _frac(kept, total),
        }
        if gold_items is not None:
            entry["recall"] = _frac(right, gold_items)
        precision_at.append(entry)
    calibration, ece = [], 0.0
    for k in range(BINS):
        n = bins["n"][k]
        mean = _frac(bins["score_sum"][k], n)
        acc = _frac(bins["correct"][k], n)
        if n and acc is not None and mean is not None:
            ece += n / total * abs(acc - mean)
        calibration.append(
            {
                "low": round(k / BINS, 2),
                "high": round((k + 1) / BINS, 2),
                "n": n,
                "mean_score": mean,
                "accuracy": acc,
            }
        )
    return {
        "scored": total,
        "unscored": bins["unscored"],
        "accuracy": _frac(sum(bins["correct"]), total),
        "ece": ece if total else None,
        "precision_at": precision_at,
        "calibration": calibration,
    }


def confidence_report(
    score_counts: Mapping[str, Mapping], gold_items: Mapping[str, int] | None = None
) -> dict[str, dict]:
    """``{dataset: {"item": confidence(...), "tl": confidence(...)}}`` for datasets with any
    scored answer (outputs without scores give an empty report)."""
    out = {}
    for ds, kinds in score_counts.items():
        if not any(sum(kinds[k]["n"]) for k in KINDS):
            continue
        out[ds] = {
            "item": confidence(kinds["item"], (gold_items or {}).get(ds)),
            "tl": confidence(kinds["tl"]),
        }
    return out
