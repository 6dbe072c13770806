"""Turn summed counts into the report a person reads: JSON, a Markdown table, a PNG chart.

``write_report(counts, out_dir)`` writes ``metrics.json`` (an object keyed by dataset name; each
value has ``n``, ``tl_accuracy``, ``wl_accuracy``, ``all_accuracy``, ``parse_failure_rate``, item
P/R/F1 and the raw counts), ``metrics.md`` (our numbers as percentages beside the paper's GIELLM
rows) and ``metrics.png`` (grouped bars: ours vs GIELLM-13B-JP). Works for local and ``s3://``
directories. No torch, no ray.

With confidence scores (``confidence``, see :mod:`~giellm_ray.metrics.confidence`) each dataset
also gets a ``confidence`` object in ``metrics.json``, ``metrics.md`` a precision-at-threshold and
a calibration table, and ``reliability.png`` is drawn (share right against mean score per bin,
items and TL labels). When rows are the shipped synthetic sample (``synthetic_rows`` per dataset),
the table and the chart's title say so and that the numbers are not comparable with the paper's.
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


def build_metrics(
    counts: Mapping[str, Mapping[str, int]],
    confidence: Mapping[str, Mapping] | None = None,
    synthetic: Mapping[str, int] | None = None,
) -> dict[str, dict]:
    """The ``metrics.json`` object: ratios plus raw counts, per dataset (and, when given, the
    dataset's ``confidence`` report and its count of ``synthetic_rows``)."""
    out: dict[str, dict] = {}
    for ds in _ordered(counts):
        out[ds] = {**ratios(counts[ds]), "counts": dict(counts[ds])}
        if synthetic is not None:
            out[ds]["synthetic_rows"] = int(synthetic.get(ds, 0))
        if confidence and ds in confidence:
            out[ds]["confidence"] = confidence[ds]
    return out


SYNTHETIC_NOTE = "synthetic sample: not comparable with the paper"


def synthetic_caveat(metrics: Mapping[str, Mapping]) -> str | None:
    """A sentence saying how many rows are the shipped synthetic sample, or None if none are."""
    syn = sum(int(m.get("synthetic_rows") or 0) for m in metrics.values())
    if not syn:
        return None
    n = sum(int(m["n"]) for m in metrics.values())
    share = "All" if syn >= n else f"{syn} of"
    return (
        f"{share} {n} scored rows are the shipped synthetic sample (templated sentences "
        "written by this project, giellm_ray/resources/sample), not the paper's test data: "
        "these numbers are not comparable with the paper's."
    )


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def markdown_table(metrics: Mapping[str, Mapping], title: str = "GIELLM evaluation") -> str:
    """Our accuracy (%) beside the paper's, one row per dataset, with a legend."""
    caveat = synthetic_caveat(metrics)
    lines = [
        f"## {title}",
        "",
        *([f"**{caveat}**", ""] if caveat else []),
        "| dataset | n | TL | WL (exact set) | ALL | item P | item R | item F1 | parse fail | "
        + " | ".join(f"paper {m} TL/WL/ALL" for m in PAPER_COLUMNS)
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---|" * len(PAPER_COLUMNS),
    ]
    for ds, m in metrics.items():
        paper = " | ".join(paper_cell(ds, model) for model in PAPER_COLUMNS)
        name = f"{ds} (synthetic)" if m.get("synthetic_rows") else ds
        lines.append(
            f"| {name} | {m['n']} | {_pct(m['tl_accuracy'])} | {_pct(m['wl_accuracy'])} | "
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
        lines.append(
            f"\nRows left out because their gold target is missing or does not parse: {bad}"
        )
    conf = confidence_markdown(metrics)
    return "\n".join(lines) + "\n" + (f"\n{conf}" if conf else "")


def _score(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def confidence_markdown(metrics: Mapping[str, Mapping]) -> str:
    """Precision at score thresholds and calibration per dataset and kind ('' without scores)."""
    rows = [
        (ds, kind, m["confidence"][kind])
        for ds, m in metrics.items()
        if m.get("confidence")
        for kind in ("item", "tl")
        if m["confidence"][kind]["scored"]
    ]
    if not rows:
        return ""
    ths = [e["threshold"] for e in rows[0][2]["precision_at"]]
    lines = [
        "### Confidence: precision at score thresholds",
        "",
        "| dataset | kind | scored | unscored | ECE | "
        + " | ".join(f"P@{t:.1f} (kept)" for t in ths)
        + " |",
        "|---|---|---:|---:|---:|" + "---:|" * len(ths),
    ]
    for ds, kind, c in rows:
        cells = " | ".join(f"{_pct(e['precision'])} ({e['kept']})" for e in c["precision_at"])
        lines.append(
            f"| {ds} | {kind} | {c['scored']} | {c['unscored']} | {_score(c['ece'])} | {cells} |"
        )
    lines += [
        "",
        "### Confidence: calibration (share right % / count, per score bin)",
        "",
        "| dataset | kind | "
        + " | ".join(f"{b['low']:.1f}–{b['high']:.1f}" for b in rows[0][2]["calibration"])
        + " |",
        "|---|---|" + "---:|" * len(rows[0][2]["calibration"]),
    ]
    for ds, kind, c in rows:
        lines.append(
            f"| {ds} | {kind} | "
            + " | ".join(f"{_pct(b['accuracy'])} / {b['n']}" for b in c["calibration"])
            + " |"
        )
    lines += [
        "",
        "P@t: share of answers scored at least t that are right (kind item: a predicted "
        "item matching a gold one; tl: the TL label); kept: how many such answers. ECE: "
        "expected calibration error over the ten bins. unscored: answers with no score "
        "(outputs written before scores existed).",
    ]
    return "\n".join(lines) + "\n"


def render_reliability(metrics: Mapping[str, Mapping]) -> bytes | None:
    """PNG bytes: share right against mean score per bin, items and TL labels; None w/o scores."""
    scored = {ds: m["confidence"] for ds, m in metrics.items() if m.get("confidence")}
    if not scored:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), dpi=110)
    for ax, kind in zip(axes, ("item", "tl"), strict=True):
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="calibrated")
        for ds, conf in scored.items():
            bins = [b for b in conf[kind]["calibration"] if b["n"]]
            if bins:
                ax.plot(
                    [b["mean_score"] for b in bins],
                    [b["accuracy"] for b in bins],
                    marker="o",
                    label=f"{ds} (n={conf[kind]['scored']}, ECE {_score(conf[kind]['ece'])})",
                )
        if not any(conf[kind]["scored"] for conf in scored.values()):
            ax.text(0.5, 0.5, "no scores in this output", ha="center", color="#888")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("mean score in bin")
        ax.set_ylabel("share right")
        ax.set_title("items" if kind == "item" else "TL labels")
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "Reliability of confidence scores"
        + (f" ({SYNTHETIC_NOTE})" if synthetic_caveat(metrics) else ""),
        fontsize=10,
    )
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def chart_title(metrics: Mapping[str, Mapping], title: str) -> str:
    """The chart's title; on the synthetic sample it says the bars are not the paper's kind."""
    if synthetic_caveat(metrics) is None:
        return title
    return f"{title}\n{SYNTHETIC_NOTE.upper()}: templated data, not the paper's test sets"


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
        ax.bar(
            [x + width / 2 for x in xs],
            [p or 0 for p in paper],
            width,
            color=colors[i],
            alpha=0.35,
            hatch="//",
            label=f"paper 13B-JP {level}",
        )
    ax.set_xticks(range(len(names)), [f"{d}\n(n={metrics[d]['n']})" for d in names])
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    if synthetic_caveat(metrics):
        ax.set_title(chart_title(metrics, title), fontsize=10, color="#b00000")
    else:
        ax.set_title(chart_title(metrics, title))
    ax.legend(ncol=3, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(
    counts: Mapping[str, Mapping[str, int]],
    out_dir: str,
    title: str = "GIELLM evaluation",
    confidence: Mapping[str, Mapping] | None = None,
    synthetic: Mapping[str, int] | None = None,
) -> dict[str, dict]:
    """Write metrics.json, metrics.md, metrics.png (and reliability.png with scores) into
    ``out_dir``; return the metrics."""
    metrics = build_metrics(counts, confidence, synthetic)
    io.write_text(
        io.join(out_dir, "metrics.json"), json.dumps(metrics, ensure_ascii=False, indent=2) + "\n"
    )
    io.write_text(io.join(out_dir, "metrics.md"), markdown_table(metrics, title))
    if metrics:
        io.write_bytes(io.join(out_dir, "metrics.png"), render_chart(metrics, title))
    reliability = render_reliability(metrics)
    if reliability is not None:
        io.write_bytes(io.join(out_dir, "reliability.png"), reliability)
    return metrics
