"""Browser + HTTP: the thumbnails the map shows are served only under the store's secret folder name; the
name the old code computed from the store's path (sha1) answers 404, and so does the secret (issue 12,
item 4)."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import harness as h

pytestmark = pytest.mark.browser


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _status(url: str) -> int:
    return _get(url)[0]


def test_thumbnail_urls_cannot_be_computed_from_the_store_path(page, app_server, browser_store):
    from app.static_files import THUMB_EXT, thumb_name

    page.goto(app_server.url)
    h.wait_map(page)
    sid = h.isolated_ids(page, 1)[0]
    h.hover(page, sid)
    src = page.evaluate("() => document.querySelector('.dmv-tip img').src")
    assert _status(src) == 200  # what the map shows is served

    name = thumb_name(sid) + THUMB_EXT
    legacy = hashlib.sha1(str(Path(browser_store).expanduser().resolve()).encode()).hexdigest()[:12]
    assert f"/thumbs/{legacy}/" not in src
    assert _status(f"{app_server.url}app/static/thumbs/{legacy}/{name}") == 404
    secret = (Path(__file__).resolve().parents[2] / "app" / ".static_secret").read_bytes().strip()
    for path in ("app/static/.static_secret", "app/static/../.static_secret", "app/static/%2e%2e/.static_secret"):
        status, body = _get(app_server.url + path)
        assert 400 <= status < 500 and secret not in body, (path, status)
