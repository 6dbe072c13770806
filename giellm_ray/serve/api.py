"""Request and response shapes of the HTTP API, and the checks a request must pass.

``POST /v1/extract`` takes an :class:`ExtractRequest` (``{text, dataset[, max_new_tokens]}``) and answers an
:class:`ExtractResponse` (``{tl_label, items, raw_output, error, model, latency_ms, request_id}``);
``POST /v1/extract/batch`` takes ``{"requests": [...]}`` and answers ``{"results": [...]}``.
:func:`check_request` raises :class:`ApiError` (status + message) for an empty text, a text over
the limit or an unknown dataset; :func:`to_response` turns an Extractor output row into a response.
Pydantic only: no torch, no ray, so the contract is unit-tested in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from giellm_ray import schema as S
from giellm_ray.formats.tasks import TaskRegistry


class ApiError(Exception):
    """A request the service refuses, with its HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ExtractRequest(BaseModel):
    """One text to analyse with one dataset's task."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="Japanese source text (non-empty, at most the configured size).")
    dataset: str = Field(description="Task name, e.g. SCNM or SCPOS:RW (see GET /v1/tasks).")
    max_new_tokens: int | None = Field(
        default=None, ge=1,
        description="Cap on generated tokens for this text (below the task's own bound).")


class BatchRequest(BaseModel):
    """Several texts answered in one response (they share the replica's dynamic batches)."""

    model_config = ConfigDict(extra="forbid")

    requests: list[ExtractRequest] = Field(description="The texts, in order.")


class Item(BaseModel):
    """One extracted item, grounded in the text (``start``/``end`` are ``None`` when absent)."""

    label: str
    span: str
    start: int | None = None
    end: int | None = None
    tail: str | None = None
    tail_start: int | None = None
    tail_end: int | None = None


class ExtractResponse(BaseModel):
    """The model's answer for one text.

    ``error`` is set (and the status still 200) when the output did not parse or generation
    failed; ``raw_output`` then shows what the model wrote.
    """

    request_id: str
    dataset: str
    tl_label: str | None
    items: list[Item]
    raw_output: str
    error: str | None = None
    num_generated_tokens: int = 0
    model: str
    latency_ms: float


class BatchResponse(BaseModel):
    """Answers in request order."""

    request_id: str
    results: list[ExtractResponse]
    model: str
    latency_ms: float


class ErrorResponse(BaseModel):
    """Body of every 4xx answer."""

    detail: str
    request_id: str | None = None


def check_request(req: ExtractRequest, registry: TaskRegistry, max_text_chars: int,
                  where: str = "") -> None:
    """Raise :class:`ApiError` when ``req`` cannot be served; ``where`` prefixes the message."""
    if not req.text.strip():
        raise ApiError(422, f"{where}text is empty")
    if len(req.text) > max_text_chars:
        raise ApiError(413, f"{where}text has {len(req.text)} characters; the limit is "
                            f"{max_text_chars}")
    if req.dataset not in registry:
        raise ApiError(422, f"{where}unknown dataset {req.dataset!r}; known datasets: "
                            f"{', '.join(sorted(registry))}")


def check_batch(batch: BatchRequest, registry: TaskRegistry, max_text_chars: int,
                max_items: int) -> None:
    """Check every text of a batch; the message names the first bad one by index."""
    if not batch.requests:
        raise ApiError(422, "requests is empty")
    if len(batch.requests) > max_items:
        raise ApiError(413, f"{len(batch.requests)} texts in one batch; the limit is {max_items}")
    for i, req in enumerate(batch.requests):
        check_request(req, registry, max_text_chars, where=f"requests[{i}]: ")


def to_response(row: Mapping, req: ExtractRequest, *, request_id: str, model: str,
                latency_ms: float) -> ExtractResponse:
    """An Extractor output row (prediction, pred_tl_label, pred_items, error, ...) as a response."""
    items = [
        Item(**{k: it.get(k) for k in Item.model_fields})
        for it in (row.get(S.PRED_ITEMS) or ())
    ]
    return ExtractResponse(
        request_id=request_id,
        dataset=req.dataset,
        tl_label=row.get(S.PRED_TL_LABEL),
        items=items,
        raw_output=row.get(S.PREDICTION) or "",
        error=row.get(S.ERROR),
        num_generated_tokens=int(row.get(S.NUM_GENERATED_TOKENS) or 0),
        model=model,
        latency_ms=round(latency_ms, 3),
    )
