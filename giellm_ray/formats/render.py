"""Render a structured record into GIELLM's unified prompt/target strings.

``render(record)`` turns ``{dataset, text, tl_label, items}`` into ``(prompt, target)``::

    prompt = TEXT + "<社会><文芸><学問><技術><自然>" + "固有表現抽出"
    target = "<社会>" + "固有表現抽出" + ":その他の組織名;SPRiNGS"

Items are dicts ``{"label", "span", "tail"}``: ``tail`` is ``None`` for two-field items
(``:LABEL;SPAN``) and set for relation items (``:SPAN;LABEL;TAIL``, i.e. head;relation;tail).
SCPOS item lists are de-duplicated and sorted by cp932 byte order, as the authors' data is.
Rendering a record that breaks its task's contract raises ``ValueError``: builders catch it and
record the reason per row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from giellm_ray.formats.tasks import DEFAULT_REGISTRY, TaskRegistry, TaskSpec


def make_item(label: str, span: str, tail: str | None = None) -> dict:
    """The canonical item dict (the Parquet ``items`` struct has exactly these fields)."""
    return {"label": label, "span": span, "tail": tail}


def cp932_key(word: str) -> bytes:
    """Sort key: the word's cp932 bytes; characters cp932 cannot encode sort last."""
    try:
        return word.encode("cp932")
    except UnicodeEncodeError:
        out = bytearray()
        for ch in word:
            try:
                out += ch.encode("cp932")
            except UnicodeEncodeError:
                out += b"\xff\xff" + ch.encode("utf-8")
        return bytes(out)


def normalize_items(items: Iterable[Mapping], task: TaskSpec) -> list[dict]:
    """Items in the order the task writes them (cp932-sorted and de-duplicated for SCPOS)."""
    canon = [make_item(it["label"], it["span"], it.get("tail")) for it in items or ()]
    if task.item_order == "cp932":
        seen: dict[tuple, dict] = {}
        for it in canon:
            seen.setdefault((it["label"], it["span"], it["tail"]), it)
        canon = sorted(seen.values(), key=lambda it: (cp932_key(it["span"]), it["label"]))
    return canon


def build_prompt(text: str, task: TaskSpec) -> str:
    """``TEXT<tl1><tl2>…IW``: the model input for one text."""
    return text + "".join(f"<{label}>" for label in task.tl_labels) + task.instruction


def render_items(items: Iterable[Mapping], task: TaskSpec) -> str:
    """The item section of a target, after the instruction word."""
    items = normalize_items(items, task)
    if not items:
        return f":{task.none_marker};" if task.none_marker else ""
    parts = []
    for it in items:
        if it["tail"] is None:
            if it["label"] not in task.wl_labels:
                raise ValueError(f"{task.name}: item label {it['label']!r} not in {task.wl_labels}")
            parts.append(f":{it['label']};{it['span']}")
        else:
            if it["label"] not in task.relation_labels:
                raise ValueError(
                    f"{task.name}: relation {it['label']!r} not in {task.relation_labels}"
                )
            parts.append(f":{it['span']};{it['label']};{it['tail']}")
        if not it["span"] or (it["tail"] is not None and not it["tail"]):
            raise ValueError(f"{task.name}: empty span in item {it}")
    return "".join(parts)


def build_target(tl_label: str, items: Iterable[Mapping], task: TaskSpec) -> str:
    """``<TL>IW:LABEL;SPAN…``: the model output for one text."""
    if tl_label not in task.tl_labels:
        raise ValueError(f"{task.name}: TL label {tl_label!r} not in {task.tl_labels}")
    return f"<{tl_label}>{task.instruction}{render_items(items, task)}"


def render(record: Mapping, registry: TaskRegistry = DEFAULT_REGISTRY) -> tuple[str, str]:
    """``(prompt, target)`` for a record with ``dataset``, ``text``, ``tl_label``, ``items``."""
    task = registry[record["dataset"]]
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text is empty or missing")
    return build_prompt(text, task), build_target(record["tl_label"], record["items"], task)
