"""The paper's accuracy table (spec §3), laid beside our reports and never tuned to.

Values are percentages as the paper summary prints them. For SCPOS:N&Adj and TCREE only two
numbers survive and their headings are garbled: they are kept under ``first``/``second`` rather than
guessed as TL/WL/ALL.
"""

from __future__ import annotations

MODELS = ("SLG", "GPT-3.5-Turbo", "GIELLM-7B", "GIELLM-13B", "GIELLM-13B-JP")

# dataset -> model -> {level: value}
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "SCNM": {
        "SLG": {"TL": 88.89, "WL": 81.96, "ALL": 72.41},
        "GPT-3.5-Turbo": {"TL": 49.46, "WL": 11.87, "ALL": 6.97},
        "GIELLM-7B": {"TL": 85.70, "WL": 63.16, "ALL": 54.29},
        "GIELLM-13B": {"TL": 85.06, "WL": 54.06, "ALL": 45.96},
        "GIELLM-13B-JP": {"TL": 86.44, "WL": 62.95, "ALL": 54.43},
    },
    "SCPOS:RW": {
        "SLG": {"TL": 88.21, "WL": 55.57, "ALL": 17.28},
        "GPT-3.5-Turbo": {"TL": 53.60, "WL": 14.99, "ALL": 1.60},
        "GIELLM-7B": {"TL": 86.31, "WL": 66.90, "ALL": 25.37},
        "GIELLM-13B": {"TL": 83.33, "WL": 65.25, "ALL": 24.75},
        "GIELLM-13B-JP": {"TL": 85.83, "WL": 67.62, "ALL": 26.15},
    },
    "SCPOS:N&Adj": {
        "SLG": {"first": 87.30, "second": 1.60},
        "GPT-3.5-Turbo": {"first": 73.20, "second": 0.13},
        "GIELLM-7B": {"first": 92.27, "second": 54.23},
        "GIELLM-13B": {"first": 90.43, "second": 63.98},
        "GIELLM-13B-JP": {"first": 93.2, "second": 48.04},
    },
    "SCPOS:N": {
        "SLG": {"TL": 89.50, "WL": 27.62, "ALL": 3.00},
        "GPT-3.5-Turbo": {"TL": 73.83, "WL": 10.44, "ALL": 0.23},
        "GIELLM-7B": {"TL": 92.10, "WL": 58.33, "ALL": 4.60},
        "GIELLM-13B": {"TL": 90.13, "WL": 68.28, "ALL": 9.80},
        "GIELLM-13B-JP": {"TL": 92.43, "WL": 49.63, "ALL": 4.43},
    },
    "SCPOS:Adj": {
        "SLG": {"TL": 83.00, "WL": 73.84, "ALL": 52.47},
        "GPT-3.5-Turbo": {"TL": 78.83, "WL": 15.45, "ALL": 9.87},
        "GIELLM-7B": {"TL": 91.6, "WL": 75.71, "ALL": 58.8},
        "GIELLM-13B": {"TL": 91.9, "WL": 77.58, "ALL": 60.70},
        "GIELLM-13B-JP": {"TL": 93.47, "WL": 78.71, "ALL": 63.33},
    },
    "TCREE": {
        "SLG": {"first": 96.49, "second": 73.12},
        "GPT-3.5-Turbo": {"first": 80.02, "second": 7.33},
        "GIELLM-7B": {"first": 97.19, "second": 77.01},
        "GIELLM-13B": {"first": 94.58, "second": 74.90},
        "GIELLM-13B-JP": {"first": 97.49, "second": 78.51},
    },
}

# MRE check on TCREE (spec §3): mixed vs single-task training.
MRE_TCREE = {
    "mixed": {"TL": 96.49, "WL": 73.12, "ALL": 71.72},
    "single_TC": {"TL": 95.89},
    "single_REE": {"WL": 58.73},
}


def paper_levels(dataset: str, model: str) -> tuple[float | None, float | None, float | None]:
    """(TL, WL, ALL) for a dataset and model; ``None`` where the paper's heading is unknown."""
    entry = PAPER.get(dataset, {}).get(model, {})
    return entry.get("TL"), entry.get("WL"), entry.get("ALL")


def paper_cell(dataset: str, model: str) -> str:
    """A compact ``TL/WL/ALL`` cell, or ``a / b (headings unclear)`` for the garbled columns."""
    entry = PAPER.get(dataset, {}).get(model)
    if not entry:
        return "–"
    if "TL" in entry:
        return f"{entry['TL']:.1f} / {entry['WL']:.1f} / {entry['ALL']:.1f}"
    return f"{entry['first']:.1f}, {entry['second']:.1f} (?)"
