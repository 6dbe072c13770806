"""Format validity of raw outputs, with no gold needed: do they parse, are labels known, are spans real.

``format_validity(texts, predictions, task)`` gives the share of rows whose prediction parses, whose
TL and WL labels are all in the task's inventories, and whose spans all occur in the row's text.
It is how constrained decoding is judged on a model that was never trained (tests, benchmarks).
Pure: no torch, no ray.
"""

from __future__ import annotations

from collections.abc import Iterable

from giellm_ray.formats import parse
from giellm_ray.formats.tasks import TaskSpec


def format_validity(
    texts: Iterable[str | None], predictions: Iterable[str | None], task: TaskSpec
) -> dict[str, float]:
    """``{"parse", "labels", "spans"}`` shares over the rows; a ``None`` prediction fails all three."""
    n = parsed = labels = spans = 0
    for text, prediction in zip(texts, predictions, strict=True):
        n += 1
        p = parse(prediction, task) if prediction is not None else None
        if p is None or not p.ok:
            continue
        parsed += 1
        labels += p.tl_label in task.tl_labels and all(
            it["label"] in task.wl_labels for it in p.items
        )
        spans += all(it["span"] and it["span"] in (text or "") for it in p.items)
    if not n:
        return {"parse": 0.0, "labels": 0.0, "spans": 0.0}
    return {"parse": parsed / n, "labels": labels / n, "spans": spans / n}
