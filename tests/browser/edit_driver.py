"""Drive the Explore panel's what if in headless Chromium: select a sample of a run, pick an interpolation's end
point on the map, press Interpolate and wait for its path on the map.

Shared by ``tests/browser/test_edit_browser.py`` and ``benchmarks/bench_edit_app.py`` (both on a demo store
built by ``python -m pipeline demo``, whose multi-step run is ``RUN``).
"""

from __future__ import annotations

import time

from tests.browser import harness as h

RUN = "demo-multistep"
PICK_HINT = "Click a point on the map: it becomes the end point."


def wait_links(page, kind: str, edited: int, timeout: float = 60) -> None:
    """Until the map draws a link of `kind` (e.g. the interpolation's path) and marks `edited` results."""
    page.wait_for_function("""([kind, n]) => { const w = document.querySelector('.dmv-wrap');
        return (w.dataset.editLinks || '').split(',').includes(kind + ':1') && w.dataset.edited === String(n); }""",
                           arg=[kind, edited], timeout=timeout * 1000, polling="raf")


def path_points(page) -> str | None:
    """The SVG points of the interpolation path drawn on the map (None: none drawn)."""
    return page.get_attribute(".dmv-rings polyline.dmv-edit-interpolate", "points") \
        if page.locator(".dmv-rings polyline.dmv-edit-interpolate").count() else None


def path_vertices(page) -> int:
    return page.evaluate("""() => { const p = document.querySelector('.dmv-rings polyline.dmv-edit-interpolate');
        return p ? p.getAttribute('points').trim().split(/\\s+/).length : 0; }""")


def pick_in_run(page, candidates: list[str], run: str = RUN, exclude=()) -> tuple[str, float, float]:
    """The first candidate whose point plotly finds under the mouse is a sample of `run` (the one an
    interpolation needs both ends in) and not in `exclude`, as (id, x, y): a click at (x, y) picks it."""
    for candidate in candidates:
        found = h.pick(page, candidate)
        if found[0].startswith(f"{run}-") and found[0] not in exclude:
            return found
    raise AssertionError(f"no point of run {run} to click among {candidates[:5]}...")


def button(page, key: str):
    """The visible button of the widget with `key` (a button with help also renders a hidden copy)."""
    return page.locator(f".st-key-{key} button:visible").first


def select_start(page, seed: int = 5) -> tuple[str, list[str]]:
    """Select a sample of `RUN` on the drawn map; (its id, other samples of the run, farthest first)."""
    ids = [i for i in h.spread_ids(page, 200, margin=80, seed=seed) if i.startswith(f"{RUN}-")]
    a, ax, ay = pick_in_run(page, ids)
    page.mouse.click(ax, ay)
    h.wait_selected(page, a)
    xy = {o: h.point_xy(page, o) for o in ids}
    far = sorted((o for o in ids if o != a), key=lambda o: -((xy[o][0] - ax) ** 2 + (xy[o][1] - ay) ** 2))
    return a, far


def pick_end(page, candidates: list[str], exclude=()) -> str:
    """On the Interpolate tab: "Pick the end point", then a click on the map on a point not in `exclude` (an
    end point picked before: the same edit again adds nothing); the end point's id."""
    panel = page.locator(".st-key-edit_panel")
    button(page, "edit_pick").click()
    panel.get_by_text(PICK_HINT).wait_for()
    page.locator(".dmv-wrap").scroll_into_view_if_needed()
    b, bx, by = pick_in_run(page, candidates, exclude=exclude)
    page.mouse.click(bx, by)
    panel.locator("code", has_text=f"--to {b} ").wait_for()
    return b


def timed_interpolation(page, frames: int, timeout: float = 120) -> float:
    """Press Interpolate and wait until the map draws the new path through `frames` results; the seconds from
    the click to that frame (measured in the page: from the click event to the animation frame that shows it)."""
    before = path_points(page)
    page.locator(".dmv-wrap").scroll_into_view_if_needed()
    page.evaluate("""() => { window.__editClick = null; const b = document.querySelector(
        '.st-key-edit_go_interpolate button:not([disabled])');
        b.addEventListener('click', () => { window.__editClick = performance.now(); }, {once: true, capture: true}); }""")
    t0 = time.perf_counter()
    button(page, "edit_go_interpolate").click()
    seconds = page.wait_for_function("""([before, n]) => {
        const p = document.querySelector('.dmv-rings polyline.dmv-edit-interpolate');
        const w = document.querySelector('.dmv-wrap');
        if (!(p && p.getAttribute('points') !== before && w.dataset.edited === String(n))) return false;
        return window.__editClick === null ? -1 : (performance.now() - window.__editClick) / 1000; }""",
                                     arg=[before, frames], polling="raf", timeout=timeout * 1000).json_value()
    return seconds if seconds >= 0 else time.perf_counter() - t0
