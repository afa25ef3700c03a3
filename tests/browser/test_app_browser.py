"""Browser tests: the Explore map in headless Chromium (Debian's), driven by Playwright."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest

from tests.browser import harness as h

pytestmark = pytest.mark.browser


def _open(page, server, query: dict | None = None) -> None:
    page.goto(server.url + ("?" + urlencode(query) if query else ""))
    h.wait_map(page)


def _panel_text(page) -> str:
    return page.inner_text(h.PANEL)


def _wait_knn_images(page, n: int) -> None:
    page.wait_for_function("""(n) => [...document.querySelectorAll('[class*="st-key-nb_kNN_"] img')]
        .filter(i => i.complete && i.naturalWidth > 0).length === n""", arg=n)


def test_map_renders_every_point_with_a_legend(page, app_server):
    _open(page, app_server)
    state = h.map_state(page)
    assert int(state["points"]) >= 100
    assert page.evaluate("() => window.dmvMap.plot.querySelectorAll('canvas').length") > 0  # WebGL
    legend = page.inner_text(".dmv-legend")
    assert "0: zero" in legend and "9: nine" in legend
    assert page.query_selector(".dmv-status").is_hidden()


def test_hover_shows_the_thumbnail_and_metadata_without_a_rerun(page, app_server):
    _open(page, app_server)
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(payload)))
    page.reload()  # attach the listener to the page's websocket
    h.wait_map(page)
    time.sleep(0.5)
    before = len(sent)
    for sid in h.spread_ids(page, 3):
        h.pick(page, sid)
        page.wait_for_function(h.TIP_SHOWN, arg=page.evaluate("() => document.querySelector('.dmv-tip').dataset.id"))
        text = page.inner_text(".dmv-tip")
        assert "seed" in text and "step" in text and "layer" in text
    label = page.inner_text(".dmv-tip-title")
    assert ":" in label  # "<class>: <name>"
    time.sleep(0.3)
    assert len(sent) == before, "hovering must not talk to the server"
    page.mouse.move(5, 5)
    page.wait_for_selector(".dmv-tip", state="hidden")


def test_click_shows_the_selection_panel_with_k_neighbour_thumbnails(page, app_server):
    _open(page, app_server, {"k": "6"})
    sid, x, y = h.pick(page, h.spread_ids(page, 1)[0])
    page.mouse.click(x, y)
    h.wait_selected(page, sid)
    _wait_knn_images(page, 6)
    text = _panel_text(page)
    assert "6 nearest + 0 manual" in text and "d =" in text
    page.wait_for_function("() => document.querySelector('.st-key-selection_panel [data-testid=\"stImage\"] img')"
                           "?.naturalWidth > 0")
    assert page.url.count("sel=") == 1


def test_toggling_a_manual_neighbour_and_clearing(page, app_server):
    _open(page, app_server)
    candidates = h.spread_ids(page, 60, seed=1)
    first, x, y = h.pick(page, candidates[0])
    page.mouse.click(x, y)
    h.wait_selected(page, first)
    _wait_knn_images(page, 5)
    knn = h.neighbour_ids(page, "kNN")
    for cand in candidates[1:]:  # a point that is neither the selected one nor one of its neighbours
        other, ox, oy = h.pick(page, cand)
        if other != first and other not in knn:
            break
    page.mouse.click(ox, oy)  # not a neighbour: becomes a manual one (thick ring)
    page.wait_for_function("(id) => window.dmvMap.data.manual.includes(id)", arg=other)
    page.wait_for_function("(id) => document.querySelector(`[class*='st-key-nb_manual_${id}'] img`)?.naturalWidth > 0",
                           arg=other)
    assert "5 nearest + 1 manual" in _panel_text(page)
    page.mouse.click(ox, oy)  # a manual neighbour: removed again
    page.wait_for_function("(id) => !window.dmvMap.data.manual.includes(id)", arg=other)
    page.wait_for_function("() => !document.querySelector(\"[class*='st-key-nb_manual_']\")")
    page.click(".st-key-clear_selection button")  # ✕
    page.wait_for_function("() => document.querySelector('.dmv-wrap').dataset.selected === ''")
    page.wait_for_selector("text=Click a point on the map")
    assert "sel=" not in page.url


def test_a_shared_url_restores_the_view(page, app_server):
    _open(page, app_server)
    sid = h.spread_ids(page, 1)[0]
    layer = page.evaluate("() => new URL(location.href).searchParams.get('layer')")
    query = {"layer": layer, "nn": "25", "md": "0.3", "k": "3", "space": "map", "sel": sid}  # map: not the default
    _open(page, app_server, query)
    h.wait_selected(page, sid)
    _wait_knn_images(page, 3)
    text = _panel_text(page)
    assert "3 nearest + 0 manual" in text and "in map space" in text
    params = page.evaluate("() => Object.fromEntries(new URL(location.href).searchParams)")
    assert {k: params.get(k) for k in query} == query
    sliders = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-testid="stSlider"]')]
        .map(s => [s.querySelector('label')?.innerText, s.querySelector('input[type="range"]')?.value]))""")
    assert sliders["n_neighbors"] == "25" and sliders["min_dist"] == "0.3" and sliders["k nearest"] == "3"


def test_zoom_survives_a_selection(page, app_server):
    _open(page, app_server)
    before = h.map_state(page)
    target = h.spread_ids(page, 1, margin=120)[0]
    x, y = h.point_xy(page, target)
    page.mouse.move(x, y)  # zoom around a point: it stays under the mouse
    for _ in range(3):
        page.mouse.wheel(0, -240)
        time.sleep(0.15)
    page.wait_for_function("(r) => window.dmvMap.plot._fullLayout.xaxis.range[0] !== r", arg=before["xrange"][0])
    time.sleep(0.5)
    zoomed = h.map_state(page)
    assert zoomed["xrange"][1] - zoomed["xrange"][0] < 0.9 * (before["xrange"][1] - before["xrange"][0])
    sid, x, y = h.pick(page, target)
    page.mouse.click(x, y)
    h.wait_selected(page, sid)
    _wait_knn_images(page, 5)
    after = h.map_state(page)
    assert after["xrange"] == pytest.approx(zoomed["xrange"]) and after["yrange"] == pytest.approx(zoomed["yrange"])


def test_box_selection_reaches_python_and_png_downloads(page, app_server):
    _open(page, app_server)
    page.click(".modebar-btn[data-title='Box Select']")
    box = page.query_selector(".dmv-plot").bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + box["width"] * 0.5, y0 + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.wait_for_selector("text=in the lasso/box selection")
    assert "lasso/box selection" in page.inner_text("[data-testid='stMain']")
    with page.expect_download() as download:
        page.click(".st-key-dl_png button")
    assert download.value.suggested_filename.endswith(".png")


def _sliders(page) -> dict:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-testid="stSlider"]')]
        .map(s => [s.querySelector('label')?.innerText, s.querySelector('input[type="range"]')?.value]))""")


def test_a_store_path_typo_keeps_the_controls(page, app_server, tmp_path):
    """A missing store, then the right one again: every control comes back with its value (they used to come
    back at their minimum, and the next interaction fitted a map with those)."""
    _open(page, app_server, {"nn": "30", "md": "0.4", "k": "7"})
    before = _sliders(page)
    assert before["n_neighbors"] == "30" and before["k nearest"] == "7"
    box = page.locator(".st-key-dmd_store_input input")
    store = box.input_value()
    box.fill(str(tmp_path / "no-such-store"))
    box.press("Enter")
    page.wait_for_selector("text=does not exist")
    box.fill(store)
    box.press("Enter")
    h.wait_map(page)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stSlider\"]').length >= 4")
    assert _sliders(page) == before
    page.locator(".st-key-w_psize").hover()  # another interaction: the view stays the same
    params = page.evaluate("() => Object.fromEntries(new URL(location.href).searchParams)")
    assert (params.get("nn"), params.get("md"), params.get("k")) == ("30", "0.4", "7")
