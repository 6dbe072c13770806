"""The Serve application with two LoRA adapters (HF engine, the config's own factory, constrained)
on loopback: ``GET /v1/adapters`` lists them, a request's ``adapter`` picks one (concurrent
requests over both adapters and the base, batched together by the replica, each get what their
adapter gives alone), an unknown adapter is a 422 and the service keeps answering."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from giellm_ray import schema as S

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(420)
def test_serving_with_adapters(ray_cluster, tiny_model_dir, stockmark_records, tmp_path):
    from ray import serve

    from giellm_ray.generation.build import build_extractor
    from giellm_ray.model.tiny_lora import build_tiny_adapter
    from giellm_ray.serve.app import build_app
    from giellm_ray.serve.config import ServeConfig

    adapters = {
        n: build_tiny_adapter(tiny_model_dir, str(tmp_path / n), seed=k + 1)
        for k, n in enumerate(("a", "b"))
    }
    port = _free_port()
    cfg = ServeConfig.model_validate(
        {
            "model": {"name_or_path": tiny_model_dir},
            "adapters": adapters,
            "generation": {"max_new_tokens": 24},
            "app_name": "giellm-adapters",
            "http": {"port": port},
            "replica": {"num_cpus": 0.5, "graceful_shutdown_timeout_s": 5},
            "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
        }
    )
    texts = [r["text"] for r in stockmark_records[:6]]
    cases = [(t, [None, "a", "b"][i % 3]) for i, t in enumerate(texts)]
    local = build_extractor("hf", cfg.model, cfg.generation, adapters=adapters)
    want = local.extract([{S.TEXT: t, S.DATASET: "SCNM", S.ADAPTER: a} for t, a in cases])

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
        base_url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base_url, timeout=120.0) as client:
            assert client.get("/v1/adapters").json()["adapters"] == ["a", "b"]
            r = client.post(
                "/v1/extract", json={"text": texts[0], "dataset": "SCNM", "adapter": "missing"}
            )
            assert r.status_code == 422, r.text
            assert r.json()["detail"] == "unknown adapter 'missing'; known adapters: a, b"

        async def ask_all():
            async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/v1/extract",
                            json={"text": t, "dataset": "SCNM", **({"adapter": a} if a else {})},
                        )
                        for t, a in cases
                    )
                )

        answers = asyncio.run(ask_all())
        for (_, name), r, w in zip(cases, answers, want, strict=True):
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["adapter"] == name
            assert (body["raw_output"], body["num_generated_tokens"]) == (
                w[S.PREDICTION],
                w[S.NUM_GENERATED_TOKENS],
            ), name
        # The adapters matter: the same text answers differently under each.
        with httpx.Client(base_url=base_url, timeout=120.0) as client:
            outs = {
                a: client.post(
                    "/v1/extract",
                    json={"text": texts[0], "dataset": "SCNM", **({"adapter": a} if a else {})},
                ).json()["raw_output"]
                for a in (None, "a", "b")
            }
        assert len(set(outs.values())) > 1, outs
    finally:
        serve.shutdown()
