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


# ------------------------------------------------------------------------------------ small multiples

_MULTI = "[data-testid='dmv-multiples'][data-ready='1']"


def _multi(page, what: str):
    return page.evaluate(f"() => {{ const w = document.querySelector(\"{_MULTI}\"); return {what}; }}")


def _isolated(page, panel: int, count: int, min_px: float = 5) -> list[str]:
    """Ids drawn at least ``min_px`` from every other point of ``panel`` and well inside it (safe to hover)."""
    return page.evaluate("""([p, count, minPx]) => {
      const m = window.dmvMultiples; const k = p ? String(p + 1) : '';
      const xa = m.plot._fullLayout['xaxis' + k], ya = m.plot._fullLayout['yaxis' + k];
      const px = m.points.ids.map((_, i) => [xa.l2p(m.points.x[p][i]), ya.l2p(m.points.y[p][i])]);
      const out = [];
      px.forEach(([x, y], i) => {
        if (out.length >= count || x < 20 || y < 20 || x > xa._length - 20 || y > ya._length - 20) return;
        if (px.every(([u, v], j) => j === i || Math.hypot(u - x, v - y) >= minPx)) out.push(m.points.ids[i]);
      });
      return out; }""", [panel, count, min_px])


def _pixel(page, sample_id: str, panel: int) -> tuple[float, float]:
    p = page.evaluate("([id, p]) => window.dmvMultiples.pointPixel(id, p)", [sample_id, panel])
    return p["x"], p["y"]


def _rings(page, cls: str) -> list[dict]:
    """The rings of one kind over the panels, with their centres in page coordinates."""
    return page.evaluate("""(cls) => { const m = window.dmvMultiples; const r = m.plot.getBoundingClientRect();
      return [...m.rings.querySelectorAll('circle.' + cls)].map(c => ({id: c.dataset.id, panel: Number(c.dataset.panel),
        x: r.left + Number(c.getAttribute('cx')), y: r.top + Number(c.getAttribute('cy'))})); }""", cls)


def test_small_multiples_link_hover_and_selection(page, demo_server, tmp_path):
    from store import Store

    model = Store(demo_server.store).models()[0]
    page.goto(f"{demo_server.url}motion?model={model}&mode=steps&layer=midblock&k=3")
    page.wait_for_selector(_MULTI, timeout=240_000)
    page.wait_for_function("() => window.dmvMultiples && window.dmvMultiples.plot._fullLayout")
    assert _multi(page, "w.dataset.panels") == "4"
    assert page.evaluate("() => window.dmvMultiples.points.frames") == ["0", "1", "2", "3"]
    page.locator("[data-testid='dmv-multiples']").scroll_into_view_if_needed()

    # hover a sample in the second panel: the same sample is ringed in all four, at its place in each
    first = _isolated(page, 1, 3)
    assert len(first) >= 2, first
    updates = page.evaluate("() => window.dmvMultiples.seq")  # one per rerun that reaches the component
    x, y = _pixel(page, first[0], 1)
    page.mouse.move(x - 30, y - 30)
    page.mouse.move(x, y)
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.hover === {first[0]!r}")
    assert _multi(page, "w.dataset.hoverPanels") == "4"
    rings = _rings(page, "dmv-ring-hover")
    assert sorted(r["panel"] for r in rings) == [0, 1, 2, 3] and {r["id"] for r in rings} == {first[0]}
    for r in rings:
        px, py = _pixel(page, first[0], r["panel"])
        assert abs(r["x"] - px) < 1.5 and abs(r["y"] - py) < 1.5
    # its preview, as the map shows it: thumbnail and card, with the panel's step
    page.wait_for_function(h.TIP_SHOWN, arg=first[0])  # the page has one preview card: the multiples'
    tip = page.locator(f"{_MULTI} .dmv-tip").inner_text()
    assert "step" in tip and "seed" in tip
    # placed where it hides none of the sample's rings (there is room above or below the pointer here)
    assert _multi(page, "w.querySelector('.dmv-tip').dataset.covers") == "0"
    page.locator("[data-testid='dmv-multiples']").screenshot(path=str(tmp_path / "multiples-hover.png"))
    # moving off: nothing ringed; another sample in the last panel: rings follow it, no rerun needed
    page.mouse.move(x, y - 200 if y > 300 else y + 200)
    page.mouse.move(5, 5)
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.hover === ''")
    assert _rings(page, "dmv-ring-hover") == []
    x3, y3 = _pixel(page, (other := _isolated(page, 3, 3)[0]), 3)
    page.mouse.move(x3, y3)
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.hover === {other!r}")
    assert {r["id"] for r in _rings(page, "dmv-ring-hover")} == {other}
    assert page.evaluate("() => window.dmvMultiples.seq") == updates  # hovering ran nothing in Python

    # a click in one panel selects the sample everywhere: every panel, the animation, the URL
    target = _isolated(page, 2, 1)[0]
    x2, y2 = _pixel(page, target, 2)
    page.mouse.move(x2, y2)
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.hover === {target!r}")
    page.mouse.click(x2, y2)
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.selected === {target!r}",
                           timeout=60_000)
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.selectedPanels === '4'")
    assert {r["panel"] for r in _rings(page, "dmv-ring-selected")} == {0, 1, 2, 3}
    assert page.evaluate("() => window.dmvMultiples.seq") > updates  # (a click does rerun: the counter counts)
    page.wait_for_function(f"() => new URL(location.href).searchParams.get('sel') === {target!r}")
    page.wait_for_function(f"() => {{ const gd = {_PLOT}; return gd && gd.data[2].customdata[0] === {target!r}; }}")
    assert len(_rings(page, "dmv-ring-knn")) == 3 * 4  # its neighbours, ringed in every panel

    # a box selection in the first panel selects the same samples in all panels
    page.locator("[data-testid='dmv-multiples'] .modebar-btn[data-val='select']").first.click()
    box = page.evaluate("""() => { const m = window.dmvMultiples; const r = m.plot.getBoundingClientRect();
      const xa = m.plot._fullLayout.xaxis, ya = m.plot._fullLayout.yaxis;
      return {x: r.left + xa._offset, y: r.top + ya._offset, w: xa._length, h: ya._length}; }""")
    x0, y0, x1, y1 = box["x"] + 5, box["y"] + 5, box["x"] + box["w"] * 0.6, box["y"] + box["h"] * 0.6
    inside = page.evaluate("""([x0, y0, x1, y1]) => { const m = window.dmvMultiples; const r = m.plot.getBoundingClientRect();
      const xa = m.plot._fullLayout.xaxis, ya = m.plot._fullLayout.yaxis;
      return m.points.ids.filter((_, i) => { const x = r.left + xa._offset + xa.l2p(m.points.x[0][i]);
        const y = r.top + ya._offset + ya.l2p(m.points.y[0][i]); return x > x0 && x < x1 && y > y0 && y < y1; }); }""",
                           [x0, y0, x1, y1])
    assert inside
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.wait_for_function(f"() => document.querySelector(\"{_MULTI}\").dataset.highlighted === '{len(inside)}'",
                           timeout=60_000)
    page.wait_for_function(f"() => document.body.innerText.includes('{len(inside)} samples in the lasso/box')")
    highlighted = page.evaluate("() => window.dmvMultiples.data.highlight")
    assert sorted(highlighted) == sorted(inside)
    # drawn over every panel: one highlight trace per panel holding those samples
    per_panel = page.evaluate("() => window.dmvMultiples.plot.data.filter(t => t.name.startsWith('matches')).map(t => t.x.length)")
    assert per_panel == [len(inside)] * 4
