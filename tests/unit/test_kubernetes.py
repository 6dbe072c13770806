"""``deploy/kubernetes/``: the KubeRay manifests, read as data (there is no Kubernetes here).

What is validated:
- each manifest is what ``deploy/kubernetes/generate.py`` writes from today's sources (a stale
  file fails and names the command that regenerates it);
- each ``RayJob`` / ``RayService`` against the ``ray.io/v1`` OpenAPI schema of KubeRay v1.7.0's
  CRDs (vendored in ``tests/assets/kuberay/``), made strict as ``kubectl apply``'s server-side
  field validation is: an unknown field is an error, not silently pruned;
- every embedded pod template, and the ServiceAccount, against the Kubernetes 1.33 core schemas
  that ``kubernetes-validate`` ships (strict: unknown fields are errors);
- every entrypoint through ``giellm``'s own argument parser, and the configs and ``--set`` keys it
  names through the typed config loader; the RayService's Serve application through
  ``build_app``'s own argument reader, and its readiness path against the app's routes;
- image, ``rayVersion``, GPUs, cache, credentials, the reaper flag and the drain times against the
  pins and configs they come from.

Not validated here: anything a cluster decides (scheduling, the NVIDIA device plugin, IRSA, the
KubeRay operator's own defaulting and webhooks, pulling the image).
"""

from __future__ import annotations

import copy
import functools
import importlib
import importlib.util
import os
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from test_gpu_stack import base_image, gpu_pins

from giellm_ray.cli import build_parser
from giellm_ray.config import load_config
from giellm_ray.ray_session import RAYLET_ENV
from giellm_ray.score.config import ScoreConfig
from giellm_ray.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
CRDS = ROOT / "tests" / "assets" / "kuberay"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
K8S_VERSION = "1.33"


def _generator():
    spec = importlib.util.spec_from_file_location("giellm_kube_generate", KUBE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _generator()
NAMES = list(GEN.manifests())


def load(name: str) -> dict:
    return yaml.safe_load((KUBE / name).read_text(encoding="utf-8"))


def ray_manifests() -> list[str]:
    return [n for n in NAMES if load(n)["kind"] in CRD_FILES]


def _strict(node):
    """The CRD schema with ``additionalProperties: false`` wherever it lists properties and does
    not keep unknown fields: what the API server's strict field validation enforces."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@functools.cache
def crd_validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on 1.4 MB
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(encoding="utf-8"), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (v,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert v["served"] and v["storage"], f"{kind} {version} is not KubeRay's storage version"
    return jsonschema.Draft7Validator(_strict(v["schema"]["openAPIV3Schema"]))


def pod_templates(manifest: dict) -> dict[str, dict]:
    spec = manifest["spec"]
    cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
    out = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        out[group["groupName"]] = group["template"]
    if "submitterPodTemplate" in spec:
        out["submitter"] = spec["submitterPodTemplate"]
    return out


def k8s_validate(resource: dict) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def test_manifests_are_generated_from_todays_sources():
    on_disk = {p.name for p in KUBE.glob("*.yaml")}
    assert on_disk == set(NAMES), "manifests not written by generate.py (or missing)"
    for name, (manifest, sources) in GEN.manifests().items():
        assert (KUBE / name).read_text(encoding="utf-8") == GEN.render(manifest, sources), (
            f"{name} is stale: run python deploy/kubernetes/generate.py"
        )
    assert GEN.main(["--check"]) == 0


@pytest.mark.parametrize("name", ray_manifests())
def test_manifest_matches_the_kuberay_crd(name):
    manifest = load(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    errors = sorted(crd_validator(manifest["kind"]).iter_errors(manifest), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_strict_crd_schema_catches_typos_and_wrong_types():
    """The validation above can fail: an unknown field and a mistyped value are both refused."""
    job = load("rayjob-score.yaml")
    validator = crd_validator("RayJob")
    validator.validate(job)  # the schema is not mutated by validation: the cached one is reused
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 1
    wrong = copy.deepcopy(job)
    wrong["spec"]["backoffLimit"] = "2"
    pod_typo = copy.deepcopy(job)
    pod_typo["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["container"] = []
    for bad in (typo, wrong, pod_typo):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


@pytest.mark.parametrize("name", ray_manifests())
def test_pod_templates_match_the_kubernetes_core_schemas(name):
    for role, template in pod_templates(load(name)).items():
        k8s_validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": f"{name.removesuffix('.yaml')}-{role}"},
                "template": template,
            }
        )


def test_service_account_matches_the_core_schema_and_names_an_irsa_role():
    account = load("serviceaccount.yaml")
    k8s_validate(account)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == GEN.IRSA_ROLE
    for name in ray_manifests():
        for template in pod_templates(load(name)).values():
            assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    bad = copy.deepcopy(load("rayjob-score.yaml"))
    template = bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["resource"] = {}  # typo of `resources`
    with pytest.raises(jsonschema.ValidationError):
        k8s_validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "x"},
                "template": template,
            }
        )


def _entrypoint_args(manifest: dict):
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[0] == "giellm", argv
    env = {
        e["name"]: e["value"]
        for e in pod_templates(manifest)["head"]["spec"]["containers"][0]["env"]
    }
    argv = [os.path.expandvars(a.replace("$GIELLM_STORAGE", env["GIELLM_STORAGE"])) for a in argv]
    assert not any("$" in a for a in argv), argv
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse's way of refusing a command line
        pytest.fail(f"giellm refuses {shlex.join(argv)} (exit {exc.code})")


def _config(path: str) -> str:
    local = GEN.repo(path)
    if not local.exists() and path == GEN.TRAIN_LORA:
        pytest.skip(f"{local.relative_to(ROOT)} is not in this checkout yet")
    assert local.exists(), path
    return str(local)


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith("rayjob-")])
def test_entrypoint_is_a_giellm_command_line_with_real_configs(name):
    manifest = load(name)
    args = _entrypoint_args(manifest)
    workers = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(
        int(g["replicas"])
        * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        for g in workers
    )
    if args.command == "train":
        cfg = load_config(TrainConfig, _config(args.config), args.set)
        assert cfg.use_gpu and cfg.storage_path.startswith("s3://")
        assert gpus == cfg.num_workers * cfg.resources_per_worker.get("GPU", 1)
    elif args.command == "score":
        from giellm_ray.score.cli import build_config

        args.config = _config(args.config)
        cfg = build_config(args)
        assert isinstance(cfg, ScoreConfig) and cfg.engine == "vllm"
        assert gpus == cfg.num_actors * cfg.num_gpus_per_actor
        assert cfg.output.startswith("s3://") and cfg.model.name_or_path.startswith("s3://")
    else:
        assert args.command == "mre", args.command
        train = load_config(TrainConfig, _config(args.config), args.overrides)
        score = load_config(ScoreConfig, _config(args.score_config), args.score_overrides)
        per_run = train.num_workers * train.resources_per_worker.get("GPU", 1)
        assert gpus == per_run * args.parallel  # one training run per node, side by side
        assert score.num_actors * score.num_gpus_per_actor <= gpus
        assert args.output.startswith("s3://") and args.data.startswith("s3://")


def test_rayservice_runs_our_serve_app_with_its_drain_and_health_check():
    from fastapi.testclient import TestClient

    from giellm_ray.formats import DEFAULT_REGISTRY
    from giellm_ray.serve.app import config_from_args
    from giellm_ray.serve.http import build_http_app

    service = load("rayservice-serve.yaml")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config == yaml.safe_load(GEN.repo(GEN.DEPLOY).read_text(encoding="utf-8"))
    (app,) = serve_config["applications"]
    module, attr = app["import_path"].split(":")
    assert getattr(importlib.import_module(module), attr).__name__ == "build_app"
    cfg = config_from_args({**app["args"], "config": str(GEN.repo(app["args"]["config"]))})
    assert cfg.engine == "vllm" and cfg.replica.min_replicas >= 2
    r = cfg.replica
    drain = r.graceful_shutdown_wait_loop_s + r.graceful_shutdown_timeout_s

    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert service["spec"]["upgradeStrategy"]["type"] == "NewCluster"  # zero-downtime upgrades
    assert service["spec"]["rayClusterDeletionDelaySeconds"] >= drain
    (group,) = cluster["workerGroupSpecs"]
    pod = group["template"]["spec"]
    per_pod = int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert group["minReplicas"] * per_pod >= r.min_replicas * r.num_gpus
    assert group["maxReplicas"] * per_pod >= r.max_replicas * r.num_gpus
    assert (group["maxReplicas"] - 1) * per_pod < r.max_replicas * r.num_gpus  # no idle node
    assert pod["terminationGracePeriodSeconds"] >= drain

    probe = pod["containers"][0]["readinessProbe"]["httpGet"]
    assert probe["port"] == cfg.http.port == serve_config["http_options"]["port"]
    http = build_http_app(DEFAULT_REGISTRY, cfg.http, "m", extract=None)
    route = probe["path"].removeprefix(app["route_prefix"].rstrip("/"))
    assert TestClient(http).get(route).status_code == 200


def test_image_and_ray_version_follow_the_pins():
    ray, py, major, minor = base_image()
    cluster_image = yaml.safe_load((ROOT / "cluster.yaml").read_text())["docker"]["image"]
    for name in ray_manifests():
        manifest = load(name)
        spec = manifest["spec"].get("rayClusterSpec") or manifest["spec"]["rayClusterConfig"]
        assert spec["rayVersion"] == gpu_pins()["ray"] == ray
        for template in pod_templates(manifest).values():
            for container in template["spec"]["containers"]:
                assert container["image"] == cluster_image, name
                assert (
                    container["image"].rsplit(":", 1)[1].startswith(f"{ray}-{py}-cu{major}{minor}")
                )


def test_pods_have_gpu_limits_the_nvme_cache_no_inline_keys_and_the_reaper_flag():
    gpus_per_node = GEN.gpu_node()["GPU"]
    for name in ray_manifests():
        for role, template in pod_templates(load(name)).items():
            spec = template["spec"]
            (container,) = spec["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            for key, value in RAYLET_ENV.items():
                assert env[key] == value, (name, role)
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            cache_mount = next(p for p in mounts if env["GIELLM_MODEL_CACHE"].startswith(p + "/"))
            assert "emptyDir" in volumes[mounts[cache_mount]], (name, role)
            assert not any(k.startswith("AWS_") for k in env), "S3 keys come from a Secret or IRSA"
            assert container["envFrom"] == [
                {"secretRef": {"name": GEN.S3_SECRET, "optional": True}}
            ]
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert limits == requests, (name, role)
            if role == "head":
                assert "nvidia.com/gpu" not in limits
            else:  # whole nodes, or one pod of part of a node with that share of its CPUs
                gpus = int(limits["nvidia.com/gpu"])
                if gpus != gpus_per_node:
                    workers = load(name)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
                    assert 1 <= gpus < gpus_per_node and len(workers) == 1, (name, role)
                    assert workers[0]["replicas"] == 1, (name, role)
                    assert int(limits["cpu"]) == GEN.POD_CPU * gpus // gpus_per_node, name


def test_only_the_values_a_user_must_edit_are_marked():
    placeholders = GEN.edits()
    for name in NAMES:
        header, body = GEN.HEADER.count("\n"), (KUBE / name).read_text(encoding="utf-8")
        for line in body.splitlines()[header:]:
            holds = [v for v in placeholders if v in line]
            if "EDIT" in line:
                # a placeholder, or deploy.yaml's own note on the line above its model path
                assert holds or line.strip().startswith("# EDIT: the exported model"), line
            elif holds:
                pytest.fail(f"{name}: placeholder not marked EDIT: {line.strip()}")
            assert not any(s in line for s in ("YOUR-", "123456789012")) or "EDIT" in line, line
