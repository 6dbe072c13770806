"""The Serve application builder: ``build_app(args) -> Application``.

Run it with ``serve run giellm_ray.serve.app:build_app model=PATH [config=YAML] [key.sub=value
...]`` or deploy ``jobs/configs/serve/deploy.yaml`` with ``serve deploy``; ``giellm serve`` calls it
with a resolved :class:`ServeConfig`. ``args`` may be that config itself, or a mapping where
``config`` names a ServeConfig YAML, ``model`` is short for ``model.name_or_path`` and every other
key is a dotted override (strings parsed as YAML, nested mappings flattened), as ``--set`` does.
``extractor_factory`` replaces how a model replica builds its Extractor (tests inject one; it must
be picklable: a module-level function or class).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ray.serve import Application

from giellm_ray import io
from giellm_ray.config import load_config
from giellm_ray.log import serve_log_level
from giellm_ray.serve.config import ServeConfig
from giellm_ray.serve.deployment import ExtractIngress, ExtractorFactory, model_deployment


def _flatten(prefix: str, value: Any, out: list[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out.append(f"{prefix}={value if isinstance(value, str) else json.dumps(value)}")


def config_from_args(args: Mapping[str, Any] | None) -> ServeConfig:
    """A :class:`ServeConfig` from ``serve run`` / deploy-YAML style ``args``."""
    args = dict(args or {})
    path = args.pop("config", None)
    overrides: list[str] = []
    if "model" in args and not isinstance(args["model"], Mapping):
        overrides.append(f"model.name_or_path={args.pop('model')}")
    for key, value in args.items():
        _flatten(key, value, overrides)
    return load_config(ServeConfig, path, overrides)


def check_model_path(cfg: ServeConfig) -> None:
    """Fail fast (before any replica starts) when a local model directory is missing."""
    path = cfg.model.name_or_path
    local = not io.is_s3(path) and path.startswith((".", "/", "~"))
    if local and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"model directory not found: {path}")


def build_app(
    args: ServeConfig | Mapping[str, Any] | None = None,
    extractor_factory: ExtractorFactory | None = None,
) -> Application:
    """The ingress bound to an autoscaled, dynamically batched model deployment."""
    cfg = args if isinstance(args, ServeConfig) else config_from_args(args)
    check_model_path(cfg)
    r = cfg.replica
    autoscaling = {
        "min_replicas": r.min_replicas,
        "max_replicas": r.max_replicas,
        "initial_replicas": r.initial_replicas
        if r.initial_replicas is not None
        else max(1, r.min_replicas),
        "target_ongoing_requests": r.target_ongoing_requests,
    }
    data = cfg.model_dump(mode="json")
    logging_config = {"log_level": serve_log_level()}  # giellm -q / -v reach the replicas
    model = (
        model_deployment(cfg.engine)
        .options(
            ray_actor_options={"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
            autoscaling_config=autoscaling,
            max_ongoing_requests=r.max_ongoing_requests,
            graceful_shutdown_wait_loop_s=r.graceful_shutdown_wait_loop_s,
            graceful_shutdown_timeout_s=r.graceful_shutdown_timeout_s,
            health_check_period_s=r.health_check_period_s,
            health_check_timeout_s=r.health_check_timeout_s,
            logging_config=logging_config,
        )
        .bind(data, extractor_factory)
    )
    ingress = ExtractIngress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        graceful_shutdown_wait_loop_s=r.graceful_shutdown_wait_loop_s,
        graceful_shutdown_timeout_s=r.graceful_shutdown_timeout_s,
        logging_config=logging_config,
    ).bind(data, model)
    return ingress
