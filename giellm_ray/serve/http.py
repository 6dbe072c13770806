"""The FastAPI application of the service: routes, body-size guard, error answers, request ids.

:func:`build_http_app` wires the routes to an ``extract`` coroutine (``list[row] -> list[output
row]``) so the same app runs inside the Serve ingress deployment (where ``extract`` calls the
batched model deployment) and in unit tests (where it calls an Extractor in-process). Status codes:
empty text 422, text over ``max_text_chars`` 413, unknown dataset or adapter 422 (lists the
known ones),
a text holding refused characters 422, a wrongly typed field 422 (strict: no coercion),
malformed JSON or a body that is not UTF-8 400, other schema errors 422, body over
``max_body_bytes`` 413 (checked before the body is parsed); every one of them a JSON
``{detail, request_id}``. An output that does not parse is a 200 whose ``error`` field says why; a
row that failed inside the model is a 200 whose ``error`` is one stable line (the internal text is
logged here with the request id). No model replica able to answer: 503 with ``Retry-After``. Any
other failure: 500 with a stable message, never exception text.

Pages, every asset served by the app itself (no CDN, so they work offline): ``/`` is a page to try
the model (``serve/static/``: plain HTML, CSS and JS that call ``/v1/tasks`` and
``/v1/extract``); OpenAPI docs at ``/docs`` (Swagger UI) and ``/redoc`` load their scripts from
``/static/swagger/``, the swagger-ui / redoc dist files the ``fastapi-offline`` package ships.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from giellm_ray import schema as S
from giellm_ray.formats.tasks import TaskRegistry
from giellm_ray.serve.api import (
    ApiError,
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    ExtractRequest,
    ExtractResponse,
    check_batch,
    check_request,
    client_error,
    to_response,
)
from giellm_ray.serve.config import HTTPConfig

logger = logging.getLogger("ray.serve")

ExtractFn = Callable[[list[dict]], Awaitable[list[dict]]]
ObserveFn = Callable[[str, float, int], None]
REQUEST_ID_HEADER = "x-request-id"
ERRORS = {s: {"model": ErrorResponse} for s in (400, 413, 422, 500, 503)}


class BodyLimitMiddleware:
    """Answer 413 for a body over ``limit`` bytes, before any route parses it.

    A declared ``Content-Length`` is checked at once; a chunked body is read up to ``limit + 1``
    bytes and replayed to the app when it fits.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(scope, send, int(declared))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self._reject(scope, send, size)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send, size: int) -> None:
        rid = dict(scope.get("headers") or ()).get(REQUEST_ID_HEADER.encode(), b"").decode()
        detail = f"request body of {size}+ bytes exceeds the limit of {self.limit} bytes"
        response = JSONResponse({"detail": detail, "request_id": rid or None}, status_code=413)
        await response(scope, _disconnected, send)


async def _disconnected() -> dict:
    return {"type": "http.disconnect"}


def request_id_of(request: Request) -> str:
    """The caller's (or the Serve proxy's) ``X-Request-ID``, else a fresh one."""
    rid = request.headers.get(REQUEST_ID_HEADER)
    if not rid:
        rid = getattr(request.state, "request_id", None) or uuid.uuid4().hex
        request.state.request_id = rid
    return rid


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") in ("json_invalid", "json_type") for e in errors):
        return 400, "malformed JSON body: " + "; ".join(str(e.get("msg")) for e in errors)
    parts = [
        f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}"
        for e in errors
    ]
    return 422, "invalid request: " + "; ".join(parts)


def _add_error_handlers(app: FastAPI) -> None:
    """4xx answers with ``{detail, request_id}`` for refused and malformed requests."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        rid = request_id_of(request)
        logger.info("request %s refused %d: %s", rid, exc.status, exc.detail)
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return JSONResponse(
            {"detail": exc.detail, "request_id": rid}, status_code=exc.status, headers=headers
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's own refusals (e.g. a body that is not UTF-8), in the same shape as ours.
        rid = request_id_of(request)
        logger.info("request %s refused %d: %s", rid, exc.status_code, exc.detail)
        return JSONResponse(
            {"detail": str(exc.detail), "request_id": rid},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        rid = request_id_of(request)
        status, detail = _validation_detail(exc)
        logger.info("request %s refused %d: %s", rid, status, detail)
        return JSONResponse({"detail": detail, "request_id": rid}, status_code=status)


STATIC_DIR = resources.files("giellm_ray") / "serve" / "static"


def _swagger_dir() -> str:
    """swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png (fastapi-offline)."""
    import fastapi_offline

    return str(resources.files(fastapi_offline) / "static")


def _add_pages(app: FastAPI) -> None:
    """``/`` (the try-it page), ``/static`` (its assets), ``/docs`` and ``/redoc`` from local files."""
    app.mount("/static/swagger", StaticFiles(directory=_swagger_dir()), name="swagger")
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC_DIR / "index.html"), media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=base + app.openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=base + "/docs/oauth2-redirect",
            swagger_js_url=base + "/static/swagger/swagger-ui-bundle.js",
            swagger_css_url=base + "/static/swagger/swagger-ui.css",
            swagger_favicon_url=base + "/static/swagger/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )  # no call to the online validator

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(
            openapi_url=base + app.openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=base + "/static/swagger/redoc.standalone.js",
            redoc_favicon_url=base + "/static/swagger/favicon.png",
            with_google_fonts=False,
        )


def build_http_app(
    registry: TaskRegistry,
    http: HTTPConfig,
    model_name: str,
    extract: ExtractFn,
    observe: ObserveFn | None = None,
    adapters: Collection[str] = (),
) -> FastAPI:
    """The FastAPI app; ``observe(route, latency_ms, n_texts)`` is called after each extraction;
    ``adapters``: the LoRA adapter names a request may pick (``GET /v1/adapters``)."""
    app = FastAPI(
        title="GIELLM extraction",
        version="1",
        description="Japanese general information extraction (GIELLM) on Ray Serve.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimitMiddleware, limit=http.max_body_bytes)
    _add_error_handlers(app)
    _add_pages(app)

    async def run(reqs: list[ExtractRequest], rid: str, route: str) -> tuple[list, float]:
        start = time.perf_counter()
        rows = [
            {
                S.TEXT: r.text,
                S.DATASET: r.dataset,
                S.MAX_NEW_TOKENS: r.max_new_tokens,
                S.ADAPTER: r.adapter,
                "request_id": rid,
            }
            for r in reqs
        ]
        try:
            outs = await extract(rows)
        except ApiError:
            raise
        except Exception as exc:  # never a bare 500 carrying exception text
            logger.exception("request %s %s failed", rid, route)
            raise ApiError(
                500, f"internal error; the service log has the details under request id {rid}"
            ) from exc
        latency_ms = (time.perf_counter() - start) * 1000.0
        if observe is not None:
            observe(route, latency_ms, len(reqs))
        for k, o in enumerate(outs):
            if client_error(o.get(S.ERROR), rid) != o.get(S.ERROR):
                logger.error(
                    "request %s %s: text %d failed inside the model: %s",
                    rid,
                    route,
                    k,
                    o.get(S.ERROR),
                )
        errors = sum(1 for o in outs if o.get(S.ERROR))
        logger.info(
            "request %s %s: %d text(s), %d with output errors, %.1f ms",
            rid,
            route,
            len(reqs),
            errors,
            latency_ms,
        )
        return outs, latency_ms

    @app.post("/v1/extract", response_model=ExtractResponse, responses=ERRORS)
    async def extract_one(req: ExtractRequest, request: Request) -> ExtractResponse:
        """Extract the text-level label and the grounded items of one text."""
        rid = request_id_of(request)
        check_request(req, registry, http.max_text_chars, adapters=adapters)
        (out,), latency_ms = await run([req], rid, "/v1/extract")
        return to_response(out, req, request_id=rid, model=model_name, latency_ms=latency_ms)

    @app.post("/v1/extract/batch", response_model=BatchResponse, responses=ERRORS)
    async def extract_batch(batch: BatchRequest, request: Request) -> BatchResponse:
        """Extract from several texts; answers come back in request order."""
        rid = request_id_of(request)
        check_batch(batch, registry, http.max_text_chars, http.max_batch_items, adapters)
        outs, latency_ms = await run(batch.requests, rid, "/v1/extract/batch")
        results = [
            to_response(o, r, request_id=rid, model=model_name, latency_ms=latency_ms)
            for o, r in zip(outs, batch.requests, strict=True)
        ]
        return BatchResponse(
            request_id=rid, results=results, model=model_name, latency_ms=round(latency_ms, 3)
        )

    @app.get("/v1/tasks")
    async def tasks() -> dict:
        """Tasks this service knows: TL labels, WL labels, instruction words."""
        return {"model": model_name, "tasks": registry.to_dict()}

    @app.get("/v1/adapters")
    async def list_adapters() -> dict:
        """LoRA adapters a request may name in ``adapter`` (absent: the base model)."""
        return {"model": model_name, "adapters": sorted(adapters)}

    @app.get("/healthz")
    async def healthz() -> dict:
        """Liveness: the ingress answers (the model replicas are checked by Serve itself)."""
        return {"status": "ok", "model": model_name}

    return app
