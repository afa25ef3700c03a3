"""Fixtures of the browser tests: one app server and one headless Chromium for the whole module.

The server opens ``$DMD2VIZ_BROWSER_STORE`` if set, else the demo store when ``./data`` holds one, else a
synthetic store built for the session. It
uses the instant stand-in projection engine unless ``DMD2VIZ_BROWSER_REAL_PROJECTOR=1`` (then the first map
waits for a real UMAP fit): these tests are about the page, the map component and the browser.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import harness

ROOT = Path(__file__).resolve().parents[2]


def _demo_store() -> Path | None:
    data = ROOT / "data"
    if (data / "samples").is_dir() and any((data / "samples").iterdir()):
        return data
    return None


@pytest.fixture(scope="session")
def browser_store(tmp_path_factory) -> Path:
    if os.environ.get("DMD2VIZ_BROWSER_STORE"):
        return Path(os.environ["DMD2VIZ_BROWSER_STORE"])
    found = _demo_store()
    if found is not None:
        return found
    from tests.app_fixtures import build_app_store

    return build_app_store(tmp_path_factory.mktemp("browser") / "store")


@pytest.fixture(scope="session")
def app_server(browser_store, tmp_path_factory):
    real = os.environ.get("DMD2VIZ_BROWSER_REAL_PROJECTOR") == "1"
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
    with harness.AppServer(browser_store, stand_in_projector=not real, log=log) as server:
        yield server


@pytest.fixture(scope="session")
def chromium():
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not Path(harness.CHROMIUM).exists():
        pytest.skip(f"{harness.CHROMIUM} is not installed")
    with playwright_api.sync_playwright() as p:
        browser = harness.launch(p)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def browser_context(chromium, app_server):
    """One context for the session: its HTTP cache keeps plotly.js (4.8 MB) across tests, as a user's would."""
    context = chromium.new_context(viewport=harness.VIEWPORT, accept_downloads=True)
    yield context
    context.close()


@pytest.fixture
def page(browser_context):
    pg = browser_context.new_page()  # a new page is a new Streamlit session
    pg.set_default_timeout(30_000)
    yield pg
    pg.close()


@pytest.fixture(scope="session")
def previews_server(tmp_path_factory):
    """An app server on `tests.browser.previews_store`'s store (stand-in projection engine), shared by the
    layout and walk tests; its URL without the trailing slash."""
    from tests.browser.previews_store import write_store

    base = tmp_path_factory.mktemp("previews_browser")
    write_store(base / "store")
    with harness.AppServer(base / "store", stand_in_projector=True, log=base / "streamlit.log") as server:
        yield server.url.rstrip("/")
