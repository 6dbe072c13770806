"""The HTTP contract of the serving app without Ray: status codes for every bad request, the body
limit applied before parsing, the task listing, and the response shape from real Extractor-style
rows. Bad requests (wrong types: strict, no coercion; refused characters) must be refused before
the model is reached: every bad-request test checks that ``extract`` was never called. Internal
exception text never reaches a response body (row errors, a failing extract, no replica)."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient

from giellm_ray.formats import DEFAULT_REGISTRY, ground_items, parse
from giellm_ray.serve.api import ApiError, ExtractRequest, to_response
from giellm_ray.serve.config import HTTPConfig
from giellm_ray.serve.http import build_http_app

TEXT = "レッドフォックス株式会社は、東京都千代田区に本社を置くITサービス企業である。"
# What a model could write for TEXT under SCNM, and something that does not parse.
GOOD_OUTPUT = "<技術>固有表現抽出:法人名;レッドフォックス株式会社:地名;東京都千代田区"
BAD_OUTPUT = "とりとめのない出力"


def _row(output: str, text: str, dataset: str) -> dict:
    """The row an Extractor returns for ``output`` (same parse + grounding)."""
    res = parse(output, DEFAULT_REGISTRY[dataset])
    return {
        "prediction": output,
        "pred_tl_label": res.tl_label,
        "pred_items": ground_items(text, res.items),
        "error": res.error,
        "num_generated_tokens": len(output),
    }


@pytest.fixture()
def client():
    calls: list[list[dict]] = []

    async def extract(rows: list[dict]) -> list[dict]:
        calls.append(rows)
        return [
            _row(GOOD_OUTPUT if "株式会社" in r["text"] else BAD_OUTPUT, r["text"], r["dataset"])
            for r in rows
        ]

    http = HTTPConfig(max_body_bytes=4096, max_text_chars=200, max_batch_items=4)
    app = build_http_app(DEFAULT_REGISTRY, http, "tiny", extract)
    with TestClient(app) as c:
        c.calls = calls
        yield c


def test_extract_returns_label_items_offsets(client):
    r = client.post(
        "/v1/extract", json={"text": TEXT, "dataset": "SCNM"}, headers={"X-Request-ID": "abc123"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tl_label"] == "技術" and body["error"] is None
    assert body["request_id"] == "abc123" and body["model"] == "tiny"
    assert body["raw_output"] == GOOD_OUTPUT
    first = body["items"][0]
    assert first["label"] == "法人名" and TEXT[first["start"] : first["end"]] == first["span"]
    assert isinstance(body["latency_ms"], float)


def test_max_new_tokens_reaches_the_extractor(client):
    r = client.post("/v1/extract", json={"text": TEXT, "dataset": "SCNM", "max_new_tokens": 7})
    assert r.status_code == 200, r.text
    assert [row["max_new_tokens"] for row in client.calls[-1]] == [7]
    client.post("/v1/extract", json={"text": TEXT, "dataset": "SCNM"})
    assert [row["max_new_tokens"] for row in client.calls[-1]] == [None]


def test_unparseable_output_is_200_with_error(client):
    r = client.post("/v1/extract", json={"text": "画面が暗い。", "dataset": "SCNM"})
    assert r.status_code == 200
    body = r.json()
    assert body["error"] and body["raw_output"] == BAD_OUTPUT and body["items"] == []


def test_batch_keeps_order(client):
    reqs = [{"text": "画面が暗い。", "dataset": "SCPOS:RW"}, {"text": TEXT, "dataset": "SCNM"}]
    r = client.post("/v1/extract/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["dataset"] for x in results] == ["SCPOS:RW", "SCNM"]
    assert results[0]["error"] and results[1]["tl_label"] == "技術"
    assert len(client.calls[-1]) == 2


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"text": "", "dataset": "SCNM"}, 422, "empty"),
        ({"text": "   ", "dataset": "SCNM"}, 422, "empty"),
        ({"text": "あ" * 201, "dataset": "SCNM"}, 413, "limit is 200"),
        ({"text": TEXT, "dataset": "NOPE"}, 422, "SCPOS:RW"),
        ({"text": TEXT}, 422, "dataset"),
        ({"text": TEXT, "dataset": "SCNM", "extra": 1}, 422, "extra"),
        ({"text": 5, "dataset": "SCNM"}, 422, "text"),
        ({"text": TEXT, "dataset": "SCNM", "max_new_tokens": 0}, 422, "max_new_tokens"),
        # Strict types: a coercion would hide the client's bug.
        ({"text": TEXT, "dataset": "SCNM", "max_new_tokens": "5"}, 422, "max_new_tokens"),
        ({"text": TEXT, "dataset": "SCNM", "max_new_tokens": True}, 422, "max_new_tokens"),
        ({"text": TEXT, "dataset": "SCNM", "max_new_tokens": 5.0}, 422, "max_new_tokens"),
        ({"text": TEXT, "dataset": "SCNM", "max_new_tokens": [5]}, 422, "max_new_tokens"),
        ({"text": None, "dataset": "SCNM"}, 422, "text"),
        ({"text": ["a"], "dataset": "SCNM"}, 422, "text"),
        ({"text": "あ", "dataset": 5}, 422, "dataset"),
        ({"text": TEXT, "dataset": True}, 422, "dataset"),
        # Characters the service refuses (api._REFUSED says why), named with their index.
        (
            {"text": "あ\ud800い", "dataset": "SCNM"},
            422,
            "unpaired surrogate (U+D800) at character 1",
        ),
        ({"text": "\udfff", "dataset": "SCNM"}, 422, "U+DFFF"),
        ({"text": "ab\x00", "dataset": "SCNM"}, 422, "NUL character (U+0000) at character 2"),
        ({"text": "\x07ベル", "dataset": "SCNM"}, 422, "control character (U+0007)"),
        ({"text": "x\x1b[31m", "dataset": "SCNM"}, 422, "U+001B"),
        ({"text": "del\x7f", "dataset": "SCNM"}, 422, "U+007F"),
        ({"text": "c1\x85", "dataset": "SCNM"}, 422, "U+0085"),
        ({"text": TEXT, "dataset": "\ud800" + "X" * 3000}, 422, "'\\ud800XXX"),
    ],
)
def test_bad_single_requests(client, body, status, words):
    # json.dumps escapes a lone surrogate as JSON allows (\ud800); it cannot travel as UTF-8.
    r = client.post(
        "/v1/extract", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert r.json()["request_id"]
    assert client.calls == []


def test_malformed_json_is_400(client):
    r = client.post(
        "/v1/extract",
        content=b'{"text": "abc", "dataset": ',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    assert client.calls == []


def test_oversized_body_is_413_before_parsing(client):
    # Not even valid JSON: the limit must answer before the parser would say 400.
    r = client.post(
        "/v1/extract", content=b"{" + b"x" * 5000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "4096" in r.json()["detail"]

    def chunks():  # no Content-Length: the guard counts streamed bytes
        for _ in range(10):
            yield b"x" * 1000

    r = client.post("/v1/extract", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.calls == []
    ok = client.post("/v1/extract", json={"text": TEXT, "dataset": "SCNM"})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("reqs", "status", "words"),
    [
        ([], 422, "empty"),
        ([{"text": TEXT, "dataset": "SCNM"}] * 5, 413, "limit is 4"),
        ([{"text": TEXT, "dataset": "SCNM"}, {"text": "", "dataset": "SCNM"}], 422, "requests[1]"),
    ],
)
def test_bad_batches(client, reqs, status, words):
    r = client.post("/v1/extract/batch", json={"requests": reqs})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert client.calls == []


def test_tasks_health_and_docs(client):
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert tasks == json.loads(json.dumps(DEFAULT_REGISTRY.to_dict(), ensure_ascii=False))
    assert tasks["SCNM"]["instruction"] == "固有表現抽出"
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/extract" in schema["paths"] and "/v1/extract/batch" in schema["paths"]


def test_to_response_keeps_tail_and_missing_offsets():
    row = {
        "prediction": "x",
        "pred_tl_label": None,
        "error": "no label",
        "pred_items": [
            {
                "label": "r",
                "span": "a",
                "tail": "b",
                "start": None,
                "end": None,
                "tail_start": 3,
                "tail_end": 4,
            }
        ],
        "num_generated_tokens": 3,
    }
    resp = to_response(
        row,
        ExtractRequest(text="t", dataset="TCREE"),
        request_id="r",
        model="m",
        latency_ms=1.23456,
    )
    assert resp.items[0].tail == "b" and resp.items[0].start is None and resp.latency_ms == 1.235


def _post_raw(client, url: str, raw: bytes):
    return client.post(url, content=raw, headers={"content-type": "application/json"})


def test_accepted_characters_reach_the_model_unchanged(client):
    # TAB/LF/CR, ZWJ, BOM, a bidi mark, private use, and an emoji sent as an escaped surrogate
    # pair (the JSON parser joins the pair into one character).
    raw = (
        '{"text": "株式会社\\t東京\\n大阪\\r\\u200d\\ufeff\\u200f\\ue000\\ud83d\\ude00", '
        '"dataset": "SCNM"}'
    )
    r = _post_raw(client, "/v1/extract", raw.encode())
    assert r.status_code == 200, r.text
    assert client.calls[-1][0]["text"] == "株式会社\t東京\n大阪\r\u200d\ufeff\u200f\ue000\U0001f600"


def test_a_batch_with_one_bad_text_is_refused_whole_naming_it(client):
    good = {"text": TEXT, "dataset": "SCNM"}
    cases = [
        ({"text": "a\ud800", "dataset": "SCNM"}, "requests[1]: text holds an unpaired"),
        ({"text": "a\x00", "dataset": "SCNM"}, "requests[1]: text holds a NUL"),
        ({**good, "max_new_tokens": "5"}, "requests.1.max_new_tokens"),
    ]
    for bad, words in cases:
        raw = json.dumps({"requests": [good, bad, good]}).encode()
        r = _post_raw(client, "/v1/extract/batch", raw)
        assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert client.calls == []


def test_refused_dataset_is_echoed_short_and_escaped(client):
    raw = json.dumps({"text": TEXT, "dataset": "\x00" * 500}).encode()
    r = _post_raw(client, "/v1/extract", raw)
    detail = r.json()["detail"]
    assert r.status_code == 422 and "'\\x00\\x00" in detail and len(detail) < 400


def test_body_that_is_not_utf8_is_400_with_a_request_id(client):
    r = _post_raw(client, "/v1/extract", b'{"text": "\xff\xfe", "dataset": "SCNM"}')
    assert r.status_code == 400 and r.json()["request_id"]
    assert client.calls == []


def _app(extract) -> TestClient:
    http = HTTPConfig(max_body_bytes=4096, max_text_chars=200, max_batch_items=4)
    return TestClient(
        build_http_app(DEFAULT_REGISTRY, http, "tiny", extract), raise_server_exceptions=False
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def serve_log():
    handler = _Records()
    log = logging.getLogger("ray.serve")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(old_level)


INTERNAL = "engine error: TypeError: TextEncodeInput must be Union[TextInputSequence, ...]"


def test_internal_row_errors_are_logged_not_shown(serve_log):
    errors = {
        "内部": INTERNAL,
        "長い": "prompt too long: 900 tokens; the model takes 512 positions",
        "壊れ": "internal error while parsing the output: KeyError: 'x'",
    }

    async def extract(rows):
        return [
            {**_row(BAD_OUTPUT, r["text"], r["dataset"]), "error": errors[r["text"]]} for r in rows
        ]

    with _app(extract) as c:
        reqs = [{"text": t, "dataset": "SCNM"} for t in errors]
        r = c.post("/v1/extract/batch", json={"requests": reqs}, headers={"X-Request-ID": "rid-7"})
    assert r.status_code == 200, r.text
    shown = [x["error"] for x in r.json()["results"]]
    assert shown[1] == errors["長い"]  # about the caller's own text: shown as it is
    for e in (shown[0], shown[2]):
        assert e.startswith("generation failed for this text") and "rid-7" in e
    assert "TypeError" not in r.text and "KeyError" not in r.text
    assert any("rid-7" in line and INTERNAL in line for line in serve_log)


def test_a_failing_extract_is_a_500_without_exception_text(serve_log):
    async def extract(rows):
        raise RuntimeError("secret internal state 0xdeadbeef")

    with _app(extract) as c:
        r = c.post(
            "/v1/extract", json={"text": TEXT, "dataset": "SCNM"}, headers={"X-Request-ID": "rid-9"}
        )
    assert r.status_code == 500 and r.json()["request_id"] == "rid-9"
    assert "secret" not in r.text and "RuntimeError" not in r.text and "rid-9" in r.json()["detail"]


def test_no_replica_is_a_503_with_retry_after():
    async def extract(rows):
        raise ApiError(503, "no model replica could answer; retry later", retry_after_s=7)

    with _app(extract) as c:
        r = c.post("/v1/extract/batch", json={"requests": [{"text": TEXT, "dataset": "SCNM"}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert "retry later" in r.json()["detail"] and r.json()["request_id"]
