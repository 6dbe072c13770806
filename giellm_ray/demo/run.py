"""``giellm demo``: the whole job on one CPU machine, no GPU, no downloads, in minutes.

Six steps, each with a banner and its time: build a small mixed corpus from the shipped
synthetic sample (``giellm_ray/resources/sample``) with the mix builder; fine-tune the tiny
random-init Llama with Ray Train + DeepSpeed (``jobs/configs/train/tiny-cpu.yaml`` plus the
demo's size); bulk-score the held-out Parquet with Ray Data (the shipped ``configs/score/cpu.yaml``)
and print the TL/WL/ALL table beside the paper's (chart and JSON under ``scored/_metrics``);
start the Ray Serve endpoint and answer one request; shut everything down. The same driver
functions run ``giellm train|score|serve`` and ``jobs/*.py`` on a cluster.

A tiny model trained for minutes on templated sentences is a demonstration of the system, not
of GIELLM's accuracy: paper-level numbers need a pretrained 7B/13B base fine-tuned on GPUs.

    giellm demo [--workdir runs/demo] [--epochs N] [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.request
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from pydantic import Field

from giellm_ray.config import StrictModel
from giellm_ray.configs import config_path
from giellm_ray.ray_session import connect_ray

DISCLAIMER = (
    "This is a demonstration: a 1.2M-parameter model trained from scratch for minutes on "
    "synthetic, templated sentences. Its scores show the pipeline works end to end, not what "
    "GIELLM achieves: paper-level accuracy needs a pretrained 7B/13B base (Llama-2, llm-jp-13b) "
    "fine-tuned on GPUs (see cluster.yaml and the README)."
)


class DemoConfig(StrictModel):
    """Size and place of one demo run."""

    workdir: str = "runs/demo"
    """Everything the demo writes goes here (data, runs, scored, summary); reruns replace it."""
    epochs: int = Field(12, ge=1)
    """Training epochs over the corpus (more epochs: better scores, longer run)."""
    train_rows_per_dataset: int | None = None
    """Training rows drawn per dataset from the sample; ``None``: all of them."""
    test_rows_per_dataset: int | None = None
    """Held-out rows scored per dataset; ``None``: the whole shipped test file."""
    hidden_size: int = 128
    """Width of the tiny Llama."""
    num_hidden_layers: int = 4
    """Depth of the tiny Llama (copying spans needs more than one attention layer)."""
    lr: float = 3e-3
    """Peak learning rate (a model trained from scratch takes a large one)."""
    num_workers: int = 2
    """Ray Train workers (1 CPU each)."""
    serve_port: int = 0
    """HTTP port of the Serve endpoint; 0 picks a free one."""


# Sample targets are at most ~40 tokens; an undertrained model would otherwise babble up to each
# task's budget (128-224 tokens) on every row.
MAX_NEW_TOKENS = 64
QUICK = {
    "epochs": 2,
    "train_rows_per_dataset": 24,
    "test_rows_per_dataset": 3,
    "hidden_size": 64,
    "num_hidden_layers": 2,
}


@contextmanager
def step(index: int, total: int, title: str, timings: dict[str, float]):
    """Print a banner, run the block, print how long it took (kept in ``timings``)."""
    print(f"\n=== [{index}/{total}] {title} ===", flush=True)
    start = time.perf_counter()
    yield
    timings[title] = round(time.perf_counter() - start, 1)
    print(f"--- [{index}/{total}] done in {timings[title]:.1f} s", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_corpus(cfg: DemoConfig, work: Path) -> tuple[str, str]:
    """Mix the sample's training rows (``giellm data mix``); cut the held-out test file."""
    import pyarrow.parquet as pq

    from giellm_ray.data.mix import build_mix
    from giellm_ray.sample import sample_path

    train = pq.read_table(sample_path("train"), columns=["dataset"]).column("dataset").to_pylist()
    sizes = {d: min(n, cfg.train_rows_per_dataset or n) for d, n in Counter(train).items()}
    manifest = build_mix([sample_path("train")], str(work / "data"), seed=0, sizes=sizes)
    test = pq.read_table(sample_path("test"))
    if cfg.test_rows_per_dataset:
        seen: Counter[str] = Counter()
        keep = []
        for i, d in enumerate(test.column("dataset").to_pylist()):
            seen[d] += 1
            if seen[d] <= cfg.test_rows_per_dataset:
                keep.append(i)
        test = test.take(keep)
    heldout = work / "heldout" / "test.parquet"
    heldout.parent.mkdir(parents=True)
    pq.write_table(test, heldout)
    counts = manifest.get("train_counts") or sizes
    print(f"training corpus: {sum(sizes.values())} rows {dict(counts)} -> {work / 'data'}")
    print(f"held-out test:   {test.num_rows} rows (texts unseen in training) -> {heldout}")
    return str(work / "data" / "train.parquet"), str(heldout)


def train(cfg: DemoConfig, work: Path, train_path: str) -> str:
    """Ray Train + DeepSpeed (ZeRO-2, fp32, CPU) on the tiny-cpu config; return the export."""
    from giellm_ray.config import load_config
    from giellm_ray.train.config import TrainConfig
    from giellm_ray.train.driver import run_training

    overrides = [
        f"storage_path={work / 'runs'}",
        "run_name=demo",
        f"data.train={train_path}",
        "data.eval=null",
        f"epochs={cfg.epochs}",
        f"lr={cfg.lr}",
        f"num_workers={cfg.num_workers}",
        f"tiny.hidden_size={cfg.hidden_size}",
        f"tiny.intermediate_size={4 * cfg.hidden_size}",
        f"tiny.num_hidden_layers={cfg.num_hidden_layers}",
        "checkpoint_every_steps=null",
        "keep_checkpoints=1",
        "log_every_steps=20",
    ]
    tcfg = load_config(TrainConfig, config_path("train", "tiny-cpu.yaml"), overrides)
    result = run_training(tcfg)
    print(f"exported model: {result.export_dir}")
    return str(result.export_dir)


def score(work: Path, model: str, heldout: str) -> dict:
    """Ray Data bulk scoring of the held-out Parquet; the metrics report lands beside it."""
    from giellm_ray.config import load_config
    from giellm_ray.metrics import markdown_table
    from giellm_ray.score.config import ScoreConfig
    from giellm_ray.score.driver import run_score

    scfg = load_config(
        ScoreConfig,
        config_path("score", "cpu.yaml"),
        ["progress_bars=false", f"generation.max_new_tokens={MAX_NEW_TOKENS}"],
    )
    scfg.model.name_or_path = model
    scfg.input = [heldout]
    scfg.output = str(work / "scored")
    summary = run_score(scfg)
    print(
        f"scored {summary['output_rows']} rows in {summary['seconds']:.1f} s "
        f"({summary['rows_per_s']:.1f} rows/s) -> {scfg.output}"
    )
    print()
    print(markdown_table(summary["metrics"], title="giellm demo: tiny model vs the paper"))
    print(f"report (JSON, Markdown, chart): {work / 'scored' / '_metrics'}/metrics.*")
    return summary


def serve_one(cfg: DemoConfig, model: str, heldout: str) -> dict:
    """Start the Serve endpoint, POST one held-out text, print the answer, shut it down."""
    import pyarrow.parquet as pq

    from giellm_ray.config import load_config
    from giellm_ray.serve.config import ServeConfig
    from giellm_ray.serve.driver import start_service, stop_service

    port = cfg.serve_port or _free_port()
    overrides = [
        f"model.name_or_path={model}",
        f"http.port={port}",
        "replica.num_cpus=0.5",
        "replica.max_replicas=1",
        f"generation.max_new_tokens={MAX_NEW_TOKENS}",
    ]
    scfg = load_config(ServeConfig, config_path("serve", "giellm.yaml"), overrides)
    row = pq.read_table(heldout).slice(0, 1).to_pylist()[0]
    url = start_service(scfg)
    try:
        body = json.dumps({"text": row["text"], "dataset": row["dataset"]}, ensure_ascii=False)
        print(f"POST {url}/v1/extract {body}")
        req = urllib.request.Request(
            f"{url}/v1/extract", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            answer = json.loads(resp.read())
        print(json.dumps(answer, ensure_ascii=False, indent=2))
        print(f"gold: {row['target']}")
    finally:
        stop_service(scfg)
    return answer


def run_demo(cfg: DemoConfig) -> dict:
    """Run the six steps; return a summary (also written to ``WORKDIR/demo_summary.json``)."""
    import ray

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(cfg.workdir).expanduser().resolve()
    for sub in ("data", "heldout", "runs", "scored"):
        shutil.rmtree(work / sub, ignore_errors=True)  # a rerun starts fresh (DeepSpeed needs it)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started_ray = False
    print(f"giellm demo -> {work}\n{DISCLAIMER}", flush=True)
    total = time.perf_counter()
    try:
        with step(1, 6, "Build the mixed corpus from the shipped sample", timings):
            train_path, heldout = build_corpus(cfg, work)
        with step(2, 6, "Start a local Ray cluster", timings):
            started_ray = connect_ray()
            print(f"Ray {ray.__version__}: {ray.cluster_resources()}")
        with step(
            3, 6, f"Fine-tune the tiny model: Ray Train + DeepSpeed, {cfg.epochs} epochs", timings
        ):
            model = train(cfg, work, train_path)
        with step(4, 6, "Bulk-score the held-out Parquet with Ray Data", timings):
            summary = score(work, model, heldout)
        with step(5, 6, "Serve: start the endpoint, answer one request, stop", timings):
            answer = serve_one(cfg, model, heldout)
    finally:
        with step(6, 6, "Shut down", timings):
            if started_ray:
                ray.shutdown()
    result = {
        "workdir": str(work),
        "model": model,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - total, 1),
        "metrics": summary["metrics"],
        "serve_answer": answer,
        "config": cfg.model_dump(),
    }
    (work / "demo_summary.json").write_text(json.dumps(result, ensure_ascii=False, indent=2))
    steps = "; ".join(f"{name}: {sec:.0f} s" for name, sec in timings.items())
    print(f"\nDone in {result['total_s']:.0f} s ({steps}).")
    print(f"Summary: {work / 'demo_summary.json'}\n{DISCLAIMER}")
    return result
