"""``giellm serve``'s driver on the session cluster: it comes up on a loopback port with the shipped
config and the default (grammar-constrained) Extractor, answers, and on stop drains and deletes the
application. Runs the blocking ``serve_forever`` in a thread with a stop event (what SIGTERM sets)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.ray
CONFIG = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "serve" / "giellm.yaml"


@pytest.mark.timeout(300)
def test_serve_forever_answers_then_stops_gracefully(ray_cluster, tiny_model_dir):
    from ray import serve

    from giellm_ray.config import load_config
    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.serve.config import ServeConfig
    from giellm_ray.serve.driver import serve_forever

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(
        ServeConfig,
        str(CONFIG),
        [
            f"model.name_or_path={tiny_model_dir}",
            f"http.port={port}",
            "app_name=giellm-driver",
            "generation.max_new_tokens=48",
            "replica.num_cpus=0.5",
            "replica.max_replicas=1",
            "replica.graceful_shutdown_timeout_s=5",
        ],
    )
    stop, codes = threading.Event(), []
    thread = threading.Thread(target=lambda: codes.append(serve_forever(cfg, stop=stop)))
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and thread.is_alive(), "service never came up"
            time.sleep(1)
        text = "山田太郎は大阪大学を卒業し、トヨタ自動車に入社した。"
        r = httpx.post(f"{url}/v1/extract", json={"text": text, "dataset": "SCNM"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        # Constrained decoding: even a random model starts with a real TL label and the IW.
        assert body["tl_label"] in DEFAULT_REGISTRY["SCNM"].tl_labels
        assert body["raw_output"].startswith(f"<{body['tl_label']}>固有表現抽出")
        assert all(text[it["start"] : it["end"]] == it["span"] for it in body["items"])
    finally:
        stop.set()
        thread.join(timeout=120)
    assert not thread.is_alive() and codes == [0]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)
    assert "giellm-driver" not in serve.status().applications
