"""Task registry: what each GIELLM dataset asks for and how its answers look.

A :class:`TaskSpec` names a dataset (``SCNM``, ``SCPOS:RW``, ...), its text-level (TL) label
inventory, its word-level (WL) label inventory, the instruction word (IW) appended to every prompt,
the shape of its items and how item lists are ordered. Defaults follow ``shared/spec/GIELLM.md``
(marked [F] where they come from the authors' artefacts, [D] where this project decided them).
Inventories and instruction words can be overridden with :func:`TaskSpec.replace` or learned from
data with :func:`learn_task`. Pure Python: no torch, no ray.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from giellm_ray.errors import UserError

ItemOrder = Literal["source", "cp932"]

SCNM_TL = ("社会", "文芸", "学問", "技術", "自然")
SCNM_WL = (
    "人名",
    "法人名",
    "政治的組織名",
    "その他の組織名",
    "地名",
    "施設名",
    "製品名",
    "イベント名",
)
SCPOS_TL = ("積極", "消極")
SCPOS_WL = ("ポジティブ", "中立", "ネガティブ")
# [I] livedoor news corpus categories: the TCREE topic text comes from there.
TCREE_TL = (
    "トピックニュース",
    "Sports Watch",
    "ITライフハック",
    "家電チャンネル",
    "MOVIE ENTER",
    "独女通信",
    "エスマックス",
    "livedoor HOMME",
    "Peachy",
)


@dataclass(frozen=True)
class TaskSpec:
    """One dataset's unified-format contract.

    ``wl_labels`` are the labels of two-field items ``:LABEL;SPAN`` (entity types, polarities,
    event types). ``relation_labels`` are the middle field of three-field items
    ``:HEAD;RELATION;TAIL``. ``none_marker`` is the label written when a text has no item (the
    SLG-era ``:無い;``); ``None`` writes nothing after the instruction word.
    """

    name: str
    tl_labels: tuple[str, ...]
    wl_labels: tuple[str, ...]
    instruction: str
    relation_labels: tuple[str, ...] = ()
    item_order: ItemOrder = "source"
    none_marker: str | None = None
    max_new_tokens: int = 128
    pos: tuple[str, ...] = field(default=())

    def replace(self, **changes: object) -> TaskSpec:
        """A copy with some fields changed (sequences are turned into tuples)."""
        fixed: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()
        }
        return dataclasses.replace(self, **fixed)

    def to_dict(self) -> dict:
        """A JSON-friendly description (used by ``GET /v1/tasks`` and resolved configs)."""
        return {
            "name": self.name,
            "tl_labels": list(self.tl_labels),
            "wl_labels": list(self.wl_labels),
            "relation_labels": list(self.relation_labels),
            "instruction": self.instruction,
            "item_order": self.item_order,
            "none_marker": self.none_marker,
            "max_new_tokens": self.max_new_tokens,
            "pos": list(self.pos),
        }


DEFAULT_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("SCNM", SCNM_TL, SCNM_WL, "固有表現抽出", none_marker="無い", max_new_tokens=128),
        TaskSpec("SCPOS:RW", SCPOS_TL, SCPOS_WL, "関連語", item_order="cp932", max_new_tokens=192),
        TaskSpec(
            "SCPOS:N",
            SCPOS_TL,
            SCPOS_WL,
            "名詞",
            item_order="cp932",
            max_new_tokens=192,
            pos=("名詞",),
        ),
        TaskSpec(
            "SCPOS:Adj",
            SCPOS_TL,
            SCPOS_WL,
            "形容詞",
            item_order="cp932",
            max_new_tokens=96,
            pos=("形容詞",),
        ),
        TaskSpec(
            "SCPOS:N&Adj",
            SCPOS_TL,
            SCPOS_WL,
            "名詞と形容詞",
            item_order="cp932",
            max_new_tokens=224,
            pos=("名詞", "形容詞"),
        ),
        # [D] TCREE's relation/event inventories are not published: learn them from the data.
        TaskSpec("TCREE", TCREE_TL, (), "関係抽出", max_new_tokens=160),
    )
}


class TaskRegistry(Mapping[str, TaskSpec]):
    """A name → :class:`TaskSpec` mapping whose lookup error lists the known names."""

    def __init__(self, tasks: Iterable[TaskSpec] | None = None) -> None:
        self._tasks = {t.name: t for t in (tasks if tasks is not None else DEFAULT_TASKS.values())}

    def __getitem__(self, name: str) -> TaskSpec:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(
                f"unknown dataset {name!r}; known datasets: {', '.join(sorted(self._tasks))}"
            ) from None

    def __iter__(self):
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def with_task(self, task: TaskSpec) -> TaskRegistry:
        """A new registry with ``task`` added or replaced."""
        return TaskRegistry([*(t for t in self._tasks.values() if t.name != task.name), task])

    def to_dict(self) -> dict[str, dict]:
        return {name: t.to_dict() for name, t in sorted(self._tasks.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping]) -> TaskRegistry:
        """Build from :meth:`to_dict` output, e.g. a ``tasks.json`` written beside a dataset."""
        tasks = []
        for name, d in data.items():
            tasks.append(
                TaskSpec(
                    name=name,
                    tl_labels=tuple(d["tl_labels"]),
                    wl_labels=tuple(d.get("wl_labels", ())),
                    instruction=d["instruction"],
                    relation_labels=tuple(d.get("relation_labels", ())),
                    item_order=d.get("item_order", "source"),
                    none_marker=d.get("none_marker"),
                    max_new_tokens=int(d.get("max_new_tokens", 128)),
                    pos=tuple(d.get("pos", ())),
                )
            )
        return cls(tasks)

    @classmethod
    def load(cls, path: str | None) -> TaskRegistry:
        """The default registry when ``path`` is empty, else the ``tasks.json`` at ``path``
        (local or ``s3://``; e.g. learned from the authors' files by ``giellm data authors``).

        A missing file raises ``FileNotFoundError``, a file of another shape ``ValueError``;
        both name the path.
        """
        if not path:
            return DEFAULT_REGISTRY
        import json

        from giellm_ray import io  # pyarrow-backed I/O, imported only when a file is read

        try:
            text = io.read_text(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"tasks file not found: {path}") from None
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(
                f"{path}: not a tasks.json written by giellm (TaskRegistry.to_dict): {exc}"
            ) from None


DEFAULT_REGISTRY = TaskRegistry()


def learn_task(
    base: TaskSpec,
    tl_labels: Iterable[str | None],
    items: Iterable[Iterable[Mapping]],
    instruction: str | None = None,
) -> TaskSpec:
    """Widen ``base`` with the TL labels and item labels seen in a dataset (order kept stable).

    Labels already in ``base`` keep their place; new ones are appended in order of first sight.
    """

    def merged(known: tuple[str, ...], seen: Iterable[str]) -> tuple[str, ...]:
        out = list(known)
        for label in seen:
            if label and label not in out:
                out.append(label)
        return tuple(out)

    wl_seen: list[str] = []
    rel_seen: list[str] = []
    for row_items in items:
        for it in row_items or ():
            if it.get("tail") is not None:
                rel_seen.append(it["label"])
            elif it["label"] != base.none_marker:
                wl_seen.append(it["label"])
    return base.replace(
        tl_labels=merged(base.tl_labels, (x for x in tl_labels if x)),
        wl_labels=merged(base.wl_labels, wl_seen),
        relation_labels=merged(base.relation_labels, rel_seen),
        instruction=instruction or base.instruction,
    )
