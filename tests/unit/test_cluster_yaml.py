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
    schema_path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(cfg, schema)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]


def test_docker_image_is_current_ray_with_cuda(cfg):
    images = [v for k, v in cfg["docker"].items() if k.endswith("image")]
    assert images
    for image in images:
        assert image.startswith("rayproject/ray:"), image
        assert "ray-ml" not in image
        version, *flavour = image.split(":", 1)[1].split("-")
        assert re.fullmatch(r"2\.\d+\.\d+", version), image
        assert int(version.split(".")[1]) >= 50
    worker_image = cfg["docker"].get("worker_image", cfg["docker"]["image"])
    assert re.search(r"-(gpu|cu\d+)$", worker_image), worker_image


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


def test_setup_installs_this_project_with_gpu_extras(cfg):
    mounts = cfg["file_mounts"]
    target = next(remote for remote, local in mounts.items() if local in (".", "./"))
    installs = [c for c in cfg["setup_commands"] if "pip install" in c]
    assert any(f"-e '{target}[gpu]'" in c or f'-e "{target}[gpu]"' in c for c in installs), installs
    assert (ROOT / "pyproject.toml").read_text().count("gpu = [") == 1
    assert "head_start_ray_commands" in cfg and any("--head" in c for c in cfg["head_start_ray_commands"])
