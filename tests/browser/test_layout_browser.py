"""Layout at a laptop's width (1280 px) in Chromium, measured from element geometry (issue 12, item 17), and
the map legend's way back after "only this"; the PNG export's title and legend (item 14).

The app runs on `tests.browser.previews_store`'s store (fixture ``previews_server``, shared with the walk tests):
four sampling steps with x0 previews and DMD2's sigmas, two layers with long real-world names, prompts to search.
"""

from __future__ import annotations

import pytest

from tests.browser import harness as h
from tests.browser.previews_store import LAYERS, MODEL, SIGMAS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LAPTOP = {"width": 1280, "height": 900}


@pytest.fixture
def laptop(chromium, previews_server):
    context = chromium.new_context(viewport=LAPTOP, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def test_x0_captions_never_wrap_inside_a_number_at_1280px(laptop, previews_server):
    page = laptop
    page.goto(f"{previews_server}/?model={MODEL}&step=3&sel=run-a-00000004")
    h.wait_map(page, timeout=180)  # a loaded machine
    captions = ".st-key-x0_previews [data-testid='stImageCaption']"
    page.wait_for_selector(captions)
    page.wait_for_function(f"() => document.querySelectorAll(\"{captions}\").length === {len(SIGMAS)}")
    # each part of a caption ("step 3", "σ 0.002"): the lines its characters are drawn on
    found = page.evaluate("""(sel) => [...document.querySelectorAll(sel)].map((cap) => {
      const walker = document.createTreeWalker(cap, NodeFilter.SHOW_TEXT); const nodes = [];
      while (walker.nextNode()) nodes.push(walker.currentNode);
      const text = nodes.map(n => n.data).join('');
      const parts = [];
      let offset = 0;
      for (const part of text.split(' · ')) {
        const tops = new Set();
        for (let i = offset; i < offset + part.length; i++) {  // one character at a time
          let k = i, node = null;
          for (const n of nodes) { if (k < n.data.length) { node = n; break; } k -= n.data.length; }
          const r = document.createRange(); r.setStart(node, k); r.setEnd(node, k + 1);
          const rect = r.getBoundingClientRect(); if (rect.width > 0) tops.add(Math.round(rect.top));
        }
        parts.push([part, tops.size]);
        offset += part.length + 3;
      }
      return {text, parts, fits: cap.scrollWidth <= cap.clientWidth + 1};
    })""", captions)
    assert len(found) == len(SIGMAS)
    for cap in found:
        assert cap["fits"], cap
        for part, lines in cap["parts"]:
            assert lines == 1, f"{part!r} of {cap['text']!r} is drawn on {lines} lines"
    assert any("0.002" in cap["text"] for cap in found)


def test_search_export_buttons_show_their_whole_label(laptop, previews_server):
    page = laptop
    page.goto(f"{previews_server}/search?sq=step%20%3D%200&sm=sql")
    page.wait_for_selector(".st-key-search-parquet button")
    for key, text in (("search-csv", "CSV"), ("search-parquet", "Parquet")):
        # Streamlit cuts a label too long for its button with an ellipsis (text-overflow) on the label's box
        boxes = page.evaluate("""([sel, text]) => [...document.querySelector(sel).querySelectorAll('*')]
          .filter(e => e.textContent.trim() === text && e.clientWidth > 0)
          .map(e => ({tag: e.tagName, scroll: e.scrollWidth, client: e.clientWidth,
                      overflow: getComputedStyle(e).textOverflow}))""", [f".st-key-{key} button", text])
        assert boxes, f"no box shows {text!r}"
        assert all(b["scroll"] <= b["client"] for b in boxes), boxes  # not cut to "Par…"


def test_overview_storage_bars_show_whole_names_and_the_size_axis_title(laptop, previews_server):
    page = laptop
    page.goto(f"{previews_server}/overview")
    chart = "[data-testid='stVegaLiteChart'] svg"  # the storage chart, the page's only one
    page.wait_for_selector(chart, timeout=60_000)
    page.locator(chart).scroll_into_view_if_needed()
    axes = page.evaluate("""(sel) => [...document.querySelectorAll(sel + ' [aria-roledescription="axis"]')]
      .map(a => ({label: a.getAttribute('aria-label') || '',
                  ticks: [...a.querySelectorAll('.role-axis-label text')].map(t => t.textContent)}))""", chart)
    x_axis = next(a for a in axes if a["label"].startswith("X-axis"))
    y_axis = next(a for a in axes if a["label"].startswith("Y-axis"))
    assert "B on disk" in x_axis["label"]  # the size axis is the horizontal one
    assert "on disk" not in y_axis["label"]
    assert sorted(y_axis["ticks"]) == sorted(f"{MODEL} / {layer}" for layer in LAYERS)  # whole, no "…"


def test_legend_only_this_then_show_all(laptop, previews_server):
    page = laptop
    page.goto(f"{previews_server}/?model={MODEL}&step=3")
    h.wait_map(page, timeout=180)  # a loaded machine
    legend = page.locator(".dmv-legend")
    assert legend.locator(".dmv-legend-all").count() == 0  # nothing hidden: nothing to show again
    items = legend.locator(".dmv-legend-item")
    n = items.count()
    assert n >= 3
    items.nth(1).dblclick()
    page.wait_for_function("(n) => document.querySelectorAll('.dmv-legend-item.dmv-off').length === n - 1",
                           arg=n)
    show_all = legend.locator(".dmv-legend-all")
    assert show_all.is_visible() and "show all" in show_all.inner_text()
    show_all.click()  # one click back to every class
    page.wait_for_function("() => document.querySelectorAll('.dmv-legend-item.dmv-off').length === 0")
    assert legend.locator(".dmv-legend-all").count() == 0
    assert page.evaluate("() => window.dmvMap.hidden.size") == 0


def test_png_export_has_a_title_and_the_legend(laptop, previews_server, tmp_path):
    page = laptop
    page.goto(f"{previews_server}/?model={MODEL}&step=2&sel=run-a-00000004&k=4")
    h.wait_map(page, timeout=180)  # a loaded machine
    h.wait_selected(page, "run-a-00000004")
    page.wait_for_function("() => (window.dmvMap.data.knn || []).length === 4")
    fig = page.evaluate("""() => { const f = window.dmvMap.pngFigure();
      return {title: f.layout.title.text, showlegend: f.layout.showlegend, width: f.width, plot: window.dmvMap.plot.clientWidth,
              legend: f.data.filter(t => t.showlegend).map(t => t.name)}; }""")
    assert f"{MODEL} · " in fig["title"] and "step 2" in fig["title"] and "σ 0.47" in fig["title"]
    assert "colour: " in fig["title"]
    assert fig["showlegend"] and fig["width"] > fig["plot"]  # room for the legend beside the map
    assert any(name.startswith("a red sports car") for name in fig["legend"])  # the classes, with counts
    assert {"selected", "k nearest neighbours"} <= set(fig["legend"])
    with page.expect_download() as info:
        page.evaluate("() => window.dmvMap.downloadPng()")
    out = tmp_path / "map.png"
    info.value.save_as(out)
    from PIL import Image

    with Image.open(out) as im:
        assert im.width >= 2 * fig["width"] - 2  # drawn at scale 2, legend included
