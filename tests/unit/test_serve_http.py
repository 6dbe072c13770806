"""The HTTP contract of the serving app without Ray: status codes for every bad request, the body
limit applied before parsing, the task listing, and the response shape from real Extractor-style
rows. Bad requests must be refused before the model is reached, so ``extract`` here fails the test
if it is ever called for one."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from giellm_ray.formats import DEFAULT_REGISTRY, ground_items, parse
from giellm_ray.serve.api import ExtractRequest, to_response
from giellm_ray.serve.config import HTTPConfig
from giellm_ray.serve.http import build_http_app

TEXT = "レッドフォックス株式会社は、東京都千代田区に本社を置くITサービス企業である。"
# What a model could write for TEXT under SCNM, and something that does not parse.
GOOD_OUTPUT = "<技術>固有表現抽出:法人名;レッドフォックス株式会社:地名;東京都千代田区"
BAD_OUTPUT = "とりとめのない出力"


def _row(output: str, text: str, dataset: str) -> dict:
    """The row an Extractor returns for ``output`` (same parse + grounding)."""
    res = parse(output, DEFAULT_REGISTRY[dataset])
    return {"prediction": output, "pred_tl_label": res.tl_label,
            "pred_items": ground_items(text, res.items), "error": res.error,
            "num_generated_tokens": len(output)}


@pytest.fixture()
def client():
    calls: list[list[dict]] = []

    async def extract(rows: list[dict]) -> list[dict]:
        calls.append(rows)
        return [_row(GOOD_OUTPUT if "株式会社" in r["text"] else BAD_OUTPUT, r["text"], r["dataset"])
                for r in rows]

    http = HTTPConfig(max_body_bytes=4096, max_text_chars=200, max_batch_items=4)
    app = build_http_app(DEFAULT_REGISTRY, http, "tiny", extract)
    with TestClient(app) as c:
        c.calls = calls
        yield c


def test_extract_returns_label_items_offsets(client):
    r = client.post("/v1/extract", json={"text": TEXT, "dataset": "SCNM"},
                    headers={"X-Request-ID": "abc123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tl_label"] == "技術" and body["error"] is None
    assert body["request_id"] == "abc123" and body["model"] == "tiny"
    assert body["raw_output"] == GOOD_OUTPUT
    first = body["items"][0]
    assert first["label"] == "法人名" and TEXT[first["start"]:first["end"]] == first["span"]
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
    ],
)
def test_bad_single_requests(client, body, status, words):
    r = client.post("/v1/extract", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert r.json()["request_id"]
    assert client.calls == []


def test_malformed_json_is_400(client):
    r = client.post("/v1/extract", content=b'{"text": "abc", "dataset": ',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["detail"]
    assert client.calls == []


def test_oversized_body_is_413_before_parsing(client):
    # Not even valid JSON: the limit must answer before the parser would say 400.
    r = client.post("/v1/extract", content=b"{" + b"x" * 5000,
                    headers={"content-type": "application/json"})
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
    row = {"prediction": "x", "pred_tl_label": None, "error": "no label",
           "pred_items": [{"label": "r", "span": "a", "tail": "b", "start": None, "end": None,
                           "tail_start": 3, "tail_end": 4}], "num_generated_tokens": 3}
    resp = to_response(row, ExtractRequest(text="t", dataset="TCREE"), request_id="r",
                       model="m", latency_ms=1.23456)
    assert resp.items[0].tail == "b" and resp.items[0].start is None and resp.latency_ms == 1.235
