"""Load test of the Serve app on loopback: throughput and p50/p95/p99 latency, batching on vs off.

    .venv/bin/python -m benchmarks.serve_load [--model PATH] [--batch-sizes 1,16,32]
        [--concurrency 1,8,32] [--requests 128] [--level-time-s 25] [--max-new-tokens 32]

For each ``batching.max_batch_size`` (1 = batching off, the baseline) the app is deployed on a
local Ray (one model replica, no autoscaling, so only batching differs), warmed up, then hit with
``--requests`` ``POST /v1/extract`` calls at each client concurrency (httpx, 127.0.0.1 only; each
level stops issuing after ``--level-time-s``). One JSON line per level (throughput, latency
percentiles, status counts, mean batch size seen by the replica, replica peak RSS), then a summary
line with the speedup of each batch size over batch size 1 at the highest concurrency. Without
``--model`` a random-init tiny model is built in a temp dir. Not run by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import socket
import statistics
import tempfile
import time

import httpx

from benchmarks.common import source_texts, tiny_model


def load_texts() -> list[str]:
    """Stockmark's texts from ../shared, else the shipped sample's."""
    return source_texts()


def build_model(texts: list[str]) -> str:
    return tiny_model(tempfile.mkdtemp(prefix="serve-load-"), texts)


def start_local_serve(ray_cpus: int = 2) -> str:
    """A local Ray and Serve's HTTP proxy on a free loopback port; returns the base URL."""
    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(
        num_cpus=ray_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs)) - 1))] if xs else float("nan")


async def run_level(url: str, texts: list[str], concurrency: int, n: int, limit_s: float) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + limit_s
    queue = iter(range(n))

    async with httpx.AsyncClient(
        base_url=url, timeout=120.0, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker() -> None:
            for i in queue:
                if time.perf_counter() > deadline:
                    return
                body = {"text": texts[i % len(texts)], "dataset": "SCNM"}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/extract", json=body)
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append((time.perf_counter() - t0) * 1000.0)
                statuses[key] = statuses.get(key, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    done = len(latencies)
    return {
        "completed": done,
        "elapsed_s": round(elapsed, 3),
        "throughput_rps": round(done / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else None,
        "statuses": statuses,
        "errors_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model directory (default: build a random tiny model)")
    ap.add_argument("--batch-sizes", default="1,16,32")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=128, help="requests per level (at most)")
    ap.add_argument("--level-time-s", type=float, default=25.0, help="stop issuing after this")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--wait-s", type=float, default=0.01, help="batching.batch_wait_timeout_s")
    ap.add_argument(
        "--concurrent-batches",
        type=int,
        default=None,
        help="batching.max_concurrent_batches (default: derived from the config)",
    )
    ap.add_argument("--unconstrained", action="store_true", help="decode without the grammar")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per model replica")
    args = ap.parse_args()

    import ray
    from ray import serve

    from giellm_ray.config import load_config
    from giellm_ray.serve.app import build_app
    from giellm_ray.serve.config import ServeConfig

    texts = load_texts()
    model = args.model or build_model(texts)
    url = start_local_serve()
    port = url.rsplit(":", 1)[1]
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    results: dict[tuple[int, int], dict] = {}
    try:
        for bs in [int(x) for x in args.batch_sizes.split(",")]:
            cfg = load_config(
                ServeConfig,
                None,
                [
                    f"model.name_or_path={model}",
                    f"generation.max_new_tokens={args.max_new_tokens}",
                    f"generation.batch_size={max(bs, 1)}",
                    f"constrained={not args.unconstrained}",
                    f"batching.max_batch_size={bs}",
                    f"batching.batch_wait_timeout_s={args.wait_s}",
                    f"replica.num_cpus={args.num_cpus}",
                    "replica.max_replicas=1",
                    f"replica.max_ongoing_requests={max(64, 4 * max(concurrencies))}",
                    "app_name=serve-load",
                    f"http.port={port}",
                ]
                + (
                    [f"batching.max_concurrent_batches={args.concurrent_batches}"]
                    if args.concurrent_batches
                    else []
                ),
            )
            serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
            handle = serve.get_deployment_handle("ExtractorModel", app_name=cfg.app_name)
            asyncio.run(run_level(url, texts, 4, 16, 60.0))  # warm-up
            for c in concurrencies:
                before = handle.stats.remote().result()
                level = asyncio.run(run_level(url, texts, c, args.requests, args.level_time_s))
                after = handle.stats.remote().result()
                batches = after["batches"] - before["batches"]
                level |= {
                    "bench": "serve_load",
                    "max_batch_size": bs,
                    "concurrency": c,
                    "constrained": not args.unconstrained,
                    "max_new_tokens": args.max_new_tokens,
                    "mean_batch": round((after["texts"] - before["texts"]) / batches, 2)
                    if batches
                    else None,
                    "replica_peak_rss_mb": round(after["peak_rss_mb"], 1),
                }
                results[(bs, c)] = level
                print(json.dumps(level), flush=True)
            serve.delete(cfg.app_name)
    finally:
        serve.shutdown()
        ray.shutdown()
    top = max(concurrencies)
    base = results.get((1, top), {}).get("throughput_rps")
    speedups = {
        str(bs): round(r["throughput_rps"] / base, 2)
        for (bs, c), r in results.items()
        if c == top and base
    }
    print(
        json.dumps(
            {
                "bench": "serve_load",
                "summary": True,
                "concurrency": top,
                "baseline": "max_batch_size=1",
                "speedup_vs_batch1": speedups,
                "goal_3x_met": bool(speedups) and max(speedups.values()) >= 3.0,
                "driver_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
