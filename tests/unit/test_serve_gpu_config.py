"""The GPU serve config and the cluster deploy file: they load, validate, and fit 80 GB.

``giellm-gpu.yaml`` goes through the same ``load_config(ServeConfig, ...)`` as ``giellm serve``;
its batch size is checked against the KV-cache arithmetic written in the file, so raising the
batch (or the longest text) without redoing the arithmetic fails here. ``deploy.yaml`` is
validated with Ray Serve's own schema, and its ``config:`` path must be absolute inside the image
(the Dockerfile's ``GIELLM_HOME``) and name a file that ships in this repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from giellm_ray.config import load_config
from giellm_ray.serve.config import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "jobs" / "configs" / "serve"
GPU_CONFIG = SERVE / "giellm-gpu.yaml"

# Llama-2-13B / llm-jp-13b in bf16 on one 80 GB GPU (the arithmetic in giellm-gpu.yaml).
WEIGHTS_GB = 13.0e9 * 2 / 1e9
HEADROOM_GB = 6.0
GPU_GB = 80.0
KV_MB_PER_TOKEN = 2 * 40 * 5120 * 2 / 1e6
TOKENS_PER_CHAR = 1.3  # Llama-2's tokenizer on Japanese text
PROMPT_LABELS, MAX_OUTPUT = 40, 224


def test_gpu_serve_config_loads_and_validates():
    cfg = load_config(ServeConfig, str(GPU_CONFIG))
    assert cfg.replica.num_gpus == 1 and cfg.model.dtype == "bfloat16"
    assert cfg.http.host == "0.0.0.0"
    assert cfg.generation.batch_size >= cfg.batching.max_batch_size
    assert cfg.replica.max_ongoing_requests >= cfg.replica.target_ongoing_requests
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    gpus = sum(
        t["resources"].get("GPU", 0) * t.get("max_workers", 0)
        for t in cluster["available_node_types"].values()
    )
    assert 1 <= cfg.replica.min_replicas <= cfg.replica.max_replicas <= gpus


def test_gpu_serve_batch_fits_the_kv_cache_at_the_longest_text():
    cfg = load_config(ServeConfig, str(GPU_CONFIG))
    longest_row = cfg.http.max_text_chars * TOKENS_PER_CHAR + PROMPT_LABELS + MAX_OUTPUT
    kv_gb = cfg.batching.max_batch_size * longest_row * KV_MB_PER_TOKEN / 1e3
    assert WEIGHTS_GB + HEADROOM_GB + kv_gb <= GPU_GB, kv_gb


def test_gpu_serve_config_runs_vllm_sized_for_80_gb():
    cfg = load_config(ServeConfig, str(GPU_CONFIG))
    v = cfg.engine, cfg.vllm
    assert v[0] == "vllm" and v[1].tensor_parallel_size == cfg.replica.num_gpus == 1
    kv_gb = v[1].gpu_memory_utilization * GPU_GB - WEIGHTS_GB - HEADROOM_GB / 2
    typical_row = 450  # tokens: a 50-200 character sentence, its prompt and output
    assert kv_gb / KV_MB_PER_TOKEN * 1e3 >= 64 * typical_row  # the autoscaling target fits
    # Every request a replica accepts goes into the engine: room for a full running set.
    assert cfg.replica.max_ongoing_requests >= v[1].max_num_seqs
    assert cfg.replica.target_ongoing_requests <= v[1].max_num_seqs


def test_deploy_file_is_a_valid_cluster_deployment():
    from ray.serve.config import ProxyLocation
    from ray.serve.schema import ServeDeploySchema

    from giellm_ray.serve.app import config_from_args

    deploy = ServeDeploySchema.parse_obj(yaml.safe_load((SERVE / "deploy.yaml").read_text()))
    assert deploy.proxy_location == ProxyLocation.EveryNode
    assert deploy.http_options.host == "0.0.0.0"
    (app,) = deploy.applications
    assert app.import_path == "giellm_ray.serve.app:build_app"
    home = re.search(r"^ENV GIELLM_HOME=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)[1]
    path = app.args["config"]
    assert path.startswith(home + "/"), f"{path} is not inside the image's {home}"
    in_repo = ROOT / path[len(home) + 1 :]
    assert in_repo.is_file()
    cfg = config_from_args({**app.args, "config": str(in_repo)})
    assert cfg.model.name_or_path == app.args["model"] and cfg.replica.num_gpus == 1
