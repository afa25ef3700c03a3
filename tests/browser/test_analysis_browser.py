"""Browser tests: the Analysis page in headless Chromium. A click on a confusion cell highlights that cell's
samples on the map; a click on a facet bar filters the map to exactly that bar's samples and puts the filter in
the URL."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.browser import harness as h

pytestmark = pytest.mark.browser

# Vega-Lite draws each bar or cell as an SVG path whose aria-label lists its fields: "field: value; ..."
MARKS = """(chart) => [...document.querySelectorAll('[data-testid="stVegaLiteChart"] path[aria-label]')]
  .map((el, i) => { const f = {}; for (const part of el.getAttribute('aria-label').split('; ')) {
      const at = part.indexOf(': '); f[part.slice(0, at)] = part.slice(at + 2); }
    el.dataset.mark = String(i); return f; })"""


def _open(page, server) -> dict:
    """Explore first (it draws the map the Analysis page shows), then Analysis; the page's URL values."""
    page.goto(server.url)
    h.wait_map(page)
    page.goto(server.url + "analysis")
    h.wait_map(page)
    page.wait_for_selector("[data-testid='stVegaLiteChart'] path[aria-label*=\"neighbour's class\"]",
                           timeout=60_000)
    return dict(parse_qsl(urlsplit(page.url).query))


def _marks(page) -> list[dict]:
    return page.evaluate(MARKS, None)


def _click_mark(page, predicate) -> dict:
    marks = _marks(page)
    i, fields = next((i, m) for i, m in enumerate(marks) if predicate(m))
    page.click(f"[data-mark='{i}']")
    return fields


def _highlight(page) -> list[str]:
    return page.evaluate("() => window.dmvMap.data.highlight || []")


def test_a_click_on_a_confusion_cell_highlights_its_samples(page, app_server, browser_store):
    from pipeline import analysis
    from store import Store

    q = _open(page, app_server)
    sep = analysis.class_separation(Store(browser_store), q["model"], q["layer"], int(q["step"]), k=10)
    a, b = sep.pairs.loc[0, "class_a"], sep.pairs.loc[0, "class_b"]  # the most-mixed pair
    expected = set(sep.cell(a, b))
    assert expected and not _highlight(page)
    _click_mark(page, lambda m: m.get("class") == a and m.get("neighbour's class") == b)
    page.wait_for_function("(n) => (window.dmvMap.data.highlight || []).length === n", arg=len(expected),
                           timeout=30_000)
    assert set(_highlight(page)) == expected
    page.wait_for_function("() => location.search.includes('cell=')")
    assert dict(parse_qsl(urlsplit(page.url).query))["cell"] == f"{a}~{b}"
    page.wait_for_selector(f"text=samples with neighbours in {b}")


def test_a_click_on_a_facet_bar_filters_the_map_and_the_url(page, app_server, browser_store):
    from store import Store

    q = _open(page, app_server)
    before = page.evaluate("() => window.dmvMap.points.ids.slice()")
    samples = Store(browser_store).samples(model=q["model"]).set_index("sample_id")
    runs = samples.loc[before, "run_id"]
    column, value = ("run_id", runs.iloc[-1]) if runs.nunique() > 1 else ("label", samples.loc[before[0], "label"])
    expected = {s for s in before if samples.loc[s, column] == value}
    assert 0 < len(expected) < len(before)
    title = "run" if column == "run_id" else "class"
    _click_mark(page, lambda m: m.get(title) == value and "whole" in m)  # the bar of the whole view
    page.wait_for_function("(n) => window.dmvMap.points && window.dmvMap.points.ids.length === n",
                           arg=len(expected), timeout=30_000)
    assert set(page.evaluate("() => window.dmvMap.points.ids")) == expected
    page.wait_for_function("(p) => new URLSearchParams(location.search).get(p) !== null", arg=f"f.{column}")
    assert dict(parse_qsl(urlsplit(page.url).query))[f"f.{column}"] == value
    chip = page.get_by_role("button", name=f"{title}: {value}")  # the active filter, shown
    chip.wait_for()
    # reloading the URL restores the filter
    page.reload()
    h.wait_map(page)
    page.wait_for_function("(n) => window.dmvMap.points && window.dmvMap.points.ids.length === n", arg=len(expected),
                           timeout=30_000)
    page.get_by_role("button", name=f"{title}: {value}").click()  # removable: the whole map comes back
    page.wait_for_function("(n) => window.dmvMap.points && window.dmvMap.points.ids.length === n", arg=len(before),
                           timeout=30_000)
    time.sleep(0.5)
    assert f"f.{column}" not in page.url


def test_an_outlier_opens_selected_in_explore(page, app_server, browser_store):
    from pipeline import analysis
    from store import Store

    q = _open(page, app_server)
    page.get_by_role("tab", name="Outliers").click()
    link = page.get_by_role("link", name="open in Explore").first
    link.wait_for()
    out = analysis.outliers(Store(browser_store), q["model"], q["layer"], int(q["step"]), k=10)
    first = out.loc[out["rank"] == 1, "sample_id"].iloc[0]
    with page.context.expect_page() as opened:  # a new tab, as every link out of a page
        link.click()
    explore = opened.value
    try:
        h.wait_map(explore)
        h.wait_selected(explore, first)
        explore.wait_for_selector(h.PANEL)
        assert dict(parse_qsl(urlsplit(explore.url).query))["sel"] == first
    finally:
        explore.close()


def analysis_screenshot(page, base_url: str, out, timeout: float = 900) -> None:
    """docs/screenshots/analysis.png: the Analysis page of a store's first model (Explore's map first), filtered
    to one run by a click on the run facet (when there are several), the most-mixed cell of its confusion
    heatmap clicked (its samples highlighted), the class separation below. For tests/browser/make_screenshots.py."""
    page.goto(base_url)
    h.wait_map(page, timeout=timeout)
    page.goto(base_url.rstrip("/") + "/analysis")
    h.wait_map(page, timeout=timeout)
    page.wait_for_selector("[data-testid='stVegaLiteChart'] path[aria-label*=\"neighbour's class\"]",
                           timeout=timeout * 1000)
    runs = [m["run"] for m in _marks(page) if "run" in m and "whole" in m]
    if len(runs) > 1:
        _click_mark(page, lambda m: m.get("run") == runs[-1] and "whole" in m)
        page.wait_for_function("() => new URLSearchParams(location.search).get('f.run_id') !== null")
        page.wait_for_selector("[data-testid='stVegaLiteChart'] path[aria-label*=\"neighbour's class\"]",
                               timeout=timeout * 1000)
        time.sleep(1.5)
    marks = _marks(page)
    off = [m for m in marks if "neighbour's class" in m and m["class"] != m["neighbour's class"]]
    worst = max(off, key=lambda m: float(m.get("share", 0)))
    _click_mark(page, lambda m: m is not None and m.get("class") == worst["class"]
                and m.get("neighbour's class") == worst["neighbour's class"])
    page.wait_for_function("() => (window.dmvMap.data.highlight || []).length > 0", timeout=60_000)
    time.sleep(2.5)
    page.screenshot(path=str(out), full_page=True)


def test_a_brushed_range_on_a_histogram_filters_the_map_to_that_range(page, app_server, browser_store):
    from store import Store

    q = _open(page, app_server)
    before = page.evaluate("() => window.dmvMap.points.ids.slice()")
    samples = Store(browser_store).samples(model=q["model"]).set_index("sample_id").loc[before]
    chart = page.locator("[data-testid='stVegaLiteChart']:has(path[aria-label*='index in run'])").first
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    y = box["y"] + box["height"] * 0.45
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.55, y, steps=8)
    page.mouse.up()
    page.wait_for_function("() => new URLSearchParams(location.search).get('f.index') !== null", timeout=30_000)
    low, high = (float(v) for v in dict(parse_qsl(urlsplit(page.url).query))["f.index"].split(".."))
    assert low.is_integer() and high.is_integer() and low <= high  # whole numbers: a whole-number range
    expected = set(samples.index[(samples["index"] >= low) & (samples["index"] <= high)])
    assert 0 < len(expected) < len(before)
    page.wait_for_function("(n) => window.dmvMap.points && window.dmvMap.points.ids.length === n",
                           arg=len(expected), timeout=30_000)
    assert set(page.evaluate("() => window.dmvMap.points.ids")) == expected
    page.get_by_role("button", name=f"index in run: {int(low)} – {int(high)}").wait_for()
