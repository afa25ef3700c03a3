"""The standalone HTML map (Explore's "Map (HTML)" download) in Chromium, from a file, with no server:
hovering a point shows that sample's thumbnail, and the file asks the network for nothing."""

from __future__ import annotations

import numpy as np

from app import exports, views
from store import Store
from tests.app_fixtures import build_app_store
from tests.browser import harness as h


def test_hovering_a_point_of_the_exported_map_shows_its_thumbnail(chromium, tmp_path):
    store = Store(build_app_store(tmp_path / "store", per_run=40))
    frame = store.samples(model="digits")
    ids = frame["sample_id"].tolist()
    xy = np.random.default_rng(0).uniform(-1, 1, size=(len(ids), 2))
    view = views.make_view(store_key="s", projection_key="p", model="digits", layer="midblock", step=2,
                           sample_ids=ids, xy=xy, samples=frame, quality={}, source="fit",
                           step_info={"step": 2, "sigma": 0.3, "timestep": None})
    out = tmp_path / "map.html"
    out.write_bytes(exports.map_html(view, views.colorings(view)["label"], store))

    with h.offline_page(chromium, out, {"width": 1000, "height": 800}) as (page, asked, errors):
        page.wait_for_function("() => document.querySelector('.js-plotly-plot')?._fullLayout?.xaxis")
        h.hover_thumbnails(page, ".js-plotly-plot", xy, ids, store)
        page.screenshot(path=str(tmp_path / "export.png"))
        h.thumbnail_hides(page)
    assert asked == [out.as_uri()], f"the exported map asked for more than itself: {asked}"
    assert not errors
