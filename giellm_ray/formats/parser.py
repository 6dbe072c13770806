"""Parse a model output in the unified format back into a TL label and items. Never raises.

Spans may contain the separators themselves (real entities: ``Pi:Co``, ``J:COM春日部``,
``土屋アンナ<愛愛傘>氣志團``), so nothing is split blindly. The TL label is matched against the
task's inventory (longest first), and items start only where ``:`` + a *known* label + ``;``
begins (or, for relation items, ``:HEAD;`` + a known relation + ``;``). Every other character
belongs to the span being read. Where two segmentations fit, the one with more items wins.

``parse(output, task)`` returns a :class:`ParseResult`; its ``error`` is ``None`` on success and a
short reason otherwise (unknown TL label, missing instruction word, unknown item label, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from giellm_ray.formats.render import make_item
from giellm_ray.formats.tasks import TaskSpec


@dataclass
class ParseResult:
    """A parsed output: ``tl_label`` and ``items`` (item dicts), or ``error`` with a reason."""

    tl_label: str | None
    items: list[dict] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _alternation(labels) -> str:
    return "|".join(re.escape(x) for x in sorted(set(labels), key=len, reverse=True))


@lru_cache(maxsize=256)
def _patterns(wl: tuple[str, ...], rel: tuple[str, ...]):
    """Compiled boundary and item patterns for one inventory (cached: tasks are few)."""
    alts = []
    if wl:
        alts.append(f":(?:{_alternation(wl)});")
    if rel:
        # A later relation item's head may not contain ':' or ';' (else it is ambiguous).
        alts.append(f":[^:;]+;(?:{_alternation(rel)});")
    boundary = re.compile("|".join(f"(?={a})" for a in alts)) if alts else None
    pair = re.compile(f":({_alternation(wl)});(.*)", re.S) if wl else None
    relation = re.compile(f":(.+?);({_alternation(rel)});(.*)", re.S) if rel else None
    return boundary, pair, relation


def _parse_items(rest: str, task: TaskSpec) -> tuple[list[dict], str | None]:
    if rest == "" or (task.none_marker and rest == f":{task.none_marker};"):
        return [], None
    wl = tuple(x for x in task.wl_labels + ((task.none_marker,) if task.none_marker else ()))
    boundary, pair, relation = _patterns(wl, task.relation_labels)
    if boundary is None:
        return [], f"unexpected text after the instruction word: {rest[:40]!r}"
    starts = [m.start() for m in boundary.finditer(rest)]
    if not starts or starts[0] != 0:
        return [], f"item section does not start with ':LABEL;': {rest[:40]!r}"
    items: list[dict] = []
    for begin, end in zip(starts, [*starts[1:], len(rest)], strict=True):
        segment = rest[begin:end]
        m = pair.fullmatch(segment) if pair else None
        if m:
            label, span = m.group(1), m.group(2)
            if label == task.none_marker:
                return [], f"'{task.none_marker}' marker mixed with items"
            if not span:
                return [], f"empty span after label {label!r}"
            items.append(make_item(label, span))
            continue
        m = relation.fullmatch(segment) if relation else None
        if m and m.group(3):
            items.append(make_item(m.group(2), m.group(1), m.group(3)))
            continue
        return [], f"malformed item: {segment[:40]!r}"
    return items, None


def parse(output: str, task: TaskSpec) -> ParseResult:
    """Parse ``output`` (the generated text, prompt excluded) for ``task``. Never raises."""
    try:
        if not isinstance(output, str):
            return ParseResult(None, error=f"output is {type(output).__name__}, not str")
        if not output.startswith("<"):
            return ParseResult(None, error="output does not start with '<TL label>'")
        tl = next(
            (
                lab
                for lab in sorted(task.tl_labels, key=len, reverse=True)
                if output.startswith(f"<{lab}>")
            ),
            None,
        )
        if tl is None:
            close = output.find(">")
            shown = output[1:close] if close > 0 else output[1:21]
            return ParseResult(None, error=f"unknown TL label {shown!r}")
        rest = output[len(tl) + 2 :]
        if not rest.startswith(task.instruction):
            return ParseResult(tl, error=f"missing instruction word {task.instruction!r}")
        items, error = _parse_items(rest[len(task.instruction) :], task)
        return ParseResult(tl, items, error)
    except Exception as exc:  # a parser bug must not fail a 187k-row job
        return ParseResult(None, error=f"parser error: {type(exc).__name__}: {exc}")


def parse_cut(output: str, task: TaskSpec) -> ParseResult:
    """Parse an output the token budget cut before its EOS: the items written in full.

    The last item as the parser reads it (from the last ``:LABEL;`` / ``:HEAD;REL;`` boundary)
    is dropped whether or not it parses: the cut may have shortened its span, and a shorter span
    still reads as a span. An output cut before any item keeps its TL label and no items; one
    cut inside ``<TL>IW`` does not parse. Never raises.
    """
    try:
        if not isinstance(output, str):
            return parse(output, task)
        wl = tuple(x for x in task.wl_labels + ((task.none_marker,) if task.none_marker else ()))
        boundary = _patterns(wl, task.relation_labels)[0]
        cut = len(output)
        while cut > 0:
            cut = output.rfind(":", 0, cut)
            if cut < 0:
                break
            at_item = boundary is not None and boundary.match(output, cut)
            head = parse(output[:cut], task)
            if head.ok and (at_item or not head.items):  # or the cut fell in the first item
                return head
        return parse(output, task)
    except Exception as exc:  # a parser bug must not fail a 187k-row job
        return ParseResult(None, error=f"parser error: {type(exc).__name__}: {exc}")
