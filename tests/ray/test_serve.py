"""The Serve application end to end on loopback with the real tiny model, on each engine (``hf``:
``@serve.batch`` + coalescer; ``vllm``: one async vLLM engine per replica): answers, 4xx for every
bad request while staying up, a bounded concurrent run with no 5xx and real batching, hostile
requests and rows sent among good ones leaving the good answers exactly as they are alone, the
config reaching the replica, and the shipped Serve deploy config. One app per
engine for the module (model load is the slow part); Serve is shut down in the finaliser."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import take
from ray import cloudpickle

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = ROOT / "jobs" / "configs" / "serve"
pytestmark = pytest.mark.ray

N_CONCURRENT_REQUESTS = 240
CLIENTS = 24


def unconstrained_extractor(cfg):
    """The injected factory: the real Extractor on the tiny model, decoding unconstrained (so a
    random model's output fails to parse and the 200-with-error path is exercised)."""
    from giellm_ray.generation.build import hf_extractor

    return hf_extractor(cfg.model, cfg.generation, cfg.registry(), constrained=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# vLLM replica: the config's own factory (build_extractor), unconstrained as the HF one, so every
# test asserts the same answers of both engines; vLLM on CPU settings as in tests/conftest.py.
VLLM_SETS = [
    "engine=vllm",
    "constrained=false",
    "vllm.enforce_eager=true",
    "vllm.gpu_memory_utilization=0.1",
    "vllm.max_num_seqs=64",
    "ingress.retry_timeout_s=180",
]  # a replacement replica starts vLLM: ~30 s here


@pytest.fixture(scope="module", params=["hf", pytest.param("vllm", marks=pytest.mark.slow)])
def service(request, ray_cluster, tiny_model_dir, tiny_vllm_model_dir):
    from ray import serve

    from giellm_ray.config import load_config
    from giellm_ray.serve.app import build_app
    from giellm_ray.serve.config import ServeConfig

    port = _free_port()
    vllm = request.param == "vllm"
    cfg = load_config(
        ServeConfig,
        str(SERVE_CONFIGS / "giellm.yaml"),
        [
            f"model.name_or_path={tiny_vllm_model_dir if vllm else tiny_model_dir}",
            f"http.port={port}",
            "app_name=giellm-test",
            "generation.max_new_tokens=24",
            "http.max_text_chars=300",
            "http.max_body_bytes=8192",
            "replica.num_cpus=0.5",
            "replica.max_replicas=1",
            "batching.max_batch_size=8",
            "batching.batch_wait_timeout_s=0.02",
            "replica.graceful_shutdown_timeout_s=5",
            *(VLLM_SETS if vllm else []),
        ],
    )
    # The factory lives in this test module, which replicas cannot import: ship it by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_app(cfg, None if vllm else unconstrained_extractor),
            name=cfg.app_name,
            route_prefix="/",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0) as client:
            yield cfg, client
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        serve.shutdown()


@pytest.mark.timeout(240)
def test_extract_answers_with_request_id(service, stockmark_records):
    _, client = service
    text = stockmark_records[0]["text"]
    r = client.post(
        "/v1/extract", json={"text": text, "dataset": "SCNM"}, headers={"X-Request-ID": "req-42"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-request-id"] == "req-42" and body["request_id"] == "req-42"
    assert body["model"] == service[0].served_model_name and body["latency_ms"] > 0
    assert isinstance(body["raw_output"], str) and body["num_generated_tokens"] > 0
    # A random model's unconstrained output does not parse: 200 with the raw output and an error.
    assert body["error"] and body["raw_output"]
    for it in body["items"]:
        if it["start"] is not None:
            assert text[it["start"] : it["end"]] == it["span"]


@pytest.mark.timeout(120)
def test_bad_requests_get_4xx_and_service_keeps_answering(service):
    cfg, client = service
    good = {"text": "松友美佐紀は、日本のバドミントン選手。", "dataset": "SCNM"}
    cases = [
        ({"json": {"text": "", "dataset": "SCNM"}}, 422, "empty"),
        ({"json": {"text": "あ" * 301, "dataset": "SCNM"}}, 413, "limit is 300"),
        ({"json": {"text": "テスト", "dataset": "XYZ"}}, 422, "SCPOS:N&Adj"),
        (
            {"content": b'{"text": "a", ', "headers": {"content-type": "application/json"}},
            400,
            "malformed JSON",
        ),
        ({"content": b"[" * 9000, "headers": {"content-type": "application/json"}}, 413, "8192"),
        ({"json": {"requests": [good] * 65}, "url": "/v1/extract/batch"}, 413, "limit is 64"),
    ]
    for kwargs, status, words in cases:
        url = kwargs.pop("url", "/v1/extract")
        r = client.post(url, **kwargs)
        assert r.status_code == status, (url, r.status_code, r.text)
        assert words in r.json()["detail"]
        assert client.post("/v1/extract", json=good).status_code == 200


@pytest.mark.timeout(120)
def test_batch_tasks_health_docs(service, stockmark_records):
    _, client = service
    texts = [r["text"] for r in stockmark_records[:3]]
    reqs = [
        {"text": t, "dataset": d} for t, d in zip(texts, ["SCNM", "SCPOS:RW", "TCREE"], strict=True)
    ]
    r = client.post("/v1/extract/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    assert [x["dataset"] for x in r.json()["results"]] == ["SCNM", "SCPOS:RW", "TCREE"]
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert tasks["SCPOS:RW"]["instruction"] == "関連語" and "人名" in tasks["SCNM"]["wl_labels"]
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200


@pytest.mark.timeout(300)
def test_concurrent_run_has_no_5xx_and_batches(service, stockmark_records):
    from ray import serve

    cfg, client = service
    # Cycled: the 100-sentence excerpt (a clone without ../shared) has fewer texts than requests.
    texts = [
        stockmark_records[i % len(stockmark_records)]["text"] for i in range(N_CONCURRENT_REQUESTS)
    ]

    async def run() -> list[int]:
        sem = asyncio.Semaphore(CLIENTS)
        async with httpx.AsyncClient(
            base_url=str(client.base_url),
            timeout=120.0,
            limits=httpx.Limits(max_connections=CLIENTS),
        ) as ac:

            async def one(i: int) -> int:
                async with sem:
                    body = {"text": texts[i], "dataset": ("SCNM", "SCPOS:Adj")[i % 2]}
                    return (await ac.post("/v1/extract", json=body)).status_code

            return await asyncio.gather(*(one(i) for i in range(len(texts))))

    statuses = asyncio.run(run())
    assert len(statuses) == N_CONCURRENT_REQUESTS
    assert [s for s in statuses if s != 200] == []
    model = serve.get_deployment_handle("ExtractorModel", app_name=cfg.app_name)
    stats = model.stats.remote().result(timeout_s=30)
    assert stats["texts"] >= N_CONCURRENT_REQUESTS
    if cfg.engine == "vllm":  # each request went to the engine, which decoded them together
        assert stats["engine"] == "vllm" and stats["largest_batch"] > 1
        model.check_health.remote().result(timeout_s=30)  # the engine's health: alive
        return
    assert stats["max_batch_size"] == 8 and stats["batch_wait_timeout_s"] == 0.02
    assert 1 < stats["largest_batch"] <= 8  # concurrent requests really shared batches


def test_shipped_serve_configs_validate():
    from ray.serve.schema import ServeDeploySchema

    from giellm_ray.config import load_config
    from giellm_ray.serve.app import config_from_args
    from giellm_ray.serve.config import ServeConfig

    deploy = ServeDeploySchema.parse_obj(
        yaml.safe_load((SERVE_CONFIGS / "deploy.yaml").read_text())
    )
    app = deploy.applications[0]
    assert app.import_path == "giellm_ray.serve.app:build_app"
    assert deploy.http_options.host == "0.0.0.0"  # a cluster deployment (test_serve_gpu_config)
    # config: is absolute inside the image (/home/ray/giellm-ray/...); here it is the clone's file.
    args = {**app.args, "config": str(ROOT / app.args["config"].split("/giellm-ray/", 1)[1])}
    cfg = config_from_args(args)
    assert cfg.model.name_or_path == app.args["model"]
    assert cfg == load_config(ServeConfig, args["config"], [f"model.name_or_path={args['model']}"])


# Hostile input sent while good requests run (issue 13): each is refused (HTTP) or fails alone
# (rows given straight to the model deployment, past the HTTP checks); the good requests get
# exactly the answer they get when sent alone.
HOSTILE_HTTP = [
    ("/v1/extract", b'{"text": "\\ud800", "dataset": "SCNM"}', 422),
    ("/v1/extract", b'{"text": "\\u682a\\u0000", "dataset": "SCNM"}', 422),
    ("/v1/extract", b'{"text": "\\u682a", "dataset": "SCNM", "max_new_tokens": "5"}', 422),
    ("/v1/extract", b'{"text": "\\u682a", "dataset": "SCNM", "max_new_tokens": true}', 422),
    ("/v1/extract", b'{"text": 5, "dataset": "SCNM"}', 422),
    ("/v1/extract", b'{"text": "\xff\xfe", "dataset": "SCNM"}', 400),
    (
        "/v1/extract/batch",
        b'{"requests": [{"text": "\\u682a", "dataset": "SCNM"}, '
        b'{"text": "a\\udfffb", "dataset": "SCNM"}]}',
        422,
    ),
]
HOSTILE_ROWS = [
    {"text": "\ud800", "dataset": "SCNM"},
    {"text": "株式会社\udfff東京", "dataset": "SCPOS:RW"},
    {"text": 5, "dataset": "SCNM"},
    {"text": "株式会社", "dataset": ["SCNM"]},
    {"text": "株式会社", "dataset": "SCNM", "max_new_tokens": "5"},
]
INTERNAL_WORDS = ("Traceback", "TypeError", "TextEncodeInput", "Exception", "KeyError")


@pytest.mark.timeout(300)
def test_hostile_requests_leave_concurrent_good_ones_untouched(service, stockmark_records):
    from ray import serve

    cfg, client = service
    texts = [r["text"] for r in take(stockmark_records, 315)[300:]]
    fields = ("tl_label", "items", "raw_output", "error", "num_generated_tokens")

    def good_body(i: int) -> dict:
        return {"text": texts[i], "dataset": ("SCNM", "SCPOS:RW")[i % 2]}

    alone = []
    for i in range(len(texts)):
        r = client.post("/v1/extract", json=good_body(i))
        assert r.status_code == 200, r.text
        alone.append({f: r.json()[f] for f in fields})
    model = serve.get_deployment_handle("ExtractorModel", app_name=cfg.app_name)

    async def run() -> list[tuple[str, object, object]]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120.0) as ac:
            hostile = [
                (
                    "http",
                    status,
                    ac.post(url, content=raw, headers={"content-type": "application/json"}),
                )
                for url, raw, status in HOSTILE_HTTP
            ]
            hostile += [
                (
                    "row",
                    row,
                    asyncio.to_thread(lambda r=row: model.extract.remote(r).result(timeout_s=120)),
                )
                for row in HOSTILE_ROWS
            ]
            # A hostile call after each good one, so hostile rows share the good ones' batches.
            calls: list[tuple[str, object, object]] = []
            for i in range(len(texts)):
                calls.append(("good", i, ac.post("/v1/extract", json=good_body(i))))
                calls += hostile[i : i + 1]
            outs = await asyncio.gather(*(c for _, _, c in calls))
            return [(kind, key, out) for (kind, key, _), out in zip(calls, outs, strict=True)]

    for kind, key, out in asyncio.run(run()):
        if kind == "good":
            assert out.status_code == 200, out.text
            assert {f: out.json()[f] for f in fields} == alone[key]
        elif kind == "http":
            assert out.status_code == key and out.json()["request_id"], out.text
        else:  # a hostile row given straight to the model: an output row with its own error
            assert out["error"] and out["prediction"] is None, (key, out)
        if kind != "row":
            assert not any(w in out.text for w in INTERNAL_WORDS), out.text


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("service", ["vllm"], indirect=True)
def test_a_dead_vllm_engine_ends_its_replica_and_the_text_is_retried(service, stockmark_records):
    """Runs last (it replaces the replica). The engine core of the vLLM replica is killed: the
    next text finds the engine dead, the replica exits, the ingress resends the text to the
    replacement and the client gets the same 200 answer, from a new replica process."""
    import signal

    import psutil
    from ray import serve

    cfg, client = service
    body = {"text": take(stockmark_records, 501)[500]["text"], "dataset": "SCNM"}
    before = client.post("/v1/extract", json=body)
    model = serve.get_deployment_handle("ExtractorModel", app_name=cfg.app_name)
    pid = model.stats.remote().result(timeout_s=30)["pid"]
    cores = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.name().startswith("VLLM::EngineCore")
    ]
    assert len(cores) == 1, cores  # the one replica's engine (this session's Ray, our children)
    cores[0].send_signal(signal.SIGKILL)
    psutil.wait_procs(cores, timeout=30)
    after = client.post("/v1/extract", json=body, timeout=240)
    assert after.status_code == 200, after.text
    fields = ("tl_label", "items", "raw_output", "error", "num_generated_tokens")
    assert {f: after.json()[f] for f in fields} == {f: before.json()[f] for f in fields}
    assert model.stats.remote().result(timeout_s=30)["pid"] != pid
