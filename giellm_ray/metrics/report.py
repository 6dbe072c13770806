"""Turn summed counts into the report a person reads: JSON, a Markdown table, a PNG chart.

``write_report(counts, out_dir)`` writes ``metrics.json`` (an object keyed by dataset name; each
value has ``n``, ``tl_accuracy``, ``wl_accuracy``, ``all_accuracy``, ``parse_failure_rate``, item
P/R/F1 and the raw counts), ``metrics.md`` (our numbers as percentages beside the paper's GIELLM
rows) and ``metrics.png`` (grouped bars: ours vs GIELLM-13B-JP). Works for local and ``s3://``
directories. No torch, no ray.
"""

from __future__ import annotations

import io as _io
import json
from collections.abc import Mapping

from giellm_ray import io
from giellm_ray.metrics.counts import ratios
from giellm_ray.metrics.paper import PAPER, paper_cell

PAPER_COLUMNS = ("GIELLM-7B", "GIELLM-13B", "GIELLM-13B-JP")
DATASET_ORDER = ("SCNM", "SCPOS:RW", "SCPOS:N&Adj", "SCPOS:N", "SCPOS:Adj", "TCREE")


def _ordered(names) -> list[str]:
    known = [d for d in DATASET_ORDER if d in names]
    return known + sorted(n for n in names if n not in DATASET_ORDER)


def build_metrics(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict]:
    """The ``metrics.json`` object: ratios plus raw counts, per dataset."""
    return {ds: {**ratios(c), "counts": dict(c)} for ds, c in
            ((d, counts[d]) for d in _ordered(counts))}


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def markdown_table(metrics: Mapping[str, Mapping], title: str = "GIELLM evaluation") -> str:
    """Our accuracy (%) beside the paper's, one row per dataset, with a legend."""
    lines = [
        f"## {title}",
        "",
        "| dataset | n | TL | WL (exact set) | ALL | item P | item R | item F1 | parse fail | "
        + " | ".join(f"paper {m} TL/WL/ALL" for m in PAPER_COLUMNS) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---|" * len(PAPER_COLUMNS),
    ]
    for ds, m in metrics.items():
        paper = " | ".join(paper_cell(ds, model) for model in PAPER_COLUMNS)
        lines.append(
            f"| {ds} | {m['n']} | {_pct(m['tl_accuracy'])} | {_pct(m['wl_accuracy'])} | "
            f"{_pct(m['all_accuracy'])} | {_pct(m['item_precision'])} | {_pct(m['item_recall'])} "
            f"| {_pct(m['item_f1'])} | {_pct(m['parse_failure_rate'])} | {paper} |"
        )
    lines += [
        "",
        "Accuracy in %. WL (exact set): predicted items equal the gold items as a multiset; item "
        "P/R/F1: micro scores over items. ALL: TL and WL both right. An output that does not parse "
        "is wrong at every level. Paper cells marked (?) are the two surviving numbers of a "
        "column pair whose headings are garbled in the paper (spec §3); the paper's RW WL is "
        "likely item-level, not exact-set.",
    ]
    bad = {ds: m["invalid_targets"] for ds, m in metrics.items() if m.get("invalid_targets")}
    if bad:
        lines.append(f"\nRows left out because their gold target is missing or does not parse: {bad}")
    return "\n".join(lines) + "\n"


def render_chart(metrics: Mapping[str, Mapping], title: str = "GIELLM evaluation") -> bytes:
    """PNG bytes: per dataset, our TL/WL/ALL bars beside GIELLM-13B-JP's (where known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(metrics)
    levels = (("TL", "tl_accuracy"), ("WL", "wl_accuracy"), ("ALL", "all_accuracy"))
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * len(names) + 2), 4.2), dpi=110)
    width = 0.13
    colors = ("#1f77b4", "#2ca02c", "#d62728")
    for i, (level, key) in enumerate(levels):
        ours = [100 * (metrics[d][key] or 0) for d in names]
        paper = [PAPER.get(d, {}).get("GIELLM-13B-JP", {}).get(level) for d in names]
        xs = [j + (i - 1) * 2 * width for j in range(len(names))]
        ax.bar([x - width / 2 for x in xs], ours, width, color=colors[i], label=f"ours {level}")
        ax.bar([x + width / 2 for x in xs], [p or 0 for p in paper], width, color=colors[i],
               alpha=0.35, hatch="//", label=f"paper 13B-JP {level}")
    ax.set_xticks(range(len(names)), [f"{d}\n(n={metrics[d]['n']})" for d in names])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(ncol=3, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(counts: Mapping[str, Mapping[str, int]], out_dir: str,
                 title: str = "GIELLM evaluation") -> dict[str, dict]:
    """Write metrics.json, metrics.md and metrics.png into ``out_dir``; return the metrics."""
    metrics = build_metrics(counts)
    io.write_text(io.join(out_dir, "metrics.json"),
                  json.dumps(metrics, ensure_ascii=False, indent=2) + "\n")
    io.write_text(io.join(out_dir, "metrics.md"), markdown_table(metrics, title))
    if metrics:
        io.write_bytes(io.join(out_dir, "metrics.png"), render_chart(metrics, title))
    return metrics
