"""``cluster.yaml`` read as data: what ``ray up`` needs, 8 x 80 GB GPU workers, S3, this package.

Validated against the cluster-launcher JSON schema that ships inside the installed Ray (found
without importing ray), then checked for the choices the README relies on.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# GPU instance types with 8 x 80 GB GPUs (A100-80GB / H100 / H200 class) and their vCPUs.
EIGHT_BY_80GB = {"p4de.24xlarge": 96, "p5.48xlarge": 192, "p5e.48xlarge": 192, "p5en.48xlarge": 192}


@pytest.fixture(scope="module")
def cfg() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))


def test_matches_ray_cluster_launcher_schema(cfg):
    import jsonschema

    spec = importlib.util.find_spec("ray")
    schema_path = (
        Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    )
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(cfg, schema)
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "max_workers",
    ):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]


def test_docker_image_is_built_from_current_ray_with_cuda(cfg):
    """Nodes run the image of ./Dockerfile (pushed to the user's registry), which is FROM a current
    rayproject/ray CUDA image; tests/unit/test_gpu_stack.py checks the versions agree."""
    from_lines = [
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM ")
    ]
    assert len(from_lines) == 1
    base = from_lines[0]
    assert base.startswith("rayproject/ray:") and "ray-ml" not in base, base
    version, *_ = base.split(":", 1)[1].split("-")
    assert re.fullmatch(r"2\.\d+\.\d+", version) and int(version.split(".")[1]) >= 50, base
    assert re.search(r"-cu\d+$", base), base
    images = [v for k, v in cfg["docker"].items() if k.endswith("image")]
    assert images
    for image in images:
        assert image.split(":", 1)[1].startswith(base.split(":", 1)[1]), (image, base)


def test_cpu_head_and_autoscaled_8x80gb_gpu_workers(cfg):
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("p", "g"))
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU") == 8]
    assert len(gpu) == 1
    worker = gpu[0]
    instance = worker["node_config"]["InstanceType"]
    assert instance in EIGHT_BY_80GB, instance
    assert worker["resources"]["CPU"] == EIGHT_BY_80GB[instance]
    assert 0 <= worker["min_workers"] < worker["max_workers"] <= cfg["max_workers"]
    assert cfg["idle_timeout_minutes"] > 0


def test_nodes_reach_s3_through_an_instance_profile(cfg):
    for name, node in cfg["available_node_types"].items():
        arn = node["node_config"]["IamInstanceProfile"]["Arn"]
        assert arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn, name
    env = " ".join(cfg["docker"]["run_options"])
    assert re.search(r"GIELLM_STORAGE=s3://\S+", env)


def test_every_raylet_starts_with_our_ray_environment(cfg):
    """``ray start`` runs inside the container on every node, so the container's environment is
    the raylet's: a dead worker's process group (its vLLM engine core) is killed."""
    from giellm_ray.ray_session import RAYLET_ENV

    options = cfg["docker"]["run_options"]
    for key, value in RAYLET_ENV.items():
        assert f"--env {key}={value}" in options
    assert not any("subreaper" in o for o in options)


def test_nodes_pull_the_baked_image_and_install_nothing(cfg):
    installs = [
        c
        for key in ("setup_commands", "head_setup_commands", "worker_setup_commands")
        for c in cfg.get(key, [])
        if "pip install" in c
    ]
    assert installs == [], "the image carries the stack; nothing is pip-installed per node"
    registry = cfg["docker"]["image"].split("/", 1)[0]
    assert any("docker login" in c and registry in c for c in cfg["initialization_commands"])
    assert "--gpus all" in cfg["docker"]["worker_run_options"]
    assert "--gpus all" not in cfg["docker"].get("head_run_options", [])  # the head has no GPU
    from giellm_ray.model.cache import NVME_ROOTS  # where the model cache looks for NVMe

    mounts = [o.split(":")[-1] for o in cfg["docker"]["worker_run_options"] if o.startswith("-v ")]
    assert set(mounts) & set(NVME_ROOTS), mounts
    assert (ROOT / "pyproject.toml").read_text().count("gpu = [") == 1
    assert "head_start_ray_commands" in cfg and any(
        "--head" in c for c in cfg["head_start_ray_commands"]
    )
