"""The standalone HTML map (Explore's "Map (HTML)" download) in Chromium, from a file, with no server:
hovering a point shows that sample's thumbnail."""

from __future__ import annotations

import base64

import numpy as np

from app import exports, views
from store import Store
from tests.app_fixtures import build_app_store


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

    page = chromium.new_page(viewport={"width": 1000, "height": 800})
    try:
        page.goto(out.as_uri())
        page.wait_for_function("() => document.querySelector('.js-plotly-plot')?._fullLayout?.xaxis")
        box = page.locator("#hover-thumb")
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 9
        for row in np.argsort(-gaps.min(axis=1))[:2]:  # the two most isolated points: the thumbnail follows
            x, y = page.evaluate(
                """([x, y]) => { const gd = document.querySelector('.js-plotly-plot'), L = gd._fullLayout,
                       r = gd.getBoundingClientRect();
                   return [r.left + L._size.l + L.xaxis.l2p(x), r.top + L._size.t + L.yaxis.l2p(y)]; }""",
                [float(xy[row, 0]), float(xy[row, 1])])
            page.mouse.move(x, y)
            want = "data:image/webp;base64," + base64.b64encode(store.thumbs([ids[row]])[0]).decode()
            # the box still shows the previous point until this hover lands: wait for this point's image
            page.wait_for_function("""(want) => { const b = document.getElementById('hover-thumb');
                return b.style.display === 'block' && b.src === want && b.complete && b.naturalWidth > 0; }""",
                                   arg=want)
            assert box.get_attribute("src") == want
        page.screenshot(path=str(tmp_path / "export.png"))
        page.mouse.move(5, 5)
        page.wait_for_function("() => document.getElementById('hover-thumb').style.display === 'none'")
    finally:
        page.close()
