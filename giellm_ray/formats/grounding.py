"""Ground extracted spans in their source text: character offsets a consumer can highlight.

Repeated spans (SCNM keeps duplicates) are matched to successive occurrences; a span that does not
occur in the text gets ``start``/``end`` of ``None``. Offsets are Python string indices
(code points), ``text[start:end] == span``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def _locate(text: str, span: str, cursors: dict[str, int]) -> tuple[int | None, int | None]:
    if not span:
        return None, None
    at = text.find(span, cursors.get(span, 0))
    if at < 0:
        at = text.find(span)  # more repeats than occurrences: point at the first
    if at < 0:
        return None, None
    cursors[span] = at + len(span)
    return at, at + len(span)


def ground_items(text: str | None, items: Iterable[Mapping]) -> list[dict]:
    """Items with ``start``/``end`` (and ``tail_start``/``tail_end`` for relation items)."""
    cursors: dict[str, int] = {}
    out = []
    for it in items:
        g = dict(it)
        g["start"], g["end"] = _locate(text or "", it["span"], cursors)
        tail = it.get("tail")
        g["tail_start"], g["tail_end"] = (
            _locate(text or "", tail, cursors) if tail is not None else (None, None)
        )
        out.append(g)
    return out


def span_in_text(text: str, item: Mapping) -> bool:
    """Whether every text field of ``item`` (span, and tail if any) occurs in ``text``."""
    fields = [item["span"]] + ([item["tail"]] if item.get("tail") is not None else [])
    return all(f and f in text for f in fields)
