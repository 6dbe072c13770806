"""Joining or starting Ray: one function and one policy for every ``giellm`` command.

:func:`connect_ray` joins the cluster named by the argument or ``RAY_ADDRESS`` (``ray job
submit`` sets it) or starts a local one, and returns whether this call started Ray (the caller
then shuts it down). A cluster that is joined does not see this process's environment, so the
variables the workers need are forwarded through the job's runtime env: every variable whose name
starts with one of :data:`FORWARDED_PREFIXES` (S3 credentials and endpoint, ``HF_TOKEN`` for
gated models, our own ``GIELLM_*`` settings, DeepSpeed/vLLM/NCCL switches). Under ``ray job
submit`` a variable the job's own runtime env already sets is left out, since Ray refuses to merge
the same key twice. A local Ray started here inherits the environment, so nothing is forwarded and
the workers Ray prestarts are reused; it runs the dashboard (127.0.0.1:8265, or the next free
port), whose state API Ray Train's placement-group cleaner polls (without it, a warning every few
seconds for the whole run) and ``ray list ...`` needs: measured +0.9 s of start-up here.

Orphaned engines. vLLM's engine core is a child process of the actor or replica that built it;
if it outlives a crashed (SIGKILLed, OOM-killed) worker it keeps ~72 GB of that GPU and the
replacement actor fails vLLM's free-memory check. Ray 2.60 ends such children with per-worker
process groups (:data:`RAYLET_ENV`, ``RAY_process_group_cleanup_enabled``): every worker starts in
its own process group, and when a worker disconnects the raylet sends SIGTERM to the group and
SIGKILL 200 ms later. The engine core and vLLM's workers stay in that group (vLLM never calls
``setsid``), so they go with it. The raylet reads the flag from its environment at start, so it
must be in the environment of whatever starts the raylet: ``ray start`` on every node
(``cluster.yaml``, the KubeRay manifests) or, for a local Ray, this process (:func:`connect_ray`).
It is on by default in Ray 2.60.0; we set it so that a change of default cannot bring orphans back.
Not ``RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper``: in 2.60 that older switch is
deprecated and ignored whenever process groups are on (the raylet logs an error saying so), and it
still makes every core worker ignore ``SIGCHLD``, so a worker loses its children's exit status
(``subprocess.run(...).returncode`` reads 0 for any exit; measured, tests/ray/test_ray_start.py).
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

FORWARDED_PREFIXES = (
    "AWS_",
    "GIELLM_",
    "HF_",
    "HUGGING_FACE_",
    "TRANSFORMERS_",
    "DS_",
    "VLLM_",
    "NCCL_",
    "TOKENIZERS_PARALLELISM",
)
# Set by Ray's job manager in a submitted job's driver: the job's config, runtime env included.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Read by the raylet at start: a dead worker's process group is killed (module docstring).
RAYLET_ENV = {"RAY_process_group_cleanup_enabled": "1"}


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables to forward to a joined cluster's workers (see the module docstring)."""
    environ = dict(os.environ if environ is None else environ)
    environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    taken: set[str] = set()
    if JOB_CONFIG_ENV in environ:
        try:
            job_env = json.loads(environ[JOB_CONFIG_ENV]).get("runtime_env") or {}
            taken = set((job_env.get("env_vars") or {}).keys())
        except (ValueError, AttributeError):
            taken = set()
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) and k not in taken}


def connect_ray(
    address: str | None = None, *, num_cpus: float | None = None, dashboard: bool = True
) -> bool:
    """Join ``address`` / ``RAY_ADDRESS`` or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        env = forwarded_env()
        log.info(
            "joining Ray at %s (forwarding %d environment variables: %s)",
            address,
            len(env),
            ", ".join(sorted(env)) or "none",
        )
        ray.init(address=address, runtime_env={"env_vars": env}, logging_level="WARNING")
    else:
        for key, value in RAYLET_ENV.items():  # the raylet ray.init starts inherits it
            os.environ.setdefault(key, value)
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, logging_level="WARNING")
        log.info("started a local Ray: %s", ray.cluster_resources())
    return True
