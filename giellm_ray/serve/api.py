"""Request and response shapes of the HTTP API, and the checks a request must pass.

``POST /v1/extract`` takes an :class:`ExtractRequest` (``{text, dataset[, max_new_tokens]}``,
optionally ``adapter``) and answers an :class:`ExtractResponse` (``{tl_label, tl_score, items,
raw_output, error, model, latency_ms, request_id}``, each item with its ``score``, and the
``adapter`` used);
``POST /v1/extract/batch`` takes ``{"requests": [...]}`` and answers ``{"results": [...]}``.
Fields are strictly typed (``"5"`` or ``true`` for ``max_new_tokens``, ``5`` for ``text``: 422,
never a silent coercion that would hide a client bug). :func:`check_request` raises
:class:`ApiError` (status + message) for an empty text, a text over the limit, a text holding
characters the service refuses (:func:`text_problem`), an unknown dataset or an unknown LoRA
adapter (``adapter``: one of the service's ``adapters``, absent for the base model); a batch
with one bad
text is refused whole, naming its index. :func:`to_response` turns an Extractor output row into a response and
:func:`client_error` keeps internal exception text out of it. Pydantic only: no torch, no ray, so
the contract is unit-tested in milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from giellm_ray import schema as S
from giellm_ray.formats.tasks import TaskRegistry
from giellm_ray.generation.base import PUBLIC_ROW_ERRORS

# Characters a ``text`` may not hold (422), and why each is refused:
# - U+D800-U+DFFF, unpaired surrogates: valid JSON (``"\ud800"``) but not characters. They cannot be
#   encoded as UTF-8, so the tokenizer raises on them (and so would a UTF-8 log or Parquet file).
#   A correctly escaped pair (``"\ud83d\ude00"``) is decoded by the JSON parser into one character
#   and is accepted.
# - U+0000 NUL: ends strings in C-level consumers and never belongs to text.
# - the other C0 controls (U+0001-U+001F) except TAB, LF and CR, DEL (U+007F) and the C1 controls
#   (U+0080-U+009F): no meaning in Japanese (or any natural) text; they are the mark of binary
#   data or of bytes decoded with the wrong codec (a client bug), and the model never saw them.
# Accepted: TAB/LF/CR, format characters (ZWJ, BOM, bidi marks), private use and noncharacters:
# they do occur in real text, and the tokenizer encodes them.
_REFUSED = re.compile(r"[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ECHO_CHARS = 60  # how much of a refused value a message repeats back


class ApiError(Exception):
    """A request the service refuses (or cannot serve now), with its HTTP status and a message.

    ``retry_after_s`` becomes a ``Retry-After`` header (for 503: the service will be back).
    """

    def __init__(self, status: int, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


class ExtractRequest(BaseModel):
    """One text to analyse with one dataset's task."""

    model_config = ConfigDict(extra="forbid")

    text: StrictStr = Field(
        description="Japanese source text (non-empty, at most the configured size, no control "
        "characters other than tab/newline, no unpaired surrogates)."
    )
    dataset: StrictStr = Field(description="Task name, e.g. SCNM or SCPOS:RW (see GET /v1/tasks).")
    max_new_tokens: StrictInt | None = Field(
        default=None,
        ge=1,
        description="Cap on generated tokens for this text (below the task's own bound).",
    )
    adapter: StrictStr | None = Field(
        default=None,
        description="LoRA adapter to answer with (see GET /v1/adapters); absent: the base model.",
    )


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
    score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="The model's confidence in this item: the probability of its tokens (their "
        "product) under the format constraint; null when scores are off.",
    )


class ExtractResponse(BaseModel):
    """The model's answer for one text.

    ``error`` is set (and the status still 200) when the output did not parse or generation
    failed; ``raw_output`` then shows what the model wrote.
    """

    request_id: str
    dataset: str
    tl_label: str | None
    tl_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="The model's confidence in tl_label (as an item's score); null when off.",
    )
    items: list[Item]
    raw_output: str
    error: str | None = None
    num_generated_tokens: int = 0
    model: str
    adapter: str | None = None
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


def text_problem(text: str) -> str | None:
    """Why ``text`` holds a character the service refuses (first one, with its index), or None."""
    m = _REFUSED.search(text)
    if m is None:
        return None
    code = ord(m.group())
    kind = (
        "an unpaired surrogate"
        if 0xD800 <= code <= 0xDFFF
        else "a NUL character"
        if code == 0
        else "a control character"
    )
    return (
        f"text holds {kind} (U+{code:04X}) at character {m.start()}; send Unicode text "
        "(tab, line feed and carriage return are the only control characters accepted)"
    )


def _echo(value: str) -> str:
    """``value`` quoted for a message: shortened, every unusual character escaped."""
    short = value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "..."
    return ascii(short) if _REFUSED.search(short) else repr(short)


def check_request(
    req: ExtractRequest,
    registry: TaskRegistry,
    max_text_chars: int,
    where: str = "",
    adapters: Collection[str] = (),
) -> None:
    """Raise :class:`ApiError` when ``req`` cannot be served (``adapters``: the names the service
    holds); ``where`` prefixes the message."""
    if not req.text.strip():
        raise ApiError(422, f"{where}text is empty")
    if len(req.text) > max_text_chars:
        raise ApiError(
            413, f"{where}text has {len(req.text)} characters; the limit is {max_text_chars}"
        )
    problem = text_problem(req.text)
    if problem is not None:
        raise ApiError(422, where + problem)
    if req.dataset not in registry:
        raise ApiError(
            422,
            f"{where}unknown dataset {_echo(req.dataset)}; known datasets: "
            f"{', '.join(sorted(registry))}",
        )
    if req.adapter is not None and req.adapter not in adapters:
        known = ", ".join(sorted(adapters)) or "none (the service has no adapters)"
        raise ApiError(422, f"{where}unknown adapter {_echo(req.adapter)}; known adapters: {known}")


def check_batch(
    batch: BatchRequest,
    registry: TaskRegistry,
    max_text_chars: int,
    max_items: int,
    adapters: Collection[str] = (),
) -> None:
    """Check every text of a batch; the message names the first bad one by index."""
    if not batch.requests:
        raise ApiError(422, "requests is empty")
    if len(batch.requests) > max_items:
        raise ApiError(413, f"{len(batch.requests)} texts in one batch; the limit is {max_items}")
    for i, req in enumerate(batch.requests):
        check_request(req, registry, max_text_chars, where=f"requests[{i}]: ", adapters=adapters)


def client_error(error: str | None, request_id: str) -> str | None:
    """The row error a caller may see: the Extractor's own messages about the text or the output
    as they are; anything else (an engine exception) as one stable line naming the request id,
    so internal exception text stays in the service log."""
    if error is None or error.startswith(PUBLIC_ROW_ERRORS):
        return error
    return (
        f"generation failed for this text (an internal error; the service log has the "
        f"details under request id {request_id})"
    )


def to_response(
    row: Mapping, req: ExtractRequest, *, request_id: str, model: str, latency_ms: float
) -> ExtractResponse:
    """An Extractor output row (prediction, pred_tl_label, pred_items, error, ...) as a response."""
    items = [
        Item(**{k: it.get(k) for k in Item.model_fields}) for it in (row.get(S.PRED_ITEMS) or ())
    ]
    return ExtractResponse(
        request_id=request_id,
        dataset=req.dataset,
        tl_label=row.get(S.PRED_TL_LABEL),
        tl_score=row.get(S.TL_SCORE),
        items=items,
        raw_output=row.get(S.PREDICTION) or "",
        error=client_error(row.get(S.ERROR), request_id),
        num_generated_tokens=int(row.get(S.NUM_GENERATED_TOKENS) or 0),
        model=model,
        adapter=req.adapter,
        latency_ms=round(latency_ms, 3),
    )
