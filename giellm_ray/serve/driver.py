"""Start the service on a Ray cluster and keep it up until Ctrl-C or SIGTERM.

``serve_forever(cfg)`` connects to the cluster (``RAY_ADDRESS`` / ``ray job submit``) or starts a
local one, starts Serve's HTTP proxy on ``http.host:http.port`` (127.0.0.1:8000 by default),
deploys :func:`giellm_ray.serve.app.build_app` and blocks. On SIGINT/SIGTERM it deletes the
application, which lets replicas drain in-flight requests for up to
``replica.graceful_shutdown_timeout_s``, then shuts Serve down. Used by ``giellm serve`` and
``jobs/serve.py``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import yaml

from giellm_ray.serve.config import ServeConfig

log = logging.getLogger(__name__)


def start_service(cfg: ServeConfig, extractor_factory=None) -> str:
    """Deploy the app (Ray and Serve started if needed) and return its base URL."""
    from ray import serve

    from giellm_ray.ray_session import connect_ray
    from giellm_ray.serve.app import build_app

    app = build_app(cfg, extractor_factory)  # fails fast on a bad model path, before Ray starts
    connect_ray()
    http = cfg.http
    options = {
        "host": http.host,
        "port": http.port,
        "keep_alive_timeout_s": http.keep_alive_timeout_s,
    }
    if http.request_timeout_s is not None:
        options["request_timeout_s"] = http.request_timeout_s
    serve.start(http_options=options)
    serve.run(app, name=cfg.app_name, route_prefix=http.route_prefix, blocking=False)
    return f"http://{http.host}:{http.port}{http.route_prefix.rstrip('/')}"


def stop_service(cfg: ServeConfig) -> None:
    """Drain and delete the application, then stop Serve (gracefully, bounded by the config)."""
    from ray import serve

    try:
        serve.delete(cfg.app_name)
    finally:
        serve.shutdown()


def serve_forever(
    cfg: ServeConfig, extractor_factory=None, stop: threading.Event | None = None
) -> int:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set); returns the exit code."""
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        log.info(
            "resolved config:\n%s",
            yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False),
        )
        if cfg.replica.min_replicas < 2:
            log.warning(
                "replica.min_replicas=%d: if the model replica dies, the service answers "
                "nothing but 503s (or waits) until a new one has loaded the model; "
                "production wants 2 or more",
                cfg.replica.min_replicas,
            )
        url = start_service(cfg, extractor_factory)
        log.info("giellm serve: listening on %s (docs: %s/docs); Ctrl-C or SIGTERM stops", url, url)
        while not stop.wait(1.0):
            pass
        started = time.perf_counter()
        log.info("giellm serve: shutting down (draining in-flight requests)")
        stop_service(cfg)
        log.info("giellm serve: stopped in %.1f s", time.perf_counter() - started)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
