"""Read the GIELLM authors' released files into the dataset schema, learning tasks from the data.

Accepted layouts (the authors' Hugging Face datasets; see ``shared/spec/GIELLM.md`` §1):

- CSV, one column, ``SOURCE,,TARGET`` per record (the older SLG code; quoted or not, an optional
  header line without ``,,`` is skipped);
- CSV with a header naming two columns: ``input,output``, ``source,target``, ``prompt,target``
  or ``prompt,completion``;
- JSON: an array of objects, or JSON Lines, with one of those key pairs.

``SOURCE`` is a unified-format prompt ``TEXT<l1>…<lN>IW`` and ``TARGET`` ``<TL>IW:LABEL;SPAN…``.
Everything task-specific comes FROM THE DATA, in a first pass: the instruction word and the TL
inventory from the prompt's tail (the most common ``<l1>…<lN>`` per IW, in the data's order),
the WL labels from the first item of each target (the first ``:LABEL;`` is unambiguous even when
spans contain separators), a ``:X;``-only item section as the none marker, and for TCREE (or any
base task with relation labels) relation labels from every ``:HEAD;REL;TAIL``. The dataset name is
``--dataset`` or inferred from the IW (固有表現抽出 → SCNM, ...). The learned
:class:`~giellm_ray.formats.TaskRegistry` is written beside the Parquet as ``tasks.json``.

A second pass parses every target with the learned task; a target that does not parse keeps its
text and prompt and gets the parser's reason in ``error``. A file whose *shape* does not fit is a
``ValueError`` naming what was expected and the first offending record.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterator

from giellm_ray import io
from giellm_ray.data.progress import Progress
from giellm_ray.data.sink import ParquetSink, safe_name
from giellm_ray.data.tables import json_records
from giellm_ray.errors import UserError
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, TaskSpec, learn_task, parse

log = logging.getLogger(__name__)

PAIR_KEYS = (
    ("input", "output"),
    ("source", "target"),
    ("prompt", "target"),
    ("prompt", "completion"),
)
EXTRA_IWS = {"イベント抽出": "TCREE"}
_TAIL = re.compile(r"((?:<[^<>]+>)+)([^<>]+)$", re.S)
_FIRST_PAIR = re.compile(r":([^:;<>]+);")
_REL = re.compile(r":[^:;]+;([^:;<>]+);")
EXPECTED_CSV = (
    "one `SOURCE,,TARGET` column per line, or a header naming input,output / "
    "source,target / prompt,target / prompt,completion"
)


def split_source_target(line: str) -> tuple[str, str] | None:
    """Split a ``SOURCE,,TARGET`` line at the ``,,`` where the prompt tail's IW starts the target."""
    start = 0
    while (at := line.find(",,<", start)) >= 0:
        source, target = line[:at], line[at + 2 :]
        tail = _TAIL.search(source)
        if tail and re.match(r"<[^<>]+>" + re.escape(tail.group(2)), target):
            return source, target
        start = at + 1
    return None


def _pair_keys(names: list[str]) -> tuple[str, str] | None:
    lower = {n.strip().lower(): n for n in names}
    for src, tgt in PAIR_KEYS:
        if src in lower and tgt in lower:
            return lower[src], lower[tgt]
    return None


def _csv_pairs(path: str) -> Iterator[tuple[int, str, str]]:
    reader = csv.reader(io.open_text_lines(path))
    keys = None
    for n, fields in enumerate(reader, start=1):
        if not fields or not any(f.strip() for f in fields):
            continue
        if n == 1:
            keys = _pair_keys(fields)
            if keys:
                index = (fields.index(keys[0]), fields.index(keys[1]))
                continue
            if ",," not in ",".join(fields) and "<" not in ",".join(fields):
                continue  # a header line such as `text`
        if keys:
            if len(fields) <= max(index):
                raise UserError(
                    f"{path}: record {n}: expected {len(fields)} columns per the "
                    f"header, found {fields!r:.120}"
                )
            yield n, fields[index[0]], fields[index[1]]
            continue
        split = split_source_target(",".join(fields))
        if split is None:
            raise UserError(
                f"{path}: record {n} does not fit; expected {EXPECTED_CSV} where "
                f"SOURCE ends with <label>…INSTRUCTION and TARGET starts with "
                f"<label>INSTRUCTION; found {','.join(fields)[:120]!r}"
            )
        yield n, *split


def _json_pairs(path: str) -> Iterator[tuple[int, str, str]]:
    keys = None
    for n, (rec, error) in enumerate(json_records(path), start=1):
        if error:
            raise UserError(
                f"{path}: record {n}: {error}; expected JSON objects with input/output-like keys"
            )
        if keys is None:
            keys = _pair_keys(list(rec))
            if keys is None:
                raise UserError(
                    f"{path}: record 1 has keys {list(rec)}; expected one of the "
                    f"pairs {[f'{a}/{b}' for a, b in PAIR_KEYS]}"
                )
        src, tgt = rec.get(keys[0]), rec.get(keys[1])
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise UserError(
                f"{path}: record {n}: expected strings under {list(keys)}, found "
                f"{json.dumps(rec, ensure_ascii=False)[:120]}"
            )
        yield n, src, tgt


def iter_pairs(path: str) -> Iterator[tuple[int, str, str]]:
    """``(record number, source, target)`` from any accepted layout."""
    lower = str(path).lower()
    if lower.endswith((".json", ".jsonl", ".ndjson")):
        return _json_pairs(path)
    return _csv_pairs(path)


def _prompt_tail(n: int, source: str, path: str) -> tuple[tuple[str, ...], str]:
    tail = _TAIL.search(source)
    if tail is None:
        raise UserError(
            f"{path}: record {n}: expected a prompt ending with <label>…"
            f"INSTRUCTION, found …{source[-80:]!r}"
        )
    return tuple(re.findall(r"<([^<>]+)>", tail.group(1))), tail.group(2)


def infer_name(iw: str, dataset: str | None, registry: TaskRegistry) -> str:
    if dataset:
        return dataset
    by_iw = {t.instruction: t.name for t in registry.values()} | EXTRA_IWS
    if iw not in by_iw:
        raise UserError(
            f"cannot infer the dataset from instruction word {iw!r} (known: "
            f"{sorted(by_iw)}); pass --dataset NAME"
        )
    return by_iw[iw]


def learn_tasks(
    path: str, dataset: str | None = None, registry: TaskRegistry = DEFAULT_REGISTRY
) -> dict[str, TaskSpec]:
    """First pass: IW → learned :class:`TaskSpec` for every instruction word in the file."""
    inventories: dict[str, Counter] = defaultdict(Counter)
    firsts: dict[str, list[str]] = defaultdict(list)
    rel_firsts: dict[str, list[str]] = defaultdict(list)
    none_markers: dict[str, Counter] = defaultdict(Counter)
    for n, source, target in iter_pairs(path):
        labels, iw = _prompt_tail(n, source, path)
        inventories[iw][labels] += 1
        head = re.match(r"<[^<>]+>" + re.escape(iw), target)
        rest = target[head.end() :] if head else ""
        if (m := _FIRST_PAIR.match(rest)) and m.end() == len(rest):
            none_markers[iw][m.group(1)] += 1
        elif m:
            firsts[iw].append(m.group(1))
        # relation items `:HEAD;REL;TAIL`: heads have no ':'/';' (the parser assumes so too)
        rel_firsts[iw].extend(_REL.findall(rest))
    if not inventories:
        raise UserError(f"{path}: no records found; expected {EXPECTED_CSV} (or JSON)")
    if dataset and len(inventories) > 1:
        raise UserError(
            f"{path}: --dataset {dataset!r} given but the file mixes instruction "
            f"words {sorted(inventories)}; drop --dataset to name them per IW"
        )
    tasks = {}
    for iw, inv in inventories.items():
        name = infer_name(iw, dataset, registry)
        if name in registry:
            base = registry[name]
        else:
            log.warning(
                "giellm data authors: %r is not a known dataset; its task is learned "
                "entirely from the data",
                name,
            )
            base = TaskSpec(name, (), (), iw)
        relational = bool(base.relation_labels) or name == "TCREE"
        marker = none_markers[iw].most_common(1)[0][0] if none_markers[iw] else base.none_marker
        base = base.replace(tl_labels=inv.most_common(1)[0][0], none_marker=marker)
        items = (
            [[{"label": r, "span": "x", "tail": "y"}] for r in rel_firsts[iw]]
            if relational
            else [[{"label": x, "span": "x"}] for x in firsts[iw] if x != marker]
        )
        tasks[iw] = learn_task(base, [], items, instruction=iw)
    return tasks


def read_authors(
    path: str, output: str, dataset: str | None = None, registry: TaskRegistry = DEFAULT_REGISTRY
) -> dict:
    """Convert ``path`` to Parquet at ``output`` (+ ``tasks.json`` beside it); return a summary."""
    tasks = learn_tasks(path, dataset, registry)
    single = output.rstrip("/").endswith(".parquet")
    parquet = output if single else io.join(output, "data.parquet")
    tasks_json = (
        io.join(parquet.rsplit("/", 1)[0], "tasks.json") if "/" in parquet else "tasks.json"
    )
    progress = Progress("giellm data authors")
    errors: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    with ParquetSink(parquet) as sink:
        chunk: list[dict] = []
        for n, source, target in iter_pairs(path):
            labels, iw = _prompt_tail(n, source, path)
            task = tasks[iw]
            inventory = "".join(f"<{x}>" for x in task.tl_labels) + task.instruction
            row = {
                "id": f"{safe_name(task.name).lower()}-{n}",
                "dataset": task.name,
                "prompt": source,
                "target": target,
                "items": [],
                "error": None,
                "text": source[: -len(inventory)] if source.endswith(inventory) else None,
            }
            if row["text"] is None:
                row["error"] = f"prompt does not end with the learned inventory {inventory!r}"
            else:
                result = parse(target, task)
                row["tl_label"], row["items"], row["error"] = (
                    result.tl_label,
                    result.items,
                    result.error,
                )
            if row["error"]:
                errors[row["error"][:60]] += 1
            counts[task.name] += 1
            chunk.append(row)
            if len(chunk) >= 4096:
                sink.write_rows(chunk)
                progress.add(len(chunk))
                chunk = []
        sink.write_rows(chunk)
        progress.add(len(chunk))
    registry_out = TaskRegistry(tasks.values())
    io.write_text(tasks_json, json.dumps(registry_out.to_dict(), ensure_ascii=False, indent=2))
    progress.done()
    return {
        "rows": dict(counts),
        "error_rows": sum(errors.values()),
        "errors": dict(errors.most_common(10)),
        "output": parquet,
        "tasks_json": tasks_json,
        "tasks": registry_out.to_dict(),
    }
