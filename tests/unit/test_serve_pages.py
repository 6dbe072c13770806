"""The pages of the serving app without Ray: ``/`` (the try-it page), its static assets, and the
OpenAPI docs (``/docs``, ``/redoc``) served from local files: no page names an asset on another
host, and every asset a page names is served by the app."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from giellm_ray.formats import DEFAULT_REGISTRY
from giellm_ray.serve.config import HTTPConfig
from giellm_ray.serve.http import build_http_app


@pytest.fixture()
def client():
    async def extract(rows):  # pages never call it
        raise AssertionError("no extraction expected")

    with TestClient(build_http_app(DEFAULT_REGISTRY, HTTPConfig(), "tiny", extract)) as c:
        yield c


def _assets(page: str) -> list[str]:
    return re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page) + re.findall(
        r"(?:url|openapi_url|spec-url)[\"']?\s*[:=]\s*[\"']([^\"']+)[\"']", page
    )


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_name_only_local_assets_and_all_are_served(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", r.text.replace("http://www.w3.org", "")), r.text[:2000]
    assets = [a for a in _assets(r.text) if not a.startswith(("data:", "#"))]
    assert assets, r.text
    base = "/" if path == "/" else path.rsplit("/", 1)[0] + "/"
    for a in assets:
        url = a if a.startswith("/") else base + a
        got = client.get(url)
        assert got.status_code == 200, (path, a, got.status_code)


def test_page_script_uses_the_json_api_only(client):
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    calls = set(re.findall(r'fetch\("([^"]+)"', js.text))
    assert calls == {"v1/tasks", "v1/extract"}
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", js.text)
    assert client.get("/static/style.css").status_code == 200


def test_openapi_schema_still_lists_the_api_not_the_pages(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/extract" in paths and "/" not in paths and "/docs" not in paths
