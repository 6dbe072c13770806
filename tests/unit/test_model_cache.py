"""One download per node: six processes localize one ``s3://`` model at once; a dead holder's lock.

A moto S3 server runs in this process behind a small WSGI wrapper that counts object GETs (the
server's own request log, no mock of our code). Six fresh interpreters import everything, wait on
a start file, then call ``localize`` + ``load_model`` on the same prefix together: every object
must be fetched exactly once, and all six must load identical weights from the one cache dir.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from conftest import TOKENIZER_SEED_TEXTS, s3_env

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "giellm-cache-test"
N_PROCS = 6

CHILD = r"""
import hashlib, json, logging, os, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
from giellm_ray.model.loader import ModelConfig, load_model, localize
import torch
uri, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
path = localize(uri)
model = load_model(ModelConfig(name_or_path=uri, dtype="float32"), device="cpu")
h = hashlib.sha256()
for name, t in sorted(model.state_dict().items()):
    h.update(name.encode()); h.update(t.contiguous().numpy().tobytes())
print(json.dumps({"path": path, "weights": h.hexdigest()}), flush=True)
"""

HOLD_LOCK = r"""
import os, sys, time
from giellm_ray.model.cache import node_lock
lock, junk = sys.argv[1], sys.argv[2]
with node_lock(lock):
    os.makedirs(junk)
    open(os.path.join(junk, "model.safetensors"), "wb").write(b"half a file")
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def counting_s3():
    """A moto S3 server on 127.0.0.1 that counts GETs per object path; yields (endpoint, counts)."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    app = DomainDispatcherApplication(create_backend_app)

    def counting_app(environ, start_response):
        parts = [p for p in environ.get("PATH_INFO", "").split("/") if p]
        if environ["REQUEST_METHOD"] == "GET" and len(parts) >= 2:  # an object, not a listing
            with lock:
                counts["/".join(parts)] += 1
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, counting_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket=BUCKET)
    yield endpoint, counts
    server.shutdown()


def _upload_model(endpoint: str, local: str, key_prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    keys = []
    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            key = f"{key_prefix}/{path.relative_to(local).as_posix()}"
            s3.upload_file(str(path), BUCKET, key)
            keys.append(key)
    return keys


def _env(endpoint: str, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        **s3_env(endpoint),
        "GIELLM_MODEL_CACHE": str(cache),
        "PYTHONPATH": str(ROOT),
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture(scope="module")
def model_on_s3(counting_s3, tmp_path_factory):
    """A tiny Llama (~4.6M params, ~18 MB in fp32) uploaded to the counting server."""
    from giellm_ray.model.tiny import TinyConfig, build_tiny

    endpoint, _ = counting_s3
    local = build_tiny(
        str(tmp_path_factory.mktemp("tiny-for-s3")),
        TOKENIZER_SEED_TEXTS,
        TinyConfig(
            vocab_size=1500,
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
        ),
    )
    prefix = f"models/tiny-{uuid.uuid4().hex[:8]}"
    keys = _upload_model(endpoint, local, prefix)
    return f"s3://{BUCKET}/{prefix}", keys, local


@pytest.mark.slow  # six fresh interpreters importing torch at once: minutes on 2 shared cores
def test_six_processes_download_once_and_load_the_same_weights(counting_s3, model_on_s3, tmp_path):
    endpoint, counts = counting_s3
    uri, keys, _ = model_on_s3
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, uri, str(go)],
            cwd=tmp_path,
            env=_env(endpoint, cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(N_PROCS)
    ]
    try:
        for p in procs:  # all six have imported torch/transformers and sit at the barrier
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        go.touch()
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    logs = "".join(err for _, err in outs)

    assert {counts[f"{BUCKET}/{k}"] for k in keys} == {1}, dict(counts)  # one GET per object
    assert logs.count(": downloading s3://") == 1, logs
    assert len({r["path"] for r in results}) == 1
    assert len({r["weights"] for r in results}) == 1
    target = Path(results[0]["path"])
    assert target.parent == cache
    manifest = json.loads((target / ".complete").read_text())
    assert sorted(manifest["files"]) == sorted(k.split("/", 2)[2] for k in keys)
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_a_killed_downloader_leaves_no_stale_lock(
    counting_s3, model_on_s3, tmp_path, monkeypatch, caplog
):
    from giellm_ray.model import cache as model_cache

    endpoint, _ = counting_s3
    uri, keys, local = model_on_s3
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / hashlib.sha1(uri.encode()).hexdigest()[:16]
    junk = Path(f"{target}.tmp-999999-deadbeef")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, f"{target}.lock", str(junk)],
        env=_env(endpoint, cache),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGKILL)  # dies mid-"download", holding the lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    for key, value in {**s3_env(endpoint), "GIELLM_MODEL_CACHE": str(cache)}.items():
        monkeypatch.setenv(key, value)

    with caplog.at_level(logging.INFO, logger=model_cache.__name__):
        path = model_cache.localize(uri)
    assert path == str(target)
    assert "waiting for" not in caplog.text  # the dead holder's lock died with it
    assert "left by a download that died" in caplog.text
    assert not junk.exists()
    assert model_cache.is_complete(path)
    for rel in json.loads((target / ".complete").read_text())["files"]:
        assert (target / rel).read_bytes() == (Path(local) / rel).read_bytes()


def test_verify_names_a_missing_or_short_object(tmp_path):
    from giellm_ray.model.cache import verify

    (tmp_path / "config.json").write_text("{}")
    verify({"config.json": 2}, str(tmp_path))
    with pytest.raises(OSError, match="model.safetensors is missing"):
        verify({"config.json": 2, "model.safetensors": 10}, str(tmp_path))
    with pytest.raises(OSError, match="config.json has 2 bytes, S3 lists 3"):
        verify({"config.json": 3}, str(tmp_path))


def test_cache_dir_prefers_the_override(monkeypatch, tmp_path):
    from giellm_ray.model.cache import NVME_ROOTS, model_cache_dir

    monkeypatch.setenv("GIELLM_MODEL_CACHE", str(tmp_path / "c"))
    assert model_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("GIELLM_MODEL_CACHE")
    expected = next(
        (
            os.path.join(r, "giellm", "models")
            for r in NVME_ROOTS
            if os.path.isdir(r) and os.access(r, os.W_OK)
        ),
        os.path.expanduser("~/.cache/giellm/models"),
    )
    assert model_cache_dir() == expected


def test_local_paths_and_hub_ids_pass_through():
    from giellm_ray.model.loader import localize

    assert localize("/models/x") == "/models/x"
    assert localize("meta-llama/Llama-2-13b-hf") == "meta-llama/Llama-2-13b-hf"
