"""Error analysis over scored rows: item marks, TL/WL confusions, score bins, a sample of errors.

:class:`Analysis` takes one row at a time (``add``) and keeps only what adds up across shards and
stays small at 187k rows:

- the TL/WL/ALL counts of :mod:`~giellm_ray.metrics.counts`;
- score bins per dataset (:mod:`~giellm_ray.metrics.confidence`): every predicted item is right
  or wrong by multiset matching, every TL label by equality;
- the confusion of TL labels (gold -> predicted) and of WL labels: matched items count on the
  diagonal, a predicted item with the span (and tail) of a gold one but another label is
  *mislabelled* (gold -> predicted label), a gold item left over is *missing* (label -> ``∅``),
  a predicted one *extra* (``∅`` -> label);
- how many rows are rows of the shipped synthetic sample (same id and text as in
  ``giellm_ray/resources/sample``): the report then says its numbers are not the paper's kind;
- a sample of the rows it got wrong: per dataset the ``sample_size`` rows with the smallest hash
  of (dataset, id), a bottom-k sample, so the same rows are kept however the input is split or
  ordered, and two samples merge into the sample of the union (:meth:`merge`).

Pure Python: no torch, no ray.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
from collections import Counter
from collections.abc import Mapping, Sequence

import pyarrow.parquet as pq

from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, ground_items
from giellm_ray.metrics.confidence import add_scores, empty_score_counts, merge_score_counts
from giellm_ray.metrics.counts import add_row, empty_counts, merge_counts, score_row

NONE_LABEL = "∅"  # the missing side of an extra or missing item in the WL confusion
DEFAULT_SAMPLE = 400


def _key(item: Mapping) -> tuple:
    return (item["label"], item["span"], item.get("tail"))


def _where(item: Mapping) -> tuple:
    return (item["span"], item.get("tail"))


def match_items(
    gold: Sequence[Mapping], pred: Sequence[Mapping]
) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Marks for gold items (``ok``/``mislabelled``/``missing``), for predicted items
    (``ok``/``mislabelled``/``extra``) and the (gold label, predicted label) pairs of the WL
    confusion. Exact matches first (as item P/R/F1 counts them), then same span and tail."""
    gmarks, pmarks = [""] * len(gold), [""] * len(pred)
    pairs: list[tuple[str, str]] = []
    free: dict[tuple, list[int]] = {}
    for i, g in enumerate(gold):
        free.setdefault(_key(g), []).append(i)
    for j, p in enumerate(pred):
        slots = free.get(_key(p))
        if slots:
            gmarks[slots.pop(0)] = pmarks[j] = "ok"
            pairs.append((p["label"], p["label"]))
    by_where: dict[tuple, list[int]] = {}
    for i, g in enumerate(gold):
        if not gmarks[i]:
            by_where.setdefault(_where(g), []).append(i)
    for j, p in enumerate(pred):
        if pmarks[j]:
            continue
        slots = by_where.get(_where(p))
        if slots:
            i = slots.pop(0)
            gmarks[i] = pmarks[j] = "mislabelled"
            pairs.append((gold[i]["label"], p["label"]))
        else:
            pmarks[j] = "extra"
            pairs.append((NONE_LABEL, p["label"]))
    for i, g in enumerate(gold):
        if not gmarks[i]:
            gmarks[i] = "missing"
            pairs.append((g["label"], NONE_LABEL))
    return gmarks, pmarks, pairs


def item_scores(parsed: Sequence[Mapping], scored: Sequence[Mapping] | None) -> list[float | None]:
    """The ``score`` of each parsed predicted item, read from the scored file's ``pred_items``
    (same parse, same order); ``None`` where the file has no scores (older runs) or differs."""
    if not scored or len(scored) != len(parsed):
        return [None] * len(parsed)
    out = []
    for p, s in zip(parsed, scored, strict=True):
        same = s.get("label") == p["label"] and s.get("span") == p["span"]
        out.append(s.get("score") if same else None)
    return out


@functools.lru_cache(maxsize=1)
def _sample_texts() -> dict[str, str]:
    from giellm_ray.sample import sample_path

    out: dict[str, str] = {}
    for split in ("train", "test"):
        t = pq.read_table(sample_path(split), columns=["id", "text"])
        out.update(zip(t.column("id").to_pylist(), t.column("text").to_pylist(), strict=True))
    return out


def is_sample_row(row_id: str | None, text: str | None) -> bool:
    """Whether a row is a row of the shipped synthetic sample (its id, with the same text)."""
    return row_id is not None and text is not None and _sample_texts().get(row_id) == text


def _rank(dataset: str, row_id: str | None, text: str | None) -> int:
    key = f"{dataset}\0{row_id if row_id is not None else text}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def _bump(table: dict, gold: str | None, pred: str | None) -> None:
    g, p = gold if gold is not None else NONE_LABEL, pred if pred is not None else NONE_LABEL
    table.setdefault(g, {})
    table[g][p] = table[g].get(p, 0) + 1


class Analysis:
    """Counts, score bins, confusions and an error sample, accumulated row by row."""

    def __init__(
        self, registry: TaskRegistry = DEFAULT_REGISTRY, sample_size: int = DEFAULT_SAMPLE
    ) -> None:
        self.registry = registry
        self.sample_size = sample_size
        self.counts: dict[str, dict[str, int]] = {}
        self.scores: dict[str, dict] = {}
        self.tl_confusion: dict[str, dict] = {}
        self.wl_confusion: dict[str, dict] = {}
        self.wrong: Counter[str] = Counter()
        self.synthetic: Counter[str] = Counter()
        # heap of (-rank, arrival, row): ``arrival`` breaks ties between rows of equal rank (the
        # same dataset and id scored twice, e.g. once per LoRA adapter), so rows never compare.
        self.samples: dict[str, list[tuple[int, int, dict]]] = {}
        self._arrival = itertools.count()

    def add(
        self,
        dataset: str,
        target: str | None,
        prediction: str | None,
        *,
        row_id: str | None = None,
        text: str | None = None,
        scored_items: Sequence[Mapping] | None = None,
        tl_score: float | None = None,
    ) -> dict:
        """Score one row and fold it in; return the :func:`score_row` result, items grounded."""
        row = score_row(dataset, target, prediction, self.registry)
        row["target"], row["prediction"] = target, prediction
        add_row(self.counts.setdefault(dataset, empty_counts()), row)
        gold = ground_items(text, row["target_items"] or [])
        pred = ground_items(text, row["pred_items"] or [])
        row["target_items"], row["pred_items"] = gold, pred
        if row["target_error"]:
            return row
        self.synthetic[dataset] += is_sample_row(row_id, text)
        gmarks, pmarks, pairs = match_items(gold, pred)
        scores = item_scores(pred, scored_items)
        judged_tl = row["pred_tl_label"] is not None
        add_scores(
            self.scores.setdefault(dataset, empty_score_counts()),
            zip(scores, (m == "ok" for m in pmarks), strict=True),
            (tl_score, row["tl_match"]) if judged_tl else None,
        )
        _bump(
            self.tl_confusion.setdefault(dataset, {}), row["target_tl_label"], row["pred_tl_label"]
        )
        wl = self.wl_confusion.setdefault(dataset, {})
        for g, p in pairs:
            _bump(wl, g, p)
        if not row["all_match"]:
            self.wrong[dataset] += 1
            self._offer(dataset, row_id, text, row, gmarks, pmarks, scores, tl_score)
        return row

    def _offer(self, dataset, row_id, text, row, gmarks, pmarks, scores, tl_score) -> None:
        rank = _rank(dataset, row_id, text)
        heap = self.samples.setdefault(dataset, [])
        if len(heap) >= self.sample_size and -heap[0][0] <= rank:
            return
        record = {
            "id": row_id,
            "dataset": dataset,
            "text": text,
            "rank": rank,
            "target": row.get("target"),
            "prediction": row.get("prediction"),
            "gold_tl": row["target_tl_label"],
            "pred_tl": row["pred_tl_label"],
            "tl_score": tl_score,
            "tl_match": row["tl_match"],
            "prediction_error": row["prediction_error"],
            "gold_items": [
                {**g, "mark": m} for g, m in zip(row["target_items"], gmarks, strict=True)
            ],
            "pred_items": [
                {**p, "mark": m, "score": s}
                for p, m, s in zip(row["pred_items"], pmarks, scores, strict=True)
            ],
        }
        entry = (-rank, next(self._arrival), record)
        if len(heap) < self.sample_size:
            heapq.heappush(heap, entry)
        else:
            heapq.heapreplace(heap, entry)

    def merge(self, other: Analysis) -> Analysis:
        """Fold another shard's analysis into this one (in place); return self."""
        self.counts = merge_counts([self.counts, other.counts])
        self.scores = merge_score_counts([self.scores, other.scores])
        for mine, theirs in (
            (self.tl_confusion, other.tl_confusion),
            (self.wl_confusion, other.wl_confusion),
        ):
            for ds, table in theirs.items():
                acc = mine.setdefault(ds, {})
                for g, row in table.items():
                    for p, n in row.items():
                        acc.setdefault(g, {})
                        acc[g][p] = acc[g].get(p, 0) + n
        self.wrong.update(other.wrong)
        self.synthetic.update(other.synthetic)
        for ds, heap in other.samples.items():
            rows = sorted(self.samples.get(ds, []) + heap, key=lambda e: -e[0])
            kept = (e[-1] for e in rows[: self.sample_size])
            self.samples[ds] = [(-r["rank"], next(self._arrival), r) for r in kept]
            heapq.heapify(self.samples[ds])
        return self

    def sample(self, dataset: str) -> list[dict]:
        """The sampled wrong rows of ``dataset`` in a stable order (by rank)."""
        return [e[-1] for e in sorted(self.samples.get(dataset, []), key=lambda e: -e[0])]

    def gold_items(self) -> dict[str, int]:
        """Gold items per dataset (item TP + FN): the denominator of recall at a threshold."""
        return {ds: c["item_tp"] + c["item_fn"] for ds, c in self.counts.items()}
