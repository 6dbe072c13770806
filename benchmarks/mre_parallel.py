"""``giellm mre --quick``: sequential runs vs runs side by side (``--parallel``), on this machine.

    .venv/bin/python -m benchmarks.mre_parallel [--repeat 1]

Each variant is a fresh ``giellm -q mre --quick`` process in its own output directory (Ray
start-up included, the same for all): the baseline is the quick recipe as shipped (2 Ray Train
workers per run at 0.75 CPU, one run at a time); then 1 worker per run (1 CPU) one at a time, and
1 worker per run two at a time (``--parallel 2``: two training runs fit in 2 CPUs). Prints one
JSON line per variant: wall seconds, the summed train / score seconds of its runs (as recorded in
mre.json), the peak RSS of the whole process tree (driver, raylet, workers), and the speed-up
against the baseline from the same invocation. Not run by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from benchmarks.common import tree_rss_mib

VARIANTS = {
    "sequential, 2 workers/run (baseline)": [],
    "sequential, 1 worker/run": ["--set", "num_workers=1", "--set", "resources_per_worker.CPU=1"],
    "parallel 2, 1 worker/run": [
        "--set",
        "num_workers=1",
        "--set",
        "resources_per_worker.CPU=1",
        "--parallel",
        "2",
    ],
}


def run_variant(name: str, extra: list[str], workdir: str) -> dict:
    out = os.path.join(workdir, name.split(",")[0].replace(" ", "-") + str(len(extra)))
    cmd = [sys.executable, "-m", "giellm_ray.cli", "-q", "mre", "--quick", "--output", out, *extra]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak, done = 0.0, threading.Event()

    def sample() -> None:
        nonlocal peak
        proc = psutil.Process(child.pid)
        while not done.is_set():
            peak = max(peak, tree_rss_mib(proc))
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = child.communicate()
    wall = time.perf_counter() - start
    done.set()
    if child.returncode:
        raise SystemExit(f"{name}: exit {child.returncode}\n{err.decode()[-3000:]}")
    with open(os.path.join(out, "mre.json")) as f:
        mre = json.load(f)
    return {
        "bench": "mre_parallel",
        "variant": name,
        "runs": len(mre["runs"]),
        "wall_s": round(wall, 1),
        "train_s_sum": round(sum(r["seconds"]["train"] for r in mre["runs"]), 1),
        "score_s_sum": round(sum(r["seconds"]["score"] for r in mre["runs"]), 1),
        "peak_tree_rss_mib": round(peak),
        "cpus": os.cpu_count(),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="rounds over the variants")
    p.add_argument("--keep", default=None, help="write the runs here and keep them")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="giellm-mre-bench-") as tmp:
        tmp = args.keep or tmp
        for round_ in range(args.repeat):
            base = None
            for name, extra in VARIANTS.items():
                row = run_variant(name, extra, os.path.join(tmp, f"r{round_}"))
                base = base or row["wall_s"]
                row["speedup_vs_baseline"] = round(base / row["wall_s"], 2)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
