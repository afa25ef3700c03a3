"""Browser tests of the Motion and Inside pages on a small demo store (the demo model, four steps): Play moves
the points through interpolated positions in the browser; a click on a location of the Inside page redraws the
correspondence heatmaps."""

from __future__ import annotations

import time

import pytest

from tests import store_fixtures as sf
from tests.browser import harness as h

pytestmark = pytest.mark.browser

RUN = sf.DEMO_RUN


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    root = sf.build_demo_store(tmp_path_factory.mktemp("motion-browser") / "store", samples_per_class=6)
    log = tmp_path_factory.mktemp("motion-log") / "streamlit.log"
    with h.AppServer(root, stand_in_projector=True, log=log) as server:
        yield server


@pytest.fixture
def page(chromium):
    context = chromium.new_context(viewport=h.VIEWPORT)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


def sid(i: int) -> str:
    return f"{RUN}-{i:08d}"


# the animation's plot: the page's first plotly chart with frames
_PLOT = "[...document.querySelectorAll('.js-plotly-plot')].find(p => p._transitionData && p._transitionData._frames && p._transitionData._frames.length)"
_POINT_PIXELS = f"""() => {{ const gd = {_PLOT}; if (!gd) return null;
  const pts = gd.querySelectorAll('.scatterlayer .trace:first-child .point');
  return [...pts].slice(0, 40).map(p => p.getAttribute('transform')); }}"""


def test_play_moves_the_points_through_interpolated_positions(page, demo_server):
    from store import Store

    model = Store(demo_server.store).models()[0]
    page.goto(f"{demo_server.url}motion?model={model}&mode=steps&layer=midblock&sel={sid(7)}&k=4")
    page.wait_for_function(f"() => !!({_PLOT})", timeout=240_000)
    names = page.evaluate(f"() => ({_PLOT})._transitionData._frames.map(f => f.name)")
    assert names == ["0", "1", "2", "3"]
    start = page.evaluate(_POINT_PIXELS)
    assert start and len(start) == 40
    seen = [start]
    page.locator(".updatemenu-button", has_text="▶ Play").first.click()
    t0 = time.time()
    while time.time() - t0 < 6:
        seen.append(page.evaluate(_POINT_PIXELS))
        time.sleep(0.05)
    distinct = {tuple(s) for s in seen}
    # more distinct layouts than frames: the browser drew positions between the frames (interpolation)
    assert len(distinct) > 4 + 2, len(distinct)
    assert seen[-1] != start
    # the slider followed the frames to the last step; no Python rerun was needed to play
    label = page.evaluate(f"() => ({_PLOT})._fullLayout.sliders[0].active")
    assert label == 3
    # the selected sample is marked in the last frame too
    marked = page.evaluate(f"() => ({_PLOT}).data[2].customdata")
    assert list(marked) == [sid(7)]


def test_click_a_location_and_see_the_heatmaps(page, demo_server):
    page.goto(f"{demo_server.url}inside?sel={sid(7)}&layer=midblock&k=2")
    page.wait_for_selector(".st-key-ins_pick .js-plotly-plot", timeout=120_000)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= 12")
    captions = lambda: page.evaluate(  # noqa: E731
        "() => [...document.querySelectorAll('[data-testid=\"stImageCaption\"]')].map(c => c.innerText)")
    before = [c for c in captions() if c.startswith("similarity")]
    srcs = lambda: page.evaluate(  # noqa: E731
        "() => [...document.querySelectorAll('[data-testid=\"stImage\"] img')].map(i => i.src)")
    old = srcs()
    box = page.locator(".st-key-ins_pick .js-plotly-plot .nsewdrag").first.bounding_box()
    assert box is not None
    # the top-left cell of the 4x4 map
    page.mouse.click(box["x"] + box["width"] * 0.12, box["y"] + box["height"] * 0.12)
    page.wait_for_function("() => document.body.innerText.includes('row 0, column 0')", timeout=30_000)
    page.wait_for_function("() => new URL(location.href).searchParams.get('at') === '0,0'")
    after = [c for c in captions() if c.startswith("similarity")]
    assert len(after) == 3 and after[0] == "similarity · max 1.00"
    assert srcs() != old and before  # the heatmaps were redrawn
