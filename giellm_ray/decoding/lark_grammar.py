"""One row's output format as an llguidance Lark grammar (what vLLM's ``guidance`` backend takes).

``row_lark(task, text)`` writes the same language as :class:`~giellm_ray.decoding.grammar.RowGrammar`
(the HF engine's automaton, and the oracle the tests compare this grammar with, mask by mask):
``<TL>IW`` then items ``:LABEL;SPAN`` / ``:HEAD;REL;TAIL``, or the none marker ``:MARKER;`` alone
(tasks with a marker need one item or the marker; tasks without accept no item), then EOS.

The whole output is ONE terminal (every name upper-case), so llguidance compiles it to a single
lazily built DFA (derivatives over its regex) and never has to split the output into lexemes:
a ``:`` after a span may continue the span (a text holding ``J:COM``) or start the next item, and
one regex keeps both open, as the automaton's state sets do. Spans are
``%regex {"substring_chars": TEXT} & /[^;]+/``: a non-empty, ``;``-free substring of the text
starting and ending on character boundaries; heads also exclude ``:`` and, through ``~``, every
label and the none marker (so ``parse`` can split the output back into the items written).
``%llguidance {"no_forcing": true}`` lets the model pick any tokenization of a literal, as the
automaton does (with forcing, llguidance would only offer the canonical tokens of forced bytes).

Differences from the automaton, all on purpose (the oracle test names each):
- no token budget: the automaton stops an output so that it ends before ``max_new_tokens``; here
  a row that reaches the budget is cut (``finished`` false; see ``docs/decisions``);
- no span cap: the automaton caps a span at ``max_span_bytes`` (256) bytes; here a span is bounded
  by the text and the budget only (llguidance counts characters, not bytes, in a repeat bound).

``lead_space``: the tokenizer's decoder drops the first token's leading space (SentencePiece's
``▁`` prefix), so the output may begin with one space the text will not show (the automaton's
``Z`` state). Pure Python; the grammar text is built per row in microseconds.
"""

from __future__ import annotations

import json

from giellm_ray.formats.tasks import TaskSpec


def lark_literal(s: str) -> str:
    """``s`` as a Lark string literal (JSON quoting: llguidance reads JSON string escapes)."""
    return json.dumps(s, ensure_ascii=False)


def _alternatives(words) -> str:
    return " | ".join(lark_literal(w) for w in words)


def _substring(text: str) -> str:
    return "%regex " + json.dumps({"substring_chars": text}, ensure_ascii=False)


def task_items(task: TaskSpec) -> tuple[bool, bool]:
    """Whether ``task`` has label items and relation items at all."""
    return bool(task.wl_labels), bool(task.relation_labels)


def row_lark(task: TaskSpec, text: str, lead_space: bool = False) -> str:
    """The Lark grammar of ``task``'s output about ``text`` (see the module docstring);
    ``ValueError`` for a task no output can satisfy (no TL label: nothing can start it)."""
    if not task.tl_labels:
        raise ValueError(f"task {task.name!r} has no TL labels: no output can start")
    text = text or ""
    spans = any(ch != ";" for ch in text)
    heads = any(ch not in ";:" for ch in text)
    has_wl, has_rel = task_items(task)
    names = [*task.wl_labels, *([task.none_marker] if task.none_marker else [])]
    lines = ['%llguidance {"no_forcing": true}', "start: OUT"]
    item_kinds = []
    if has_wl and spans:
        item_kinds.append('":" LABEL ";" SPAN')
        lines.append(f"LABEL: {_alternatives(task.wl_labels)}")
    if has_rel and heads and spans:
        item_kinds.append('":" HEAD ";" REL ";" SPAN')
        lines.append(f"REL: {_alternatives(task.relation_labels)}")
        head = f"({_substring(text)} & /[^;:]+/)"
        if names:
            head += f" & ~({_alternatives(names)})"
        lines.append(f"HEAD: {head}")
    if item_kinds:
        lines.append(f"SPAN: {_substring(text)} & /[^;]+/")
        lines.append(f"ITEM: {' | '.join(item_kinds)}")
    if task.none_marker:
        lines.append(f"NONE: {lark_literal(':' + task.none_marker + ';')}")
        body = "(NONE | ITEM+)" if item_kinds else "NONE"
    else:
        body = "ITEM*" if item_kinds else ""
    prefixes = [f"<{t}>{task.instruction}" for t in task.tl_labels]
    lines.append(f"PREFIX: {_alternatives(prefixes)}")
    lead = '" "? ' if lead_space else ""
    lines.insert(2, f"OUT: {lead}PREFIX {body}".rstrip())
    return "\n".join(lines) + "\n"
