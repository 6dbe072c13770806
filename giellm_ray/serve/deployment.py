"""The two Serve deployments: the model (``ExtractorModel``) and the FastAPI ingress.

The model replica, one class per engine kind on :class:`ModelReplica`, holds one
:class:`giellm_ray.generation.extractor.Extractor` (the same prompt →
generate → parse → ground code as bulk scoring) built by an injectable ``extractor_factory``.
With the HF engine it answers single rows through ``@serve.batch``: concurrent requests are
gathered (waiting at most ``batching.batch_wait_timeout_s``), merged by a :class:`Coalescer` while
the model is busy, and decoded as one engine batch of up to ``batching.max_batch_size`` rows in a
worker thread, so the replica's event loop keeps accepting requests meanwhile. With vLLM
(``engine: vllm``) each request goes straight to the replica's one async engine, whose scheduler
batches the rows of all callers continuously (no gathering, no coalescer); a cancelled request
(client gone) is aborted inside vLLM; the health check is the engine's; a dead engine ends its
replica, so the ingress retries its texts on a live one; a replica shut down (drain done) stops
its engine.
``ExtractIngress`` validates HTTP requests (``giellm_ray.serve.http``) and fans texts out to the
model deployment's handle, so batching works across HTTP requests and model replicas autoscale on
their own. A text whose model replica dies mid-call is sent once more (Serve's router has already
dropped the dead replica, so it goes to a live one, or waits for the replacement up to
``ingress.retry_timeout_s``); if that fails too the answer is 503 with ``Retry-After``, never a
500. Both record Serve metrics (request latency, batch size, generated tokens, output errors,
model calls lost with a replica). Built by :func:`giellm_ray.serve.app.build_app`; nothing runs
at import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError, WorkerCrashedError
from ray.serve.exceptions import ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

from giellm_ray.log import quiet_serve_batch_bound_notice
from giellm_ray.schema import (
    ADAPTER,
    DATASET,
    ERROR,
    MAX_NEW_TOKENS,
    NUM_GENERATED_TOKENS,
    TEXT,
    empty_scored,
)
from giellm_ray.serve.api import ApiError
from giellm_ray.serve.coalescer import Coalescer
from giellm_ray.serve.config import ServeConfig
from giellm_ray.serve.http import build_http_app

logger = logging.getLogger("ray.serve")

ExtractorFactory = Callable[[ServeConfig], Any]
# What awaiting a model call raises when the replica holding it is gone. Measured on Ray 2.60
# (tests/ray/test_serve_faults.py, benchmarks/serve_faults.py): SIGKILL of the replica process and
# ``ray.kill`` of its actor both raise ``ActorDiedError`` ("The actor died unexpectedly before
# finishing this task"), and Serve's router drops that replica at once, so a retry goes to another.
# RayActorError also covers ActorUnavailableError (replica unreachable for a while) and a
# RayTaskError caused by an ActorDiedError; WorkerCrashedError and ReplicaUnavailableError (replica
# gone between being picked and being sent the call) are the other forms Ray documents.
REPLICA_LOST = (RayActorError, WorkerCrashedError, ReplicaUnavailableError)
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128]
LATENCY_BOUNDS_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]


def load_extractor(cfg: ServeConfig):
    """The default factory: the bulk-scoring Extractor of ``cfg.engine`` on this replica."""
    from giellm_ray.generation.build import build_extractor

    return build_extractor(
        cfg.engine,
        cfg.model,
        cfg.generation,
        cfg.vllm,
        cfg.registry(),
        cfg.constrained,
        adapters=cfg.adapters,
    )


def _model_row(row: dict) -> dict:
    return {
        TEXT: row.get(TEXT),
        DATASET: row.get(DATASET),
        MAX_NEW_TOKENS: row.get(MAX_NEW_TOKENS),
        ADAPTER: row.get(ADAPTER),
    }


class ModelReplica:
    """What every model replica does whatever its engine: build the Extractor, record metrics,
    answer Serve's health check, report its counters, stop the engine when Serve drops it.
    :class:`BatchedModel` (HF) and :class:`ContinuousModel` (vLLM) add how a text reaches the
    engine; both deploy as ``ExtractorModel`` (:func:`model_deployment`)."""

    engine_kind = "hf"

    def __init__(self, config: dict, extractor_factory: ExtractorFactory | None = None) -> None:
        self.cfg = ServeConfig.model_validate(config)
        started = time.perf_counter()
        self.extractor = (extractor_factory or load_extractor)(self.cfg)
        self.batch_size = Histogram(
            "giellm_batch_size",
            boundaries=BATCH_BOUNDS,
            description="Texts per model call (after batching).",
        )
        self.batch_ms = Histogram(
            "giellm_batch_latency_ms",
            boundaries=LATENCY_BOUNDS_MS,
            description="Wall time of one model call (generate + parse).",
        )
        self.tokens = Counter("giellm_generated_tokens", description="Tokens generated.")
        self.output_errors = Counter(
            "giellm_output_errors", description="Texts whose output did not parse or failed."
        )
        self.counts = {"batches": 0, "texts": 0, "largest_batch": 0, "output_errors": 0}
        self._setup()
        logger.info(
            "model %s loaded in %.1f s (%s)",
            self.cfg.served_model_name,
            time.perf_counter() - started,
            self.describe(),
        )

    def _setup(self) -> None:
        """Engine-kind specific set-up, after the Extractor is built."""

    def describe(self) -> str:
        """How this replica batches, for its start-up log line."""
        return self.engine_kind

    call_log_level = logging.INFO

    def _record(
        self, rows: list[dict], outs: list[dict], seconds: float, batch: int | None = None
    ) -> None:
        batch = len(rows) if batch is None else batch
        self.batch_size.observe(batch)
        self.batch_ms.observe(seconds * 1000.0)
        tokens = sum(int(o.get(NUM_GENERATED_TOKENS) or 0) for o in outs)
        if tokens:
            self.tokens.inc(tokens)
        errors = sum(1 for o in outs if o.get(ERROR))
        if errors:
            self.output_errors.inc(errors)
        self.counts["batches"] += 1
        self.counts["texts"] += len(rows)
        self.counts["largest_batch"] = max(self.counts["largest_batch"], batch)
        self.counts["output_errors"] += errors
        logger.log(
            self.call_log_level,
            "model call on %d text(s) (request ids %s) in %.1f ms",
            len(rows),
            ",".join(sorted({r.get("request_id") or "-" for r in rows})[:8]),
            seconds * 1000.0,
        )

    def check_health(self) -> None:
        """Serve's periodic health check: a dead vLLM engine fails it (the replica is replaced)."""
        self.extractor.check_health()

    def __del__(self) -> None:
        # Serve calls this after draining the replica: stop the engine's processes with it.
        extractor = getattr(self, "extractor", None)
        if extractor is not None:
            extractor.shutdown()

    def stats(self) -> dict:
        """This replica's batching in force and its counters (for tests, benchmarks, operators)."""
        return {
            "pid": os.getpid(),
            "actor_name": ray.get_runtime_context().get_actor_name(),
            "engine": self.engine_kind,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            **self.counts,
        }


class BatchedModel(ModelReplica):
    """The HF engine's replica; ``extract(row)`` is batched with other concurrent calls.

    ``@serve.batch`` (built here from ``batching``) gathers concurrent calls for up to
    ``batch_wait_timeout_s``; the :class:`Coalescer` behind it merges the batches that formed while
    the model was busy, so one generate call sees up to ``max_batch_size`` rows.
    """

    def _setup(self) -> None:
        b = self.cfg.batching
        quiet_serve_batch_bound_notice()
        self.coalescer = Coalescer(self._run, b.max_batch_size, after=self._record)
        self.extract_batch = serve.batch(
            max_batch_size=b.max_batch_size,
            batch_wait_timeout_s=b.batch_wait_timeout_s,
            max_concurrent_batches=self.cfg.concurrent_batches,
        )(self._serve_batch)

    def describe(self) -> str:
        b = self.cfg.batching
        return f"max_batch_size={b.max_batch_size}, wait={b.batch_wait_timeout_s:.3f} s"

    def _run(self, rows: list[dict]) -> list[dict]:
        """One model call (in a worker thread, so the event loop keeps taking requests)."""
        try:
            return self.extractor.extract([_model_row(r) for r in rows])
        except Exception:  # the Extractor should never raise; if it does, no text pays for another
            logger.exception(
                "extractor raised on %d text(s) (request ids %s)",
                len(rows),
                ",".join(str(r.get("request_id")) for r in rows[:8]),
            )
        if len(rows) == 1:
            return [empty_scored("internal error: the extractor raised (see the replica log)")]
        return [self._run([r])[0] for r in rows]

    async def _serve_batch(self, rows: list[dict]) -> list[dict]:
        return await self.coalescer.submit(rows)

    async def extract(self, row: dict) -> dict:
        """One text (``{text, dataset, request_id}``) → one Extractor output row."""
        return await self.extract_batch(row)

    def stats(self) -> dict:
        return {
            **super().stats(),
            "max_batch_size": self.extract_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self.extract_batch._get_batch_wait_timeout_s(),
            "max_concurrent_batches": self.cfg.concurrent_batches,
        }


class ContinuousModel(ModelReplica):
    """The vLLM engine's replica: each request goes to the engine as it comes (no gathering, no
    coalescer); its scheduler batches the rows of all callers continuously."""

    engine_kind = "vllm"
    call_log_level = logging.DEBUG

    def describe(self) -> str:
        return "vLLM, continuous batching"

    async def extract(self, row: dict) -> dict:
        """One text (``{text, dataset, request_id}``) → one Extractor output row."""
        started = time.perf_counter()
        batch = self.extractor.in_flight + 1  # rows in the engine as this one joins them, about
        try:
            (out,) = await self.extractor.extract_async([_model_row(row)])
        except Exception:  # the Extractor should never raise; if it does, only this text pays
            logger.exception("extractor raised (request id %s)", row.get("request_id"))
            out = empty_scored("internal error: the extractor raised (see the replica log)")
        # A dead engine ends the replica: its texts in flight are then retried by the ingress on
        # a live replica (REPLICA_LOST), as for any replica death, instead of failing here.
        self.extractor.exit_if_dead("model replica")
        self._record([row], [out], time.perf_counter() - started, batch)
        return out


ExtractorModel = serve.deployment(name="ExtractorModel")(BatchedModel)
ContinuousExtractorModel = serve.deployment(name="ExtractorModel")(ContinuousModel)


def model_deployment(engine: str):
    """The model deployment (named ``ExtractorModel`` either way) for ``engine``."""
    return ContinuousExtractorModel if engine == "vllm" else ExtractorModel


@serve.deployment(name="ExtractIngress")
@serve.ingress()
class ExtractIngress:
    """HTTP front: validation, request ids, latency metrics; forwards texts to the model."""

    def __init__(self, config: dict, model: DeploymentHandle) -> None:
        self.cfg = ServeConfig.model_validate(config)
        self.registry = self.cfg.registry()
        self.model = model
        self.latency = Histogram(
            "giellm_request_latency_ms",
            boundaries=LATENCY_BOUNDS_MS,
            description="Extraction latency per HTTP request.",
            tag_keys=("route",),
        )
        self.texts = Counter("giellm_texts", description="Texts extracted.", tag_keys=("route",))
        self.lost_calls = Counter(
            "giellm_lost_model_calls",
            description="Model calls lost with their replica (each one is "
            "retried, or its request answered 503).",
        )

    def __serve_build_asgi_app__(self):
        return build_http_app(
            self.registry,
            self.cfg.http,
            self.cfg.served_model_name,
            self._extract,
            self._observe,
            tuple(self.cfg.adapters),
        )

    async def _extract(self, rows: list[dict]) -> list[dict]:
        return list(await asyncio.gather(*(self._call(r) for r in rows)))

    async def _call(self, row: dict) -> dict:
        """One text on the model; a lost replica is retried on another, else 503 + Retry-After.

        Extraction has no side effects, so sending a text twice is safe.
        """
        ing = self.cfg.ingress
        for attempt in range(ing.replica_loss_retries + 1):
            response = self.model.extract.remote(row)
            try:
                if attempt == 0:
                    return await response
                # With one replica the retry waits in the router until the replacement is up;
                # bound that wait, the client is better served by a 503 it can act on.
                return await asyncio.wait_for(response, ing.retry_timeout_s)
            except REPLICA_LOST as exc:
                why = f"replica lost ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})"
            except TimeoutError:
                response.cancel()
                why = f"no replica answered within {ing.retry_timeout_s} s"
            self.lost_calls.inc()
            logger.warning(
                "request %s: model call %d failed: %s", row.get("request_id"), attempt + 1, why
            )
        raise ApiError(
            503,
            "no model replica could answer (one was lost and no other was ready "
            "in time); retry later",
            retry_after_s=ing.retry_after_s,
        )

    def _observe(self, route: str, latency_ms: float, n_texts: int) -> None:
        self.latency.observe(latency_ms, tags={"route": route})
        self.texts.inc(n_texts, tags={"route": route})
