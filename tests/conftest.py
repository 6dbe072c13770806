"""Shared test fixtures: the real Stockmark data (all of it from ../shared, else the 100-sentence
excerpt in tests/assets/stockmark/), a tiny random-init Llama with a locally trained tokenizer,
and one session-scoped local Ray cluster."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_NER = ROOT.parent / "shared" / "data" / "stockmark-ner-wikipedia" / "ner.json"
ASSETS = Path(__file__).resolve().parent / "assets"
EXCERPT_NER = ASSETS / "stockmark" / "ner_excerpt.json"  # CC-BY-SA 3.0, see its README.md

# A few sentences so the tiny tokenizer knows Japanese text and every label/IW string.
TOKENIZER_SEED_TEXTS = [
    "レッドフォックス株式会社は、東京都千代田区に本社を置くITサービス企業である。",
    "松友美佐紀は、日本のバドミントン選手。",
    "この商品はとても良いです。値段も安くて満足しています。",
    "画面が暗くて使いにくい。すぐに壊れたので残念です。",
    "山田太郎は大阪大学を卒業し、トヨタ自動車に入社した。",
]


def _stockmark() -> list[dict]:
    """``GIELLM_TEST_EXCERPT=1`` uses the excerpt even where ../shared exists (a clone's view)."""
    full = SHARED_NER.exists() and os.environ.get("GIELLM_TEST_EXCERPT") != "1"
    path = SHARED_NER if full else EXCERPT_NER
    return json.loads(path.read_text(encoding="utf-8"))


def take(records: list, n: int) -> list:
    """The first ``n`` of ``records``, repeated as needed (the excerpt is shorter than ``n``)."""
    return (records * (n // max(1, len(records)) + 1))[:n]


@pytest.fixture(scope="session")
def stockmark_records() -> list[dict]:
    """Real Stockmark NER records: the 4,821 of ../shared (CI has them), else the 100 of the
    shipped excerpt (a user's clone); tests take counts from ``len()``, never a constant."""
    return _stockmark()


def _tokenizer_texts() -> list[str]:
    from giellm_ray.model.tiny import tokenizer_texts

    return tokenizer_texts([*TOKENIZER_SEED_TEXTS, *(r["text"] for r in _stockmark())])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random-init tiny Llama + byte-level BPE tokenizer saved in the Hugging Face layout."""
    from giellm_ray.model.tiny import TinyConfig, build_tiny

    out = tmp_path_factory.mktemp("tiny-model")
    return build_tiny(str(out), _tokenizer_texts(), TinyConfig(vocab_size=1500))


@pytest.fixture(scope="session")
def tiny_vllm_model_dir(tmp_path_factory) -> str:
    """The tiny model with 2 attention heads (head_dim 32, same size otherwise): vLLM's CPU
    attention takes head sizes 32, 64, 80, ..., not the preset's 16."""
    from giellm_ray.model.tiny import TinyConfig, build_tiny

    out = tmp_path_factory.mktemp("tiny-vllm-model")
    return build_tiny(
        str(out), _tokenizer_texts(), TinyConfig(vocab_size=1500, num_attention_heads=2)
    )


# vLLM on this CPU: no torch.compile (start-up ~20 s instead of ~60 s), a small share of the RAM
# for weights + KV cache (0.10 of 24 GB leaves ~1.2 GB of KV: ~300k tokens of the tiny model).
VLLM_TEST_SETTINGS = {
    "enforce_eager": True,
    "gpu_memory_utilization": 0.1,
    "max_num_seqs": 64,
    "max_num_batched_tokens": 4096,
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 (loopback only) with bucket ``giellm-test``.

    Sets ``AWS_ENDPOINT_URL`` and dummy credentials for this process; ``ray_cluster`` forwards
    them to Ray workers. Yields the endpoint URL.
    """
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in s3_env(endpoint).items():
        os.environ[key] = value
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket="giellm-test"
    )
    yield endpoint
    server.stop()


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One local Ray cluster for the whole session (Ray's first init takes seconds).

    Workers get the loopback S3 endpoint and credentials of ``s3_server`` through the runtime env.
    Started as ``connect_ray`` starts a local Ray: with ``RAYLET_ENV`` in the raylet's environment
    (a dead worker's process group is killed).
    """
    import ray

    from giellm_ray.ray_session import RAYLET_ENV

    if not ray.is_initialized():
        os.environ.update(RAYLET_ENV)
        env = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", **s3_env(s3_server)}
        ray.init(
            num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env}
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests skip, with the reason, where CUDA is absent (the marker's contract)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); this machine has none")
    for item in gpu_items:
        item.add_marker(skip)


def without_scores(out: dict) -> dict:
    """A scored row with its confidence scores blanked: what two runs must agree on exactly
    (the scores themselves carry the float noise of the kernels and batch shapes that made them)."""
    from giellm_ray import schema

    items = [
        {k: v for k, v in it.items() if k != schema.SCORE} for it in out[schema.PRED_ITEMS] or []
    ]
    return {**out, schema.TL_SCORE: None, schema.PRED_ITEMS: items}


def scores_of(out: dict) -> list:
    """The row's ``tl_score`` and its items' ``score`` values, in order."""
    from giellm_ray import schema

    return [out[schema.TL_SCORE], *(it.get(schema.SCORE) for it in out[schema.PRED_ITEMS] or [])]


def scores_close(a: dict, b: dict, rel: float) -> bool:
    """Both rows scored the same items (null where the other is null), values within ``rel``."""
    sa, sb = scores_of(a), scores_of(b)
    if [x is None for x in sa] != [x is None for x in sb]:
        return False
    return all(
        abs(x - y) <= rel * max(abs(x), abs(y)) + 1e-9
        for x, y in zip(sa, sb, strict=True)
        if x is not None
    )
