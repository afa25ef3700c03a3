"""Browser test of the Search page (Playwright driving Debian's Chromium): type a query, see the results with
their thumbnails, see an error with its caret, and jump to the map with the matches highlighted."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def search_server(tmp_path_factory):
    """The app (``tests/browser/serve.py``, instant stand-in projector) on a small synthetic store."""
    from tests.app_fixtures import build_app_store

    base = tmp_path_factory.mktemp("search_browser")
    store = build_app_store(base / "store", per_run=40)
    port = _free_port()
    log = open(base / "server.log", "wb")  # noqa: SIM115  (closed below, after the server stops)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/browser/serve.py"), "--port", str(port), "--store",
                             str(store), "--stand-in-projector"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail(f"the app did not start: {(base / 'server.log').read_text()[-2000:]}")
        time.sleep(0.3)
    yield dict(url=url, store=store)
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def _submit(page, label: str, text: str) -> None:
    box = page.get_by_role("textbox", name=label, exact=True)
    box.fill(text)
    page.get_by_role("button", name="Search", exact=True).click()


def test_search_results_then_show_on_map(search_server, page):
    from playwright.sync_api import expect

    from store import Store
    from store.search import SafeSearch

    query = '"golden retriever" OR cat'
    with SafeSearch(Store(search_server["store"])) as s:
        expected = s.keyword(query).sample_ids
    assert len(expected) == 12

    page.goto(f"{search_server['url']}/search")
    _submit(page, "Keywords", query)
    expect(page.get_by_text("12 matching samples")).to_be_visible()
    thumbs = page.locator("img[src*='/app/static/thumbs/']")
    expect(thumbs).to_have_count(12)
    # the thumbnails really load (served from the static folder)
    page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll(\"img[src*='/app/static/thumbs/']\")];"
        " return imgs.length === 12 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
    expect(page.get_by_text("a golden retriever playing in snow").first).to_be_visible()
    assert "sq=" in page.url and "sm=keywords" in page.url

    page.get_by_role("button", name="Show on map").click()
    expect(page.get_by_text("Highlighting 12 samples from a search link")).to_be_visible()
    # Explore is the default page (served at the root); the URL carries the highlight
    assert "/search" not in page.url and re.search(r"[?&]hl=", page.url), page.url
    page.wait_for_function(
        "() => window.dmvMap && window.dmvMap.wrap.dataset.ready === '1'"
        " && Array.isArray(window.dmvMap.data.highlight) && window.dmvMap.data.highlight.length === 12")
    drawn = page.evaluate("() => window.dmvMap.traceIds[1]")  # the 'matches' overlay trace of the map
    assert sorted(drawn) == sorted(expected)


def test_sql_error_shows_a_caret_and_a_shared_link_reruns(search_server, page):
    from playwright.sync_api import expect

    page.goto(f"{search_server['url']}/search")
    page.get_by_text("SQL WHERE", exact=True).click()
    _submit(page, "WHERE", "category = 'food' AND nope > 2")
    expect(page.get_by_text("Referenced column \"nope\" not found", exact=False)).to_be_visible()
    caret = page.locator("code").filter(has_text="nope > 2")
    expect(caret).to_contain_text("^")

    page.goto(f"{search_server['url']}/search?sq=step%20%3D%202&sm=sql&smodel=digits")
    expect(page.get_by_text("60 matching samples")).to_be_visible()
