"""Browser test of the Search page (Playwright driving Debian's Chromium): type a query, see the results with
their thumbnails, see an error with its caret, and jump to the map with the matches highlighted."""

from __future__ import annotations

import re

import pytest

from tests.browser import harness as h

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def search_server(tmp_path_factory):
    """The app on a store of its own: the session's browser store may be the demo store, which has no prompts."""
    from tests.app_fixtures import build_app_store

    base = tmp_path_factory.mktemp("search_browser")
    store = build_app_store(base / "store", per_run=40)
    with h.AppServer(store, stand_in_projector=True, log=base / "streamlit.log") as server:
        yield dict(url=server.url.rstrip("/"), store=store)


@pytest.fixture
def page(chromium, search_server):
    """A fresh browser context on the search server (the conftest's ``page`` belongs to its own server)."""
    context = chromium.new_context(viewport=h.VIEWPORT)
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
    expect(page.get_by_text('there is no column "nope"', exact=False)).to_be_visible()
    caret = page.locator("code").filter(has_text="nope > 2")
    expect(caret).to_contain_text("^")

    page.goto(f"{search_server['url']}/search?sq=step%20%3D%202&sm=sql&smodel=digits")
    expect(page.get_by_text("60 matching samples")).to_be_visible()
