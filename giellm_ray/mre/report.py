"""The MRE comparison from scored counts: ``mre.json``, ``mre.md`` and ``mre.png``.

Pure apart from writing the three files (no torch, no Ray). Input: one record per scored run
(name, kind, seed, the scored directory and Parquet files, and the per-dataset counts that
:func:`giellm_ray.metrics.count_rows` gives on those files). Per dataset and side (mixed,
single) each level is the mean over seeds; the spread is the sample standard deviation over
seeds (n − 1; ``None`` with one seed), min and max beside it. Deltas are mixed − single **paired
by seed** (same seed, same test rows), then averaged. Fractions in [0, 1] in the JSON,
percentages / percentage points in the table and chart. The paper's MRE figures (TCREE) come from
:data:`giellm_ray.metrics.paper.MRE_TCREE`.
"""

from __future__ import annotations

import io as _io
import json
import statistics
from collections.abc import Mapping, Sequence

from giellm_ray import io
from giellm_ray.metrics.counts import ratios
from giellm_ray.metrics.paper import MRE_TCREE

# (mre.json key, ratios() key, label in the table and chart)
LEVELS = (
    ("tl", "tl_accuracy", "TL"),
    ("wl", "wl_accuracy", "WL (exact set)"),
    ("all", "all_accuracy", "ALL"),
    ("item_f1", "item_f1", "item F1"),
    ("parse_fail", "parse_failure_rate", "parse fail"),
)
SPREAD = "sample standard deviation over seeds (n - 1); min and max also given"
PAPER_NOTE = (
    "Paper columns: the paper's MRE check on TCREE (spec §3; mixed TL 96.49 / WL 73.12 / ALL "
    "71.72, single TC 95.89, single REE 58.73). Its single-task models learn one level alone "
    "(TC: the topic only; REE: the extraction only), ours learn one dataset with both levels, and "
    "its mixed pair equals the SLG (T5) row of the main table: the numbers sit beside ours for "
    "orientation, they are not the same experiment."
)
PAPER_MRE = {
    "TCREE": {
        "tl": (MRE_TCREE["mixed"]["TL"], MRE_TCREE["single_TC"]["TL"]),
        "wl": (MRE_TCREE["mixed"]["WL"], MRE_TCREE["single_REE"]["WL"]),
        "all": (MRE_TCREE["mixed"]["ALL"], None),
    }
}


def summarize(values: Sequence[float | None]) -> dict:
    """Mean, sample std (``None`` below two values), min, max and count of the non-null values."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "count": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else None,
        "min": min(vals),
        "max": max(vals),
        "count": len(vals),
    }


def _levels(counts: Mapping[str, int] | None) -> dict:
    r = ratios(counts) if counts else {"n": 0}
    return {"n": r["n"], **{key: r.get(src) for key, src, _ in LEVELS}}


def _side(records: list[dict], dataset: str) -> dict:
    per_run = []
    for rec in sorted(records, key=lambda r: r["seed"]):
        counts = rec["counts"].get(dataset)
        per_run.append(
            {
                "seed": rec["seed"],
                "run": rec["name"],
                "model": rec.get("model"),
                "scored": rec["scored"],
                "files": rec["files"],
                "counts": dict(counts) if counts else None,
                **_levels(counts),
            }
        )
    stats = {key: summarize([r[key] for r in per_run]) for key, _, _ in LEVELS}
    ns = sorted({r["n"] for r in per_run})
    return {
        "n": ns[0] if len(ns) == 1 else ns,
        **{k: s["mean"] for k, s in stats.items()},
        "spread": stats,
        "runs": per_run,
    }


def _delta(mixed: dict, single: dict) -> dict:
    single_by_seed = {r["seed"]: r for r in single["runs"]}
    per_seed, out = [], {}
    for r in mixed["runs"]:
        s = single_by_seed.get(r["seed"])
        if s is None:
            continue
        per_seed.append(
            {
                "seed": r["seed"],
                **{k: None if r[k] is None or s[k] is None else r[k] - s[k] for k, _, _ in LEVELS},
            }
        )
    stats = {k: summarize([p[k] for p in per_seed]) for k, _, _ in LEVELS}
    out.update({k: s["mean"] for k, s in stats.items()})
    return {**out, "spread": stats, "per_seed": per_seed}


def build_mre(records: list[dict], datasets: Sequence[str], meta: Mapping) -> dict:
    """The ``mre.json`` object from per-run records (see the module docstring)."""
    out = {
        **meta,
        "units": "fractions in [0, 1]; delta = mixed - single, paired by seed",
        "spread": SPREAD,
        "seeds": sorted({r["seed"] for r in records}),
        "datasets": {},
    }
    for d in datasets:
        mixed = _side([r for r in records if r["kind"] == "mixed" and d in r["datasets"]], d)
        single = _side([r for r in records if r["kind"] == "single" and r["datasets"] == [d]], d)
        entry = {"mixed": mixed, "single": single, "delta": _delta(mixed, single)}
        if d in PAPER_MRE:
            entry["paper"] = {k: {"mixed": m, "single": s} for k, (m, s) in PAPER_MRE[d].items()}
        out["datasets"][d] = entry
    out["runs"] = [
        {
            k: r[k]
            for k in (
                "name",
                "kind",
                "seed",
                "datasets",
                "model",
                "scored",
                "files",
                "status",
                "seconds",
            )
            if k in r
        }
        for r in records
    ]
    return out


def _cell(stats: Mapping, signed: bool = False) -> str:
    mean = stats["mean"]
    if mean is None:
        return "–"
    text = f"{100 * mean:+.2f}" if signed else f"{100 * mean:.2f}"
    if stats["std"] is not None:
        text += f" ± {100 * stats['std']:.2f}"
    return text


def markdown(mre: Mapping) -> str:
    """The table: per dataset and level, mixed, single, Δ and the paper's MRE figures."""
    seeds = mre["seeds"]
    spread = "" if len(seeds) < 2 else " (mean ± sample std over seeds)"
    lines = [f"## {mre.get('title', 'Mixed vs single-task training (MRE)')}", ""]
    if mre.get("disclaimer"):
        lines += [f"> **{mre['disclaimer']}**", ""]
    lines += [
        f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} per side){spread}; mix "
        f"`{mre.get('mix')}`; recipe `{mre.get('train_config')}`"
        + (f" with {' '.join(mre['train_overrides'])}" if mre.get("train_overrides") else "")
        + ".",
        "",
        "| dataset | level | n | mixed | single | Δ mixed − single | paper mixed | paper single |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for d, e in mre["datasets"].items():
        for key, _, label in LEVELS:
            paper = e.get("paper", {}).get(key, {})
            pm, ps = (
                f"{paper[s]:.2f}" if paper.get(s) is not None else "–" for s in ("mixed", "single")
            )
            lines.append(
                f"| {d} | {label} | {e['mixed']['n']} | {_cell(e['mixed']['spread'][key])}"
                f" | {_cell(e['single']['spread'][key])} | "
                f"{_cell(e['delta']['spread'][key], signed=True)} | {pm} | {ps} |"
            )
    lines += [
        "",
        "Percent; Δ in percentage points, mixed − single paired by seed (higher is "
        "better except parse fail). TL: text-level label right; WL (exact set): the items "
        "equal the gold items as a multiset; ALL: both; item F1: micro F1 over items. Both "
        "sides are scored on the same rows: the dataset's own test split.",
        "",
        PAPER_NOTE,
        "",
        "Scored outputs (every number above is recomputed from these "
        "Parquet files; paths and counts per run in mre.json):",
        "",
    ]
    lines += [f"- `{r['name']}`: `{r['scored']}`" for r in mre["runs"]]
    return "\n".join(lines) + "\n"


def _dumbbell(ax, y: int, e: Mapping, key: str) -> None:
    m, s = e["mixed"]["spread"][key], e["single"]["spread"][key]
    if m["mean"] is None or s["mean"] is None:
        ax.annotate("no data", (50, y), ha="center", va="center", fontsize=8, color="#888888")
        return
    xm, xs, delta = 100 * m["mean"], 100 * s["mean"], 100 * (e["delta"][key] or 0.0)
    noise = 100 * (e["delta"]["spread"][key]["std"] or 0.0)  # 0 with one seed
    color = "#888888" if abs(delta) <= max(noise, 0.05) else "#2a9d55" if delta > 0 else "#d1495b"
    ax.plot([xs, xm], [y, y], color=color, lw=4, alpha=0.5, zorder=1, solid_capstyle="butt")
    # Mixed first, single as a ring on top: equal values still show both markers.
    ax.plot(xm, y, "o", color="#1f5fa8", ms=7, zorder=2)
    ax.plot(xs, y, "o", mfc="none", mec="#333333", mew=1.5, ms=11, zorder=3)
    for x, spread, ecolor in ((xm, m["std"], "#1f5fa8"), (xs, s["std"], "#666666")):
        if spread:  # seeds disagree: ± one sample std
            ax.errorbar(x, y, xerr=100 * spread, fmt="none", ecolor=ecolor, capsize=3, zorder=2)
    text = f"{delta:+.1f}" + (f" ± {noise:.1f}" if noise else "")
    sm, ss = 100 * (m["std"] or 0), 100 * (s["std"] or 0)
    hi, lo = max(xm + sm, xs + ss), min(xm - sm, xs - ss)  # past the error bars
    right = hi < 80  # near 100 % the label goes left of the pair, inside the panel
    ax.annotate(
        text,
        (hi if right else lo, y),
        xytext=(9 if right else -9, 0),
        textcoords="offset points",
        va="center",
        ha="left" if right else "right",
        fontsize=8.5,
        color=color,
        fontweight="bold",
    )


def render_chart(mre: Mapping) -> bytes:
    """PNG: one panel per level; per dataset a dumbbell from single (ring) to mixed (dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = list(mre["datasets"])
    levels = [lv for lv in LEVELS if lv[0] != "parse_fail"]
    height = 1.9 + 0.5 * len(names) + (0.3 if mre.get("quick") else 0)
    fig, axes = plt.subplots(
        1, len(levels), figsize=(12.5, height), dpi=120, sharey=True, squeeze=False
    )
    for ax, (key, _, label) in zip(axes[0], levels, strict=True):
        for y, d in enumerate(names):
            _dumbbell(ax, y, mre["datasets"][d], key)
        ax.set_title(label, fontsize=10, fontweight="bold")
        ax.set_xlim(-5, 115)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("% of test rows" if key != "item_f1" else "micro F1 (%)", fontsize=8)
    first = axes[0][0]
    first.set_yticks(
        range(len(names)), [f"{d}\nn={mre['datasets'][d]['mixed']['n']}" for d in names], fontsize=9
    )
    first.set_ylim(len(names) - 0.5, -0.5)
    seeds = mre["seeds"]
    over = f"mean ± std over {len(seeds)} seeds" if len(seeds) > 1 else "1 seed"
    fig.suptitle(
        f"Does training on the mix help?  Mixed vs single-task models, "
        f"Δ = mixed − single in points ({over})",
        fontsize=11,
        y=1 - 0.12 / height,
    )
    handles = [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color="#1f5fa8",
            ms=7,
            label="mixed: one model trained on all tasks",
        ),
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            mfc="none",
            mec="#333333",
            mew=1.5,
            ms=11,
            label="single: one model per task",
        ),
        Line2D([], [], color="#2a9d55", lw=4, alpha=0.5, label="mixed better"),
        Line2D([], [], color="#d1495b", lw=4, alpha=0.5, label="mixed worse"),
        Line2D(
            [],
            [],
            color="#888888",
            lw=4,
            alpha=0.5,
            label="|Δ| ≤ std over seeds" if len(seeds) > 1 else "no change",
        ),
    ]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 1 - 0.42 / height),
        ncol=5,
        fontsize=8,
        frameon=False,
    )
    bottom = 0.6 / height
    if mre.get("quick"):
        fig.text(
            0.5,
            0.1 / height,
            "QUICK RUN: a tiny model on templated data; it shows the "
            "mechanics and says nothing about the effect's size",
            ha="center",
            va="bottom",
            fontsize=9,
            color="#d1495b",
            fontweight="bold",
        )
        bottom += 0.25 / height
    fig.subplots_adjust(left=0.09, right=0.985, top=1 - 1.0 / height, bottom=bottom, wspace=0.08)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_mre(mre: Mapping, output: str) -> dict[str, str]:
    """Write mre.json, mre.md and mre.png into ``output``; return their paths."""
    paths = {name: io.join(output, name) for name in ("mre.json", "mre.md", "mre.png")}
    io.write_text(paths["mre.json"], json.dumps(mre, ensure_ascii=False, indent=2) + "\n")
    io.write_text(paths["mre.md"], markdown(mre))
    io.write_bytes(paths["mre.png"], render_chart(mre))
    return paths
