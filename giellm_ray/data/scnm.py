"""SCNM from Stockmark's Wikipedia NER ``ner.json`` plus a TL label file the user supplies.

Stockmark's records are ``{curid, text, entities: [{name, span, type}]}``. Items are the entities
in source order, duplicates kept (``:TYPE;NAME``); a sentence without entities gets ``:無い;``.
The raw data has **no text-level label**: the GIELLM authors added the five classes (社会 文芸
学問 技術 自然) by hand. Labels come from ``--tl-labels``, a CSV (header ``curid,label``) or
JSONL (``{"curid": ..., "label": ...}``) file, and are never invented: a row whose curid has no
label keeps its prompt and items but gets ``tl_label``/``target`` null and an ``error`` saying
so, and the summary counts such rows and says how to supply labels.

A TL label outside the task's inventory is that row's error (we do not learn new TL classes from
a label file: a typo would silently become a class; use ``giellm data authors`` or a custom task
registry for other inventories). An unknown entity type is also a per-row error.
"""

from __future__ import annotations

import csv
import io as stdio
import json
from collections import Counter

from giellm_ray import io
from giellm_ray.data.progress import Progress
from giellm_ray.errors import UserError
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry, build_prompt, make_item, render
from giellm_ray.schema import dataset_table

NO_LABEL = "no TL label for curid"


def read_tl_labels(path: str) -> dict[str, str]:
    """``curid → label`` from a CSV (``curid,label`` header) or JSONL file; errors name the line."""
    text = io.read_text(path)
    labels: dict[str, str] = {}
    if path.lower().endswith((".jsonl", ".json", ".ndjson")):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}: line {n} is not JSON ({exc.msg}); expected one "
                    '{"curid": ..., "label": ...} object per line'
                ) from None
            if not isinstance(rec, dict) or "curid" not in rec or "label" not in rec:
                raise UserError(
                    f"{path}: line {n}: expected an object with keys curid and "
                    f"label, found {line[:80]!r}"
                )
            rows.append((n, rec["curid"], rec["label"]))
    else:
        reader = csv.DictReader(stdio.StringIO(text))
        missing = [c for c in ("curid", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(
                f"{path}: missing column(s) {missing}; expected a CSV header "
                f"'curid,label', found {reader.fieldnames}"
            )
        rows = [(n, r["curid"], r["label"]) for n, r in enumerate(reader, start=2)]
    for n, curid, label in rows:
        curid, label = str(curid).strip(), (str(label).strip() if label is not None else "")
        if not label:
            continue
        if labels.get(curid, label) != label:
            raise UserError(
                f"{path}: line {n}: curid {curid} labelled both {labels[curid]!r} and {label!r}"
            )
        labels[curid] = label
    return labels


def read_ner_json(path: str) -> list:
    try:
        data = json.loads(io.read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{path}: expected a JSON array of {{curid, text, entities}} records "
            f"(Stockmark ner.json), found a {type(data).__name__}"
        )
    return data


def build_row(
    rec: object, labels: dict[str, str], registry: TaskRegistry = DEFAULT_REGISTRY, repeat: int = 0
) -> dict:
    """One SCNM dataset row for one Stockmark record; problems go to ``error``.

    ``repeat`` is how many earlier records had the same curid (one Wikipedia article gives
    several sentences): the id gets ``-N`` so ids stay unique; all share the article's label.
    """
    task = registry["SCNM"]
    if not isinstance(rec, dict):
        return {"dataset": "SCNM", "items": [], "error": f"record is not an object: {rec!r:.60}"}
    curid = str(rec.get("curid", "")).strip()
    text = rec.get("text")
    row = {
        "id": f"scnm-{curid}" + (f"-{repeat}" if repeat else ""),
        "dataset": "SCNM",
        "text": text,
        "items": [],
        "error": None,
    }
    if not isinstance(text, str) or not text.strip():
        row["error"] = "text is empty or missing"
        return row
    row["prompt"] = build_prompt(text, task)
    try:
        row["items"] = [make_item(e["type"], e["name"]) for e in rec.get("entities") or []]
    except (KeyError, TypeError):
        row["error"] = "entities must be a list of {name, span, type} objects"
        return row
    unknown = [it["label"] for it in row["items"] if it["label"] not in task.wl_labels]
    if unknown:
        row["error"] = f"unknown entity type(s) {unknown}; known: {list(task.wl_labels)}"
        return row
    row["tl_label"] = labels.get(curid)
    if row["tl_label"] is None:
        row["error"] = f"{NO_LABEL} {curid}"
        return row
    try:
        row["prompt"], row["target"] = render(row, registry)
    except ValueError as exc:
        row["error"] = str(exc)
        row["tl_label"] = row["tl_label"] if row["tl_label"] in task.tl_labels else None
    return row


def build_scnm(
    ner_json: str,
    output: str,
    tl_labels: str | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
) -> dict:
    """Write SCNM Parquet to ``output``; return a summary (rows, labelled, missing labels, ...)."""
    records = read_ner_json(ner_json)
    labels = read_tl_labels(tl_labels) if tl_labels else {}
    progress = Progress("giellm data scnm")
    seen_ids: Counter[str] = Counter()
    rows = []
    for rec in records:
        curid = str(rec.get("curid", "")).strip() if isinstance(rec, dict) else ""
        rows.append(build_row(rec, labels, registry, seen_ids[curid]))
        seen_ids[curid] += 1
    progress.add(len(rows))
    io.write_parquet(dataset_table(rows), output)
    progress.done()
    errors = Counter(
        r["error"].split(" for curid")[0].split(";")[0][:60] for r in rows if r["error"]
    )
    return {
        "rows": len(rows),
        "labelled": sum(r["error"] is None for r in rows),
        "missing_tl_label": sum(1 for r in rows if (r["error"] or "").startswith(NO_LABEL)),
        "labels_for_unknown_curids": len(set(labels) - set(seen_ids)),
        "errors": dict(errors),
        "output": output,
    }
