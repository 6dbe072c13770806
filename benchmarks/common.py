"""What the benchmarks share: where the real data lives, the JSON-lines output, process memory.

- :data:`STOCKMARK_NER`: Stockmark's ``ner.json`` in ``../shared`` beside the clone (the one place
  its path is spelled); :func:`stockmark_texts` reads it, :func:`source_texts` falls back to the
  sample shipped in the package (a cluster has no ``../shared``).
- :func:`emit`: one JSON line per record on stdout, with the 1-minute load average, so a figure
  measured on a shared machine says how shared it was.
- :func:`tree_rss_mib`: resident memory of a process and all its descendants (Ray workers, vLLM's
  engine core), in MiB.
- :func:`tiny_model`: the tiny random-init Llama of ``giellm_ray.model.tiny`` with its tokenizer
  trained on ``texts`` plus every format string (``tokenizer_texts``), as the tests build it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STOCKMARK_NER = ROOT.parent / "shared" / "data" / "stockmark-ner-wikipedia" / "ner.json"


def stockmark_records() -> list[dict]:
    """The 4,821 Stockmark NER records (``curid``, ``text``, ``entities``)."""
    if not STOCKMARK_NER.exists():
        raise SystemExit(f"this benchmark needs Stockmark's ner.json at {STOCKMARK_NER}")
    return json.loads(STOCKMARK_NER.read_text(encoding="utf-8"))


def stockmark_texts() -> list[str]:
    return [r["text"] for r in stockmark_records()]


def source_texts() -> list[str]:
    """Stockmark's texts from ../shared, else the sample shipped in the package (a cluster)."""
    if STOCKMARK_NER.exists():
        return stockmark_texts()
    import pyarrow.parquet as pq

    from giellm_ray.sample import sample_path

    return pq.read_table(sample_path("test"), columns=["text"]).column(0).to_pylist()


def emit(record: dict | None = None, /, **fields) -> None:
    """Print ``record`` and ``fields`` as one JSON line (flushed), with ``load1`` added."""
    out = {**(record or {}), **fields}
    out.setdefault("load1", round(os.getloadavg()[0], 2))
    print(json.dumps(out, ensure_ascii=False), flush=True)


def tree_rss_mib(proc) -> float:
    """RSS of ``proc`` (a ``psutil.Process`` or a pid) and all its descendants, in MiB."""
    import psutil

    proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
    total = 0
    with contextlib.suppress(psutil.Error):
        procs = [proc, *proc.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):  # a worker that exited meanwhile
                total += p.memory_info().rss
    return total / 2**20


def tiny_model(out_dir: str, texts, config=None) -> str:
    """``build_tiny(out_dir, tokenizer_texts(texts), config)``; ``config`` defaults to the tests'
    ``TinyConfig(vocab_size=1500)``."""
    from giellm_ray.model.tiny import TinyConfig, build_tiny, tokenizer_texts

    return build_tiny(out_dir, tokenizer_texts(texts), config or TinyConfig(vocab_size=1500))
