"""``report.html``: the rows a run got wrong, gold beside predicted, readable at 187k rows.

:func:`write_html_report` writes, into the report directory (local or ``s3://``):

- ``report.html``: per dataset the row count, how many rows are wrong and how many of them are
  shown, links to the pages, the TL-label confusion, the WL-label confusion (with ``∅`` rows and
  columns for missing and extra items) and the confidence summary (``reliability.png``);
- ``report-<dataset>-<k>.html`` beside it (flat, so a scored output's ``_metrics/`` has no
  subdirectory to clean up): ``page_size`` sampled wrong rows a page; per row the text twice,
  gold spans highlighted on the left and predicted spans on the right in their label's colour,
  each item marked *ok*, *missing*, *extra* or *mislabelled*, each predicted item with its score.

Only a bounded sample of wrong rows is written (see :class:`~giellm_ray.metrics.analysis.Analysis`,
``sample_size`` rows per dataset), so the files stay a few hundred kB whatever the input size;
the counts above every sample say how many rows it stands for. Self-contained HTML: inline CSS,
no script, no external asset. Pure Python: no torch, no ray.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

from giellm_ray import io
from giellm_ray.formats import TaskRegistry
from giellm_ray.metrics.analysis import NONE_LABEL, Analysis

PAGE_SIZE = 50
PALETTE = (
    "#8dd3c7",
    "#ffffb3",
    "#bebada",
    "#fb8072",
    "#80b1d3",
    "#fdb462",
    "#b3de69",
    "#fccde5",
    "#d9d9d9",
    "#bc80bd",
    "#ccebc5",
    "#ffed6f",
)

CSS = """
body{font-family:system-ui,'Noto Sans CJK JP','Hiragino Sans',sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;
font-size:13px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
td.diag{background:#e6f4ea}td.off{background:#fde8e8}.caveat{background:#fff4ce;border:1px solid
#e0c060;padding:.5em 1em}.row{border-top:2px solid #ddd;padding:.6em 0}.side{display:flex;gap:1em}
.side>div{flex:1;min-width:0}.text{font-size:16px;line-height:2;white-space:pre-wrap}
mark{padding:1px 0;border-radius:3px}mark.missing{outline:2px dashed #c00}
mark.extra{outline:2px solid #c00}mark.mislabelled{outline:2px dotted #e67e00}
.items span.it{display:inline-block;margin:2px 4px 2px 0;padding:0 4px;border-radius:3px;
font-size:13px}.it.missing,.it.extra{text-decoration:line-through #c00}
.it.mislabelled{text-decoration:underline wavy #e67e00}.meta{color:#666;font-size:12px}
code{background:#f6f6f6;padding:1px 3px;font-size:12px;word-break:break-all}
"""


def label_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per label, in inventory order (the page at ``/`` uses the same palette)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _colours(registry: TaskRegistry, dataset: str, rows: Sequence[Mapping]) -> dict[str, str]:
    names: list[str] = []
    if dataset in registry:
        names += list(registry[dataset].wl_labels) + list(registry[dataset].relation_labels)
    for r in rows:
        for it in r["gold_items"] + r["pred_items"]:
            if it["label"] not in names:
                names.append(it["label"])
    return label_colours(names)


def segments(text: str, spans: Sequence[tuple[int, int, int]]) -> list[tuple[str, list[int]]]:
    """``text`` cut at every span edge: (piece, indices of the spans covering it). Overlapping
    spans share the pieces they overlap on, so every span stays visible."""
    cuts = {0, len(text)}
    for s, e, _ in spans:
        cuts.update((s, e))
    edges = sorted(c for c in cuts if 0 <= c <= len(text))
    out = []
    for a, b in zip(edges, edges[1:], strict=False):
        if a < b:
            out.append((text[a:b], [i for s, e, i in spans if s <= a and b <= e]))
    return out


def _fmt_score(score: float | None) -> str:
    return "–" if score is None else f"{score:.2f}"


def _item_text(it: Mapping) -> str:
    if it.get("tail") is not None:
        return f"{it['span']} →{it['label']}→ {it['tail']}"
    return f"{it['label']}: {it['span']}"


def highlighted(text: str | None, items: Sequence[Mapping], colours: Mapping[str, str]) -> str:
    """The text as HTML with each grounded item (and a relation's tail) in a ``<mark>``."""
    if not text:
        return '<span class="meta">(no text in the input)</span>'
    spans = []
    for i, it in enumerate(items):
        if it.get("start") is not None:
            spans.append((it["start"], it["end"], i))
        if it.get("tail_start") is not None:
            spans.append((it["tail_start"], it["tail_end"], i))
    parts, at = [], 0
    for piece, covering in segments(text, spans):
        start, at = at, at + len(piece)
        if not covering:
            parts.append(html.escape(piece))
            continue
        first = items[covering[0]]
        title = "; ".join(
            f"{items[i]['label']} ({items[i].get('mark')}, score "
            f"{_fmt_score(items[i].get('score'))})"
            for i in covering
        )
        parts.append(
            f'<mark class="{first.get("mark", "")}" style="background:'
            f'{colours.get(first["label"], "#ddd")}" data-items="'
            f'{",".join(map(str, covering))}" data-start="{start}" data-end="{at}" '
            f'title="{html.escape(title)}">'
            f"{html.escape(piece)}</mark>"
        )
    return "".join(parts)


def _item_list(items: Sequence[Mapping], colours: Mapping[str, str], scored: bool) -> str:
    if not items:
        return '<span class="meta">(no items)</span>'
    out = []
    for it in items:
        where = "" if it.get("start") is not None else " (not in text)"
        score = f" · {_fmt_score(it.get('score'))}" if scored else ""
        out.append(
            f'<span class="it {it["mark"]}" style="background:'
            f'{colours.get(it["label"], "#ddd")}" title="{it["mark"]}">'
            f"{html.escape(_item_text(it))}{where} <b>{it['mark']}</b>{score}</span>"
        )
    return "".join(out)


def _row_html(r: Mapping, colours: Mapping[str, str]) -> str:
    tl = "ok" if r["tl_match"] else "wrong"
    err = (
        f'<div class="meta">prediction error: {html.escape(r["prediction_error"])}</div>'
        if r["prediction_error"]
        else ""
    )
    return (
        f'<div class="row" id="{html.escape(str(r["id"]))}"><div class="meta">id '
        f"<b>{html.escape(str(r['id']))}</b> · TL gold <b>{html.escape(str(r['gold_tl']))}</b>"
        f" · predicted <b>{html.escape(str(r['pred_tl']))}</b> (score "
        f'{_fmt_score(r["tl_score"])}, {tl})</div>{err}<div class="side">'
        f'<div><h4>gold</h4><div class="text gold">{highlighted(r["text"], r["gold_items"], colours)}'
        f'</div><div class="items">{_item_list(r["gold_items"], colours, False)}</div></div>'
        f'<div><h4>predicted</h4><div class="text pred">'
        f'{highlighted(r["text"], r["pred_items"], colours)}</div><div class="items">'
        f"{_item_list(r['pred_items'], colours, True)}</div></div></div>"
        f'<div class="meta">raw output: <code>{html.escape(str(r["prediction"]))}</code></div>'
        "</div>"
    )


def _confusion_html(table: Mapping[str, Mapping[str, int]], title: str) -> str:
    if not table:
        return ""
    golds = sorted(table, key=lambda g: (g == NONE_LABEL, g))
    preds = sorted({p for row in table.values() for p in row}, key=lambda p: (p == NONE_LABEL, p))
    head = "".join(f"<th>{html.escape(p)}</th>" for p in preds)
    body = []
    for g in golds:
        cells = []
        for p in preds:
            n = table[g].get(p, 0)
            cls = "diag" if g == p else ("off" if n else "")
            cells.append(f'<td class="{cls}">{n or ""}</td>')
        body.append(f'<tr><th class="l">{html.escape(g)}</th>{"".join(cells)}</tr>')
    return (
        f"<h4>{title} (rows: gold, columns: predicted)</h4><table><tr><th class=l>gold \\ "
        f"pred</th>{head}</tr>{''.join(body)}</table>"
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "dataset"


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="ja"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>\n"
    )


def _confidence_html(conf: Mapping | None) -> str:
    if not conf:
        return '<p class="meta">no confidence scores in this output</p>'
    rows = []
    for kind in ("item", "tl"):
        c = conf[kind]
        pa = {e["threshold"]: e for e in c["precision_at"]}
        cells = "".join(
            f"<td>{_pct(pa[t]['precision'])} ({pa[t]['kept']})</td>" for t in (0.0, 0.5, 0.7, 0.9)
        )
        rows.append(
            f'<tr><th class="l">{kind}</th><td>{c["scored"]}</td><td>'
            f"{_fmt_score(c['ece'])}</td>{cells}</tr>"
        )
    return (
        "<table><tr><th class=l>kind</th><th>scored</th><th>ECE</th><th>P (kept) all</th>"
        "<th>P@0.5</th><th>P@0.7</th><th>P@0.9</th></tr>" + "".join(rows) + "</table>"
    )


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def write_html_report(
    analysis: Analysis,
    out_dir: str,
    registry: TaskRegistry,
    confidence: Mapping[str, Mapping] | None = None,
    caveat: str | None = None,
    page_size: int = PAGE_SIZE,
) -> list[str]:
    """Write ``report.html`` and ``report-*.html`` into ``out_dir``; return the names written."""
    written = []
    sections = []
    for ds in analysis.counts:
        sample = analysis.sample(ds)
        colours = _colours(registry, ds, sample)
        pages = [sample[i : i + page_size] for i in range(0, len(sample), page_size)]
        links = []
        for k, rows in enumerate(pages, 1):
            name = f"report-{_slug(ds)}-{k}.html"
            nav = " ".join(
                f'<a href="report-{_slug(ds)}-{j}.html">{j}</a>' if j != k else f"<b>{j}</b>"
                for j in range(1, len(pages) + 1)
            )
            body = (
                f'<p><a href="report.html">← report</a> · {html.escape(ds)} · page {k} of '
                f"{len(pages)}: {nav}</p><h2>{html.escape(ds)}: wrong rows "
                f"{(k - 1) * page_size + 1}–{(k - 1) * page_size + len(rows)} of "
                f"{len(sample)} shown ({analysis.wrong[ds]} wrong in all)</h2>"
                + "".join(_row_html(r, colours) for r in rows)
            )
            io.write_text(io.join(out_dir, name), _page(f"{ds} errors {k}", body))
            written.append(name)
            links.append(f'<a href="{name}">{k}</a>')
        c = analysis.counts[ds]
        sections.append(
            f'<h2 id="{_slug(ds)}">{html.escape(ds)}</h2><p>{c["n"]} rows, '
            f"{analysis.wrong[ds]} wrong (TL, WL or both), {len(sample)} of them shown "
            f"(a fixed sample by row id){': pages ' + ' '.join(links) if links else ''}</p>"
            + _confidence_html((confidence or {}).get(ds))
            + _confusion_html(analysis.tl_confusion.get(ds, {}), "TL labels")
            + _confusion_html(
                analysis.wl_confusion.get(ds, {}), f"WL labels, {NONE_LABEL}: missing / extra item"
            )
        )
    legend = (
        '<p class="meta">Marks: <mark class="missing" style="background:#eee">missing'
        '</mark> gold item not predicted · <mark class="extra" style="background:#eee">'
        'extra</mark> predicted item not in gold · <mark class="mislabelled" '
        'style="background:#eee">mislabelled</mark> same span, other label · unmarked: '
        "right. Scores: the model's confidence in [0, 1] (– where the output has none)."
        "</p>"
    )
    warn = f'<p class="caveat">{html.escape(caveat)}</p>' if caveat else ""
    reliability = (
        '<p><img src="reliability.png" alt="reliability plot" style="max-width:100%"></p>'
        if confidence
        else ""
    )
    io.write_text(
        io.join(out_dir, "report.html"),
        _page(
            "GIELLM error report",
            "<h1>GIELLM error report</h1>" + warn + legend + reliability + "".join(sections),
        ),
    )
    return ["report.html", *written]
