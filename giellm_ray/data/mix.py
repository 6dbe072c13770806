"""The paper's training mix, train/test splits and single-task corpora, seeded and streamed.

``build_mix(inputs, out_dir)`` reads dataset Parquet (files or directories, several datasets per
file is fine), keeps rows that are usable (``error`` null and ``target`` set) and, per dataset,
draws ``sizes[name]`` training rows with ``random.Random(f"{seed}:{name}")`` (so one dataset's
draw does not depend on which others are present); every other usable row is test data, or a
seeded sample of ``test_sizes[name]`` rows when given. Defaults are the paper's mix (SCNM 1000,
SCPOS:RW 1000, N 500, Adj 500, N&Adj 500, TCREE 1000 = 4,500). A dataset with fewer rows than
asked gives what it has, and the shortfall is reported on stderr and in the manifest. A dataset
in the data but absent from ``sizes`` goes wholly to test. Output::

    DIR/train.parquet                  the mixed training corpus, shuffled (split = "train")
    DIR/test.parquet                   every dataset's test rows, input order (split = "test")
    DIR/single/<name>/train.parquet    one dataset alone, for the MRE (mixed vs single) runs
    DIR/single/<name>/test.parquet
    DIR/tasks.json                     task registry: defaults + any tasks.json beside an input
    DIR/manifest.json                  seed, sizes asked, per-dataset counts and shortfalls

``<name>`` is :func:`giellm_ray.data.sink.safe_name` of the dataset (``SCPOS:N&Adj`` →
``SCPOS_NAdj``). Test rows stream through in batches, so 187k-row test sets need flat memory;
only the (small) training rows are held.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from giellm_ray import io
from giellm_ray.data.progress import Progress
from giellm_ray.data.sink import ParquetSink, safe_name
from giellm_ray.errors import UserError
from giellm_ray.formats import DEFAULT_REGISTRY, TaskRegistry
from giellm_ray.schema import DATASET, DATASET_SCHEMA, ERROR, SPLIT, TARGET

log = logging.getLogger(__name__)

PAPER_SIZES = {
    "SCNM": 1000,
    "SCPOS:RW": 1000,
    "SCPOS:N": 500,
    "SCPOS:Adj": 500,
    "SCPOS:N&Adj": 500,
    "TCREE": 1000,
}
REQUIRED = ("id", DATASET, "text", "prompt", TARGET)


def parse_sizes(specs: list[str] | None) -> dict[str, int]:
    """``["SCNM=1000", "SCPOS:RW=500"]`` (or one comma-separated string) → ``{name: n}``."""
    out: dict[str, int] = {}
    for spec in specs or []:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.rpartition("=")
            if not sep or not name or not value.isdigit():
                raise UserError(f"size {part!r} is not NAME=COUNT (e.g. SCNM=1000)")
            out[name] = int(value)
    return out


def _files(inputs: list[str]) -> list[str]:
    files: list[str] = []
    for path in inputs:
        files += [f for f in io.parquet_files(path) if f not in files]
    return files


def _batches(files: list[str], columns: list[str] | None = None):
    for f in files:
        yield from io.iter_parquet_batches(f, columns=columns, batch_size=8192)


def _usable(batch: pa.RecordBatch) -> list[str | None]:
    """The dataset name of each usable row, ``None`` for rows excluded from mixes."""
    names = batch.column(DATASET).to_pylist()
    errors = batch.column(ERROR).to_pylist() if ERROR in batch.schema.names else [None] * len(names)
    targets = batch.column(TARGET).to_pylist()
    return [
        n if e is None and t is not None else None
        for n, e, t in zip(names, errors, targets, strict=True)
    ]


def _conform(batch: pa.RecordBatch) -> pa.Table:
    table = pa.Table.from_batches([batch])
    for field in DATASET_SCHEMA:
        if field.name not in table.schema.names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(DATASET_SCHEMA.names).cast(DATASET_SCHEMA)


def _with_split(table: pa.Table, split: str) -> pa.Table:
    i = table.schema.get_field_index(SPLIT)
    return table.set_column(i, SPLIT, pa.array([split] * table.num_rows, pa.string()))


def merged_registry(inputs: list[str]) -> TaskRegistry:
    """Defaults plus every ``tasks.json`` found beside (or inside) an input."""
    registry = DEFAULT_REGISTRY
    for path in inputs:
        path = str(path).rstrip("/")
        folder = (
            (path.rsplit("/", 1)[0] if "/" in path else ".") if path.endswith(".parquet") else path
        )
        beside = io.join(folder, "tasks.json")
        if io.exists(beside):
            for task in TaskRegistry.from_dict(json.loads(io.read_text(beside))).values():
                registry = registry.with_task(task)
    return registry


def _count(files: list[str], sizes: dict[str, int], test_sizes: dict[str, int]):
    """Check every file's columns; count usable and excluded rows per dataset."""
    available: Counter[str] = Counter()
    excluded: Counter[str] = Counter()
    for f in files:
        fs, p = io.resolve(f)
        found = pq.read_schema(fs.open_input_file(p)).names
        missing = [c for c in REQUIRED if c not in found]
        if missing:
            raise UserError(
                f"{f}: missing column(s) {missing}; expected dataset Parquet "
                f"written by `giellm data ...`, found columns {found}"
            )
    for batch in _batches(files, None):
        names = batch.column(DATASET).to_pylist()
        usable = _usable(batch)
        available.update(n for n in usable if n is not None)
        excluded.update(n for n, u in zip(names, usable, strict=True) if u is None)
    known = set(DEFAULT_REGISTRY) | set(available) | set(excluded)
    for name in [*sizes, *test_sizes]:
        if name not in known:
            raise UserError(f"unknown dataset {name!r}; known: {sorted(known)}")
    return available, excluded


def _draw(available: Counter, seed: int, sizes: dict[str, int], test_sizes: dict[str, int]):
    """Per dataset, the row positions (among its usable rows) for train and for test; seeded."""
    train_idx, test_idx = {}, {}
    for name, n in available.items():
        rng = random.Random(f"{seed}:{name}")
        train_idx[name] = set(rng.sample(range(n), min(sizes.get(name, 0), n)))
        rest = [i for i in range(n) if i not in train_idx[name]]
        if name in test_sizes:
            rest = rng.sample(rest, min(test_sizes[name], len(rest)))
        test_idx[name] = set(rest)
    return train_idx, test_idx


def _route(files, output: str, single: dict[str, str], train_idx, test_idx, progress):
    """Stream the inputs once: test rows to their sinks, train rows kept per dataset."""
    test_sink = ParquetSink(io.join(output, "test.parquet"))
    single_test = {name: ParquetSink(io.join(d, "test.parquet")) for name, d in single.items()}
    train_parts: dict[str, list[pa.Table]] = defaultdict(list)
    seen: Counter[str] = Counter()
    for batch in _batches(files):
        table = _conform(batch)
        routes: dict[tuple[str, str], list[int]] = defaultdict(list)
        for row, name in enumerate(_usable(batch)):
            if name is None:
                continue
            pos = seen[name]
            seen[name] += 1
            if pos in train_idx[name]:
                routes[(name, "train")].append(row)
            elif pos in test_idx[name]:
                routes[(name, "test")].append(row)
        for (name, split), rows in routes.items():
            part = _with_split(table.take(rows), split)
            if split == "train":
                train_parts[name].append(part)
            else:
                test_sink.write_table(part)
                single_test[name].write_table(part)
        progress.add(batch.num_rows)
    test_sink.close()
    for sink in single_test.values():
        sink.close()
    return train_parts, test_sink.rows


def _write_train(output: str, single: dict[str, str], train_parts, seed: int) -> int:
    """Each dataset's train rows to ``single/<name>/``, all of them shuffled to the mix."""
    mixed = []
    for name in sorted(single):
        table = (
            pa.concat_tables(train_parts[name])
            if train_parts[name]
            else DATASET_SCHEMA.empty_table()
        )
        io.write_parquet(table, io.join(single[name], "train.parquet"))
        mixed.append(table)
    train = pa.concat_tables(mixed) if mixed else DATASET_SCHEMA.empty_table()
    order = list(range(train.num_rows))
    random.Random(seed).shuffle(order)
    io.write_parquet(train.take(pa.array(order, pa.int64())), io.join(output, "train.parquet"))
    return train.num_rows


def build_mix(
    inputs: list[str],
    output: str,
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    test_sizes: dict[str, int] | None = None,
) -> dict:
    """Write the mix, splits and single-task corpora under ``output``; return the manifest."""
    sizes = dict(PAPER_SIZES if sizes is None else sizes)
    test_sizes = dict(test_sizes or {})
    files = _files(inputs)
    available, excluded = _count(files, sizes, test_sizes)
    train_idx, test_idx = _draw(available, seed, sizes, test_sizes)
    single = {name: io.join(output, "single", safe_name(name)) for name in available}
    progress = Progress("giellm data mix")
    train_parts, test_rows = _route(files, output, single, train_idx, test_idx, progress)
    train_rows = _write_train(output, single, train_parts, seed)
    progress.done()

    per_dataset = {}
    for name in sorted(set(sizes) | set(available)):
        asked, got = sizes.get(name), len(train_idx.get(name, ()))
        per_dataset[name] = {
            "available": available[name],
            "excluded_rows": excluded[name],
            "train_asked": asked,
            "train": got,
            "test": len(test_idx.get(name, ())),
            "path": f"single/{safe_name(name)}" if name in available else None,
        }
        if asked and got < asked:
            per_dataset[name]["short_by"] = asked - got
            log.warning(
                "giellm data mix: %s: asked for %d training rows, only %d usable rows "
                "available (%d excluded for errors/no target)",
                name,
                asked,
                got,
                excluded[name],
            )
    manifest = {
        "seed": seed,
        "inputs": list(inputs),
        "files": files,
        "sizes": sizes,
        "test_sizes": test_sizes,
        "train_rows": train_rows,
        "test_rows": test_rows,
        "datasets": per_dataset,
    }
    io.write_text(
        io.join(output, "tasks.json"),
        json.dumps(merged_registry(inputs).to_dict(), ensure_ascii=False, indent=2),
    )
    io.write_text(
        io.join(output, "manifest.json"), json.dumps(manifest, ensure_ascii=False, indent=2)
    )
    return manifest
