"""SCPOS:RW / N / Adj / N&Adj from any table of (text, sentiment label), streamed in chunks.

One pass tags each text once with fugashi + unidic-lite (:mod:`giellm_ray.data.pos`) and writes a
row per requested task::

    SCPOS:N      every noun,                 labelled by lexicon polarity, else 中立
    SCPOS:Adj    every adjective,            labelled by lexicon polarity, else 中立
    SCPOS:N&Adj  nouns and adjectives,       labelled as above
    SCPOS:RW     "relation words": every content word (PosConfig.rw_pos) whose dictionary form
                 is in the polarity lexicon, with the lexicon's polarity; words the lexicon does
                 not know are left out (that is what makes them sentiment *relation* words)

Spans are surface forms as written in the text (so they can be grounded); item lists are
de-duplicated and cp932-sorted by :func:`giellm_ray.formats.render`. The polarity lexicon is the
Tohoku dictionary (:mod:`giellm_ray.data.lexicon`, which says why). TL labels: the sentiment
label is mapped through :attr:`ScposConfig.label_map` (case-insensitive) to 積極/消極; an
unmapped value, an empty text or a bad JSON line becomes that row's ``error`` and the job goes on.

Output: a path ending in ``.parquet`` gets one file holding every task's rows; any other path is
a directory with one file per task (``DIR/SCPOS_RW.parquet``, ``DIR/SCPOS_N.parquet``, ...).
Either way rows are written in row groups as chunks finish, so memory stays flat on 187k rows.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

from pydantic import Field

from giellm_ray import io
from giellm_ray.config import StrictModel
from giellm_ray.data.lexicon import NEUTRAL, PolarityLexicon, load_lexicon
from giellm_ray.data.pos import PosConfig, PosTagger, Token
from giellm_ray.data.progress import Progress
from giellm_ray.data.sink import ParquetSink, safe_name
from giellm_ray.data.tables import ROW, ROW_ERROR, iter_chunks
from giellm_ray.errors import UserError
from giellm_ray.formats import (
    DEFAULT_REGISTRY,
    TaskRegistry,
    TaskSpec,
    make_item,
    normalize_items,
    render,
)

SCPOS_TASKS = ("SCPOS:RW", "SCPOS:N", "SCPOS:Adj", "SCPOS:N&Adj")

DEFAULT_LABEL_MAP = {
    **dict.fromkeys(
        ("positive", "pos", "p", "1", "+1", "true", "ポジティブ", "積極", "肯定"), "積極"
    ),
    **dict.fromkeys(
        ("negative", "neg", "n", "0", "-1", "false", "ネガティブ", "消極", "否定"), "消極"
    ),
}


class ScposConfig(StrictModel):
    """How ``giellm data scpos`` builds rows."""

    tasks: tuple[str, ...] = SCPOS_TASKS
    """Which SCPOS datasets to write (default all four)."""
    label_map: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    """Sentiment label value (lower-cased, stripped) → TL label (積極/消極)."""
    pos: PosConfig = Field(default_factory=PosConfig)
    """Which UniDic POS tags count as nouns, adjectives, relation-word candidates."""
    chunk_size: int = 2048
    """Rows read, tagged and written per chunk (one Parquet row group per chunk and task)."""


def task_pos(task: TaskSpec, cfg: PosConfig) -> tuple[str, ...] | None:
    """The UniDic pos1 tags a POS task selects (``None`` for RW: lexicon-driven)."""
    if not task.pos:
        return None
    expand = {"名詞": cfg.noun_pos, "形容詞": cfg.adj_pos}
    return tuple(tag for p in task.pos for tag in expand.get(p, (p,)))


def extract_items(
    tokens: Iterable[Token],
    pos_tags: tuple[str, ...] | None,
    lexicon: PolarityLexicon,
    cfg: PosConfig,
) -> list[dict]:
    """The task's items for one tagged text (order and duplicates are fixed by render)."""
    items = []
    for tok in tokens:
        if pos_tags is None:
            if tok.pos in cfg.rw_pos:
                polarity = lexicon.lookup(*tok.base)
                if polarity is not None:
                    items.append(make_item(polarity, tok.surface))
        elif tok.pos in pos_tags:
            items.append(make_item(lexicon.lookup(*tok.base) or NEUTRAL, tok.surface))
    return items


def map_label(value: str | None, label_map: dict[str, str]) -> str | None:
    return None if value is None else label_map.get(value.strip().lower())


def build_rows(
    chunk: list[dict],
    text_col: str,
    label_col: str,
    tasks: list[TaskSpec],
    tagger: PosTagger,
    lexicon: PolarityLexicon,
    cfg: ScposConfig,
    registry: TaskRegistry = DEFAULT_REGISTRY,
) -> dict[str, list[dict]]:
    """Dataset rows per task name for one chunk of input rows. Never raises for a bad row."""
    out: dict[str, list[dict]] = {t.name: [] for t in tasks}
    label_map = {k.strip().lower(): v for k, v in cfg.label_map.items()}
    prefixes = {t.name: safe_name(t.name).lower() for t in tasks}
    for rec in chunk:
        text, raw_label = rec.get(text_col), rec.get(label_col)
        error = rec.get(ROW_ERROR)
        tl = map_label(raw_label, label_map)
        tokens: list[Token] = []
        if error is None and (text is None or not text.strip()):
            error = "text is empty or missing"
        if error is None and tl is None:
            error = (
                f"unknown sentiment label {raw_label!r}; known values: "
                f"{sorted(label_map)} (set label_map to add one)"
            )
        if error is None:
            try:
                tokens = tagger.tokens(text)
            except Exception as exc:  # one odd text must not stop a 187k-row build
                error = f"POS tagging failed: {type(exc).__name__}: {exc}"
        for task in tasks:
            row = {
                "id": f"{prefixes[task.name]}-{rec[ROW]}",
                "dataset": task.name,
                "text": text,
                "tl_label": tl,
                "items": [],
                "error": error,
            }
            if error is None:
                # stored as the target writes them: de-duplicated, cp932-sorted
                row["items"] = normalize_items(
                    extract_items(tokens, task_pos(task, cfg.pos), lexicon, cfg.pos), task
                )
                try:
                    row["prompt"], row["target"] = render(row, registry)
                except ValueError as exc:
                    row["error"] = str(exc)
            out[task.name].append(row)
    return out


def resolve_tasks(
    names: Iterable[str], registry: TaskRegistry = DEFAULT_REGISTRY
) -> list[TaskSpec]:
    tasks = []
    for name in names:
        if name not in SCPOS_TASKS:
            raise UserError(f"unknown SCPOS dataset {name!r}; choose from {list(SCPOS_TASKS)}")
        tasks.append(registry[name])
    if not tasks:
        raise UserError("no SCPOS dataset asked for (--datasets)")
    return tasks


def build_scpos(
    input_path: str,
    text_col: str,
    label_col: str,
    output: str,
    cfg: ScposConfig | None = None,
    limit: int | None = None,
    registry: TaskRegistry = DEFAULT_REGISTRY,
    lexicon: PolarityLexicon | None = None,
) -> dict:
    """Stream ``input_path`` into SCPOS Parquet at ``output``; return a summary dict."""
    cfg = cfg or ScposConfig()
    tasks = resolve_tasks(cfg.tasks, registry)
    lexicon = lexicon or load_lexicon()
    tagger = PosTagger()
    chunks = iter_chunks(input_path, [text_col, label_col], cfg.chunk_size)
    first = next(chunks, None)  # fail fast (missing columns, not UTF-8) before creating output
    single = output.rstrip("/").endswith(".parquet")
    sinks = (
        {"*": ParquetSink(output)}
        if single
        else {t.name: ParquetSink(io.join(output, f"{safe_name(t.name)}.parquet")) for t in tasks}
    )
    progress = Progress("giellm data scpos")
    errors: Counter[str] = Counter()
    rows_in = 0
    try:
        for chunk in itertools.chain([first] if first else [], chunks):
            if limit is not None:
                chunk = chunk[: max(limit - rows_in, 0)]
            if not chunk:
                break
            rows_in += len(chunk)
            built = build_rows(chunk, text_col, label_col, tasks, tagger, lexicon, cfg, registry)
            for name, rows in built.items():
                sinks["*" if single else name].write_rows(rows)
            # count input rows, not output rows: the same error repeats once per task
            errors.update(r["error"].split(";")[0][:60] for r in built[tasks[0].name] if r["error"])
            progress.add(len(chunk))
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    for sink in sinks.values():
        sink.close()
    rate = progress.done()
    return {
        "input_rows": rows_in,
        "tasks": [t.name for t in tasks],
        "outputs": [s.path for s in sinks.values()],
        "rows_per_s": round(rate, 1),
        "error_input_rows": sum(errors.values()),
        "errors": dict(errors.most_common(10)),
    }
