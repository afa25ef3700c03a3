"""Browser test: the Compare runs page in headless Chromium, on a store with a generated run, real digits and two
checkpoint runs (the real projection engine, PCA maps). The joint map is coloured by run with its link lines, the
metrics table sorts by a click on a header, a click on a row's box filters the map to exactly that class, and the
CSV download is compare_runs' table."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tests.browser import harness as h
from tests.test_app_compare_runs import LAYER, MODEL, PER_RUN, build_compare_store

pytestmark = pytest.mark.browser

ROW = 35  # the data grid's header and row height (Streamlit's default)
MARKER = 33  # the width of its row-selection column


@pytest.fixture(scope="module")
def compare_server(tmp_path_factory):
    root = build_compare_store(tmp_path_factory.mktemp("compare_browser") / "store")
    log = tmp_path_factory.mktemp("compare_server") / "streamlit.log"
    with h.AppServer(root, stand_in_projector=False, log=log) as server:
        server.store_root = root
        yield server


@pytest.fixture
def cr_page(chromium, compare_server):
    context = chromium.new_context(viewport=h.VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def _grid(page):
    return page.locator("[data-testid='stDataFrame']").filter(has_text="precision")


def _cell(page, col: int, row: int) -> str:
    """The text of a cell of the metrics grid (its accessible table: column 0 is the row-selection column)."""
    return _grid(page).locator(f"[data-testid='glide-cell-{col}-{row}']").inner_text()


def _wait_cell(page, col: int, row: int, text: str) -> None:
    handle = _grid(page).element_handle()
    page.wait_for_function("([g, id, text]) => { const c = g.querySelector(`[data-testid='${id}']`); "
                           "return c && c.innerText === text; }", arg=[handle, f"glide-cell-{col}-{row}", text])


def _wait_points(page, n: int, timeout: float = 30) -> None:
    page.wait_for_function("(n) => window.dmvMap && window.dmvMap.points && window.dmvMap.points.ids.length === n "
                           "&& document.querySelector('.dmv-wrap').dataset.ready === '1'", arg=n,
                           timeout=timeout * 1000)


def test_joint_map_sort_click_a_class_and_download_the_csv(cr_page, compare_server, tmp_path):
    from pipeline import distribution
    from store import Store

    page = cr_page
    page.goto(compare_server.url + "compare-runs?crmeth=pca")
    h.wait_map(page, timeout=120)
    # the joint map: three runs (one checkpoint at a time), each sample once, coloured by run, link lines drawn
    _wait_points(page, 3 * PER_RUN)
    color = page.evaluate("() => ({title: window.dmvMap.color.title, names: window.dmvMap.color.names})")
    assert color["title"] == "run" and color["names"] == ["real", "gen", "ck-100"]
    page.wait_for_function("(n) => document.querySelector('.dmv-wrap').dataset.editLinks === `set:${n}`", arg=PER_RUN)
    assert page.locator("polyline.dmv-edit-set").count() == PER_RUN
    legend = page.locator(".dmv-legend").inner_text()
    assert all(name in legend for name in ("real", "gen", "ck-100"))
    page.screenshot(path=str(tmp_path / "compare-runs-map.png"))

    grid = _grid(page)
    grid.scroll_into_view_if_needed()
    _wait_cell(page, 1, 0, "all")
    assert _cell(page, 1, 0) == "all" and _cell(page, 1, 1) == "0: zero"  # class first, the table's own order
    box = grid.bounding_box()
    header = (box["x"] + MARKER + 20, box["y"] + ROW / 2)
    page.mouse.click(*header)  # ascending by class
    _wait_cell(page, 1, 0, "0: zero")
    page.mouse.click(*header)  # descending
    _wait_cell(page, 1, 0, "all")
    assert _cell(page, 1, 2) == "9: nine"
    page.screenshot(path=str(tmp_path / "compare-runs-sorted.png"))
    # a click on the third row's box (in the sorted order) shows that row's class, nine, alone on the map
    page.mouse.click(box["x"] + MARKER / 2, box["y"] + ROW + 2 * ROW + ROW / 2)
    _wait_points(page, 3 * (PER_RUN // 10))
    ids = page.evaluate("() => window.dmvMap.points.ids.slice()")
    labels = Store(compare_server.store_root).samples(model=MODEL).set_index("sample_id")["label"]
    assert {labels[i] for i in ids} == {"9: nine"}
    page.wait_for_function("() => location.search.includes('crc=9')")
    assert page.locator("polyline.dmv-edit-set").count() == PER_RUN // 10

    with page.expect_download() as got:
        page.get_by_role("button", name="Metrics (CSV)").click()
    download = got.value
    table = pd.read_csv(download.path())
    expected = distribution.compare_runs(Store(compare_server.store_root), MODEL, LAYER, ["real", "gen", "ck-100"])
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    assert download.suggested_filename.endswith("-metrics.csv")
    time.sleep(0.5)
    page.screenshot(path=str(tmp_path / "compare-runs-class.png"))
