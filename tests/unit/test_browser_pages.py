"""The try-it page at ``/`` and the error report, driven by a real headless Chromium (Debian's
``chromium`` + ``chromium-driver``, through selenium; no browser download).

The page test serves the real HTTP app (``build_http_app``, as the Serve ingress runs it) with the
real Extractor on the tiny model (HF engine, constrained decoding), loads ``/``, submits a text,
and checks that the highlighted pieces cover exactly the offsets of the API's items; a relation
answer draws one arrow per relation. The report test scores held-out rows of the shipped sample
with the same model, runs ``giellm eval``'s ``evaluate`` and checks that each shown row's marks
cover exactly its items in ``rows.parquet``. Both check from Chrome's performance log (CDP Network
events) that no request leaves 127.0.0.1, and save screenshots under ``tests/artifacts/`` (kept
by CI in the clone dir; the paths are printed). Skipped with the reason when chromium, its driver
or selenium is absent."""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import shutil
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TEXT = "山田太郎は大阪大学を卒業し、トヨタ自動車に入社した。"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.skip(f"{what} not found at {path} (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def requested_urls(driver) -> list[str]:
    """Every URL the pages asked for since the last call (CDP ``Network.requestWillBeSent``)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def assert_local_only(urls: list[str]) -> None:
    assert urls, "the performance log recorded no request"
    # data:, blob: and chrome:// (the browser's own built-in resources) never touch the network;
    # every other URL must be on 127.0.0.1.
    in_browser = ("data", "blob", "chrome", "about")
    outside = [
        u
        for u in urls
        if urlparse(u).scheme not in in_browser and urlparse(u).hostname != "127.0.0.1"
    ]
    assert not outside, f"requests left 127.0.0.1: {outside}"


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1200, min(max(600, height + 40), 4000))
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def wait_for(driver, script: str, timeout_s: float = 120.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.2).until(
        lambda d: d.execute_script(script)
    )


def covered(driver, container: str) -> dict[int, set[int]]:
    """Per item index, the character offsets its ``<mark>`` pieces cover inside ``container``."""
    pieces = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' mark')].map(m => "
        "[m.dataset.items, +m.dataset.start, +m.dataset.end])",
        container,
    )
    out: dict[int, set[int]] = {}
    for items, start, end in pieces:
        for i in map(int, items.split(",")):
            out.setdefault(i, set()).update(range(start, end))
    return out


def expected(items) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for i, it in enumerate(items):
        chars = set()
        if it.get("start") is not None:
            chars.update(range(it["start"], it["end"]))
        if it.get("tail_start") is not None:
            chars.update(range(it["tail_start"], it["tail_end"]))
        if chars:
            out[i] = chars
    return out


@pytest.fixture(scope="module")
def extractor(tiny_model_dir):
    """The real Extractor on the tiny model (one place that builds it)."""
    from giellm_ray.generation.build import build_extractor
    from giellm_ray.generation.config import GenerationConfig
    from giellm_ray.model.loader import ModelConfig

    return build_extractor(
        "hf",
        ModelConfig(name_or_path=tiny_model_dir),
        GenerationConfig(max_new_tokens=48),
        constrained=True,
        device="cpu",
    )


class Server:
    """The FastAPI app under uvicorn on a loopback port, in a thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _http_app(registry, extract):
    from giellm_ray.serve.config import HTTPConfig
    from giellm_ray.serve.http import build_http_app

    return build_http_app(registry, HTTPConfig(), "tiny", extract)


def _submit(browser, base: str, text: str, dataset: str) -> dict:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(base + "/")
    wait_for(browser, "return document.body.dataset.state === 'ready'")
    box = browser.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    Select(browser.find_element(By.ID, "dataset")).select_by_value(dataset)
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, "return document.body.dataset.state === 'done'")
    return browser.execute_script("return window.lastResponse")


def test_page_highlights_the_api_items_and_stays_local(browser, extractor):
    from giellm_ray.formats import DEFAULT_REGISTRY

    async def extract(rows):
        return await asyncio.to_thread(extractor.extract, rows)

    with Server(_http_app(DEFAULT_REGISTRY, extract)) as base:
        requested_urls(browser)  # drop what came before
        body = _submit(browser, base, TEXT, "SCNM")
        assert body["dataset"] == "SCNM" and body["raw_output"]
        # The same request straight to the API gives the same items (greedy decoding).
        import httpx

        api = httpx.post(
            base + "/v1/extract", json={"text": TEXT, "dataset": "SCNM"}, timeout=120
        ).json()
        assert body["items"] == api["items"] and body["tl_label"] == api["tl_label"]
        assert any(it["start"] is not None for it in api["items"]), api  # constrained: spans
        assert covered(browser, "#highlighted") == expected(api["items"])
        shown = browser.execute_script(
            "return [...document.querySelectorAll('#items tbody tr')]"
            ".map(r => r.children[2].textContent)"
        )
        assert shown == [it["span"] for it in api["items"]]
        assert browser.find_element("id", "tl-label").text == (api["tl_label"] or "(none)")
        assert browser.find_element("id", "raw").text == api["raw_output"].strip()
        assert float(browser.find_element("id", "latency").text) > 0
        title = browser.execute_script("return document.querySelector('#highlighted mark').title")
        assert api["items"][0]["label"] in title and "score" in title
        screenshot(browser, "page.png")
        browser.get(base + "/docs")
        wait_for(browser, "return !!document.querySelector('.opblock')", 60)
        screenshot(browser, "docs.png")
        assert_local_only(requested_urls(browser))


def test_page_draws_relations_head_to_tail(browser):
    from giellm_ray.formats import DEFAULT_REGISTRY, ground_items, parse

    task = DEFAULT_REGISTRY["TCREE"].replace(relation_labels=("卒業", "入社"))
    registry = DEFAULT_REGISTRY.with_task(task)
    output = "<トピックニュース>関係抽出:山田太郎;卒業;大阪大学:山田太郎;入社;トヨタ自動車"

    async def extract(rows):  # a fixed model answer, parsed and grounded as the Extractor does
        res = parse(output, task)
        return [
            {
                "prediction": output,
                "pred_tl_label": res.tl_label,
                "error": res.error,
                "pred_items": ground_items(r["text"], res.items),
                "num_generated_tokens": 20,
            }
            for r in rows
        ]

    with Server(_http_app(registry, extract)) as base:
        requested_urls(browser)
        body = _submit(browser, base, TEXT, "TCREE")
        assert [it["tail"] for it in body["items"]] == ["大阪大学", "トヨタ自動車"]
        assert covered(browser, "#highlighted") == expected(body["items"])
        arrows = browser.execute_script(
            "return [...document.querySelectorAll('#arrows path.relation')].map(p => "
            "[+p.dataset.item, p.getAttribute('d')])"
        )
        assert [a[0] for a in arrows] == [0, 1]
        # Each arrow starts above the middle of its head's first piece.
        for i, d in arrows:
            x_head = browser.execute_script(
                "const v = document.getElementById('view').getBoundingClientRect();"
                "const r = document.querySelector('mark.head-' + arguments[0])"
                ".getBoundingClientRect(); return r.left + r.width / 2 - v.left",
                i,
            )
            assert abs(float(d.split(" ")[0].lstrip("M").split(",")[0]) - x_head) < 1, d
        screenshot(browser, "page-relations.png")
        assert_local_only(requested_urls(browser))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_report_shows_wrong_rows_with_their_items(browser, extractor, tmp_path):
    from giellm_ray import schema
    from giellm_ray.metrics.evaluate import evaluate
    from giellm_ray.sample import sample_path

    test = pq.read_table(sample_path("test"))
    datasets = test.column("dataset").to_pylist()
    keep = [
        i
        for ds in ("SCNM", "SCPOS:RW")
        for i in [k for k, d in enumerate(datasets) if d == ds][:20]
    ]
    rows = test.take(keep).to_pylist()
    outs = extractor.extract(rows)
    scored = [
        {**r, **{k: o.get(k) for k in (schema.PREDICTION, schema.PRED_TL_LABEL, schema.PRED_ITEMS)}}
        for r, o in zip(rows, outs, strict=True)
    ]
    pq.write_table(pa.Table.from_pylist(scored), tmp_path / "scored.parquet")
    out = tmp_path / "report"
    evaluate(str(tmp_path / "scored.parquet"), str(out), sample_size=15)
    truth = {r["id"]: r for r in pq.read_table(out / "rows.parquet").to_pylist()}

    handler = functools.partial(_Quiet, directory=str(out))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        requested_urls(browser)
        browser.get(base + "/report.html")
        assert "GIELLM error report" in browser.title
        assert "synthetic sample" in browser.find_element("tag name", "body").text
        screenshot(browser, "report.png")
        links = browser.execute_script(
            "return [...document.querySelectorAll('a[href^=\"report-\"]')].map(a => a.href)"
        )
        assert links, "no page of wrong rows"
        checked = 0
        for link in links:
            browser.get(link)
            ids = browser.execute_script(
                "return [...document.querySelectorAll('div.row')].map(d => d.id)"
            )
            for rid in ids:
                row = truth[rid]
                assert not row["all_match"]
                sel = f"div.row[id='{rid}']"
                assert covered(browser, f"{sel} .gold") == expected(row["target_items"])
                assert covered(browser, f"{sel} .pred") == expected(row["pred_items"])
                checked += 1
        wrong = Counter(
            r["dataset"] for r in truth.values() if not r["all_match"] and not r["target_error"]
        )
        assert checked == sum(min(n, 15) for n in wrong.values())  # 15 sampled per dataset
        browser.get(links[0])
        screenshot(browser, "report-page.png")
        assert_local_only(requested_urls(browser))
    finally:
        httpd.shutdown()
