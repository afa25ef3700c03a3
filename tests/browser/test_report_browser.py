"""The report (`python -m pipeline report`) in Chromium, opened from a file with the network cut: it asks for
nothing but itself, draws its map, and hovering a point shows that sample's thumbnail."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.project import ProjectionParams, default_projector
from pipeline.report import write_report
from store import Store
from tests.browser import harness as h

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from pipeline.demo import build_demo_store

    root = tmp_path_factory.mktemp("report-browser")
    build_demo_store(root / "store", samples_per_class=4, batch_size=10, progress=False)
    html, png = write_report(root / "store", "demo", "midblock", out=root / "report.html")
    return Store(root / "store"), html, png


def test_the_report_opens_offline_and_shows_a_thumbnail_on_hover(chromium, report, tmp_path):
    store, html, _ = report
    proj = default_projector().project(store, "demo", "midblock", None, ProjectionParams())  # the report's map
    ids, xy = [str(s) for s in proj.sample_ids], np.asarray(proj.xy, dtype=float)

    with h.offline_page(chromium, html, {"width": 1200, "height": 1000}) as (page, asked, errors):
        page.wait_for_function("() => document.getElementById('map-plot')?._fullLayout?.xaxis")
        # every image of the page (medoids, outliers) is inline and decodes
        page.wait_for_function("""() => { const imgs = [...document.querySelectorAll('section img')];
            return imgs.length > 0 && imgs.every(i => i.src.startsWith('data:') && i.complete && i.naturalWidth > 0); }""")
        assert page.locator("figure.outlier").count() == min(24, len(ids))
        page.locator("#map-plot").scroll_into_view_if_needed()
        h.hover_thumbnails(page, "#map-plot", xy, ids, store)
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        if os.environ.get("DMD2VIZ_REPORT_SCREENSHOT"):  # the docs' screenshot: a path to write it to
            Path(os.environ["DMD2VIZ_REPORT_SCREENSHOT"]).write_bytes(shot.read_bytes())
        h.thumbnail_hides(page)
    assert asked == [html.as_uri()], f"the report asked for more than itself: {asked}"
    assert not errors
