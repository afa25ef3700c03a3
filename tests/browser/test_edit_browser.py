"""Browser test of the Explore panel's what if (issue 13): an interpolation run from the panel appears on the
map as a path through its frames.

Its own server on a demo store built by ``python -m pipeline demo`` (the shipped digits model, 3,000 samples),
with the real projection engine (UMAP; the results are placed into the map, not refitted) and the real
`pipeline.edit.Editor` on CPU. It picks the end point by clicking the map, runs the interpolation, waits for
the path, measures the time from the click on Interpolate to the path drawn (printed as
``edit_to_map_s=``), selects a frame from the panel and reopens the share link. Two more interpolations, the
generator warm and the edit run listed, are drawn by their button's own fragment run (``edit_to_map_warm_s=``);
selecting one of their frames then keeps that map (its points and path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser import harness as h
from tests.browser.edit_driver import (
    RUN,
    button,
    path_vertices,
    pick_end,
    select_start,
    timed_interpolation,
    wait_links,
)

pytestmark = pytest.mark.browser

FRAMES = 8
SHOTS = os.environ.get("DMD2VIZ_EDIT_SCREENSHOTS")  # a folder (docs/screenshots): the map and panel shots go there


@pytest.fixture(scope="module")
def edit_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("edit-demo") / "store"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "pipeline", "demo", "--store", str(store)], cwd=h.ROOT, env=env,
                   check=True, capture_output=True, timeout=900)
    log = tmp_path_factory.mktemp("edit-log") / "streamlit.log"
    with h.AppServer(store, stand_in_projector=False, log=log) as server:
        yield server


def test_interpolation_from_the_panel_draws_its_path_on_the_map(chromium, edit_server, tmp_path):
    context = chromium.new_context(viewport=h.VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(edit_server.url)
        h.wait_map(page, timeout=300)
        a, far = select_start(page)
        panel = page.locator(".st-key-edit_panel")
        panel.get_by_text("the shipped demo weights", exact=False).wait_for()
        panel.get_by_role("tab", name="Interpolate").click()
        # the end point: "Pick the end point", then a click on the map (which leaves the selection alone)
        b = pick_end(page, far[:20])
        assert h.map_state(page)["selected"] == a and a != b
        expect(button(page, "edit_go_interpolate")).to_be_enabled()
        assert f"interpolate --from {a} --to {b} --frames {FRAMES}" in panel.inner_text()

        # the generator is loaded (the panel preloads the demo's) before the click is timed
        panel.get_by_text("demo from the shipped demo weights, on cpu", exact=False).wait_for()
        seconds = timed_interpolation(page, FRAMES)
        print(f"edit_to_map_s={seconds:.2f} (interpolation, {FRAMES} frames, demo model on CPU, real UMAP placement; "
              "the first edit of the run: the page runs again to list it)")
        wait_links(page, "interpolate", FRAMES)
        # the path: parent, the 8 frames in order, parent; beside the parents in the panel, 8 thumbnails
        assert path_vertices(page) == FRAMES + 2
        labels = page.evaluate("() => [...document.querySelectorAll('.dmv-rings .dmv-edit-label')].map(t => t.textContent)")
        assert labels == [str(k) for k in range(FRAMES)]
        results = page.locator(".st-key-edit_results")
        page.wait_for_function("""(n) => [...document.querySelectorAll('.st-key-edit_results img')]
            .filter(i => i.complete && i.naturalWidth > 0).length === n""", arg=FRAMES + 2)
        assert "Interpolation in 8 frames" in panel.inner_text()
        page.locator(".dmv-wrap").scroll_into_view_if_needed()
        page.locator(".dmv-wrap").screenshot(path=str(tmp_path / "edit-map.png"))
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(tmp_path / "edit-panel.png"))
        if SHOTS:  # the map with the path and the whole panel, in a window tall enough for the panel
            page.set_viewport_size({"width": 1500, "height": 2800})
            time.sleep(1.0)
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            page.evaluate("() => document.querySelector('.dmv-wrap').scrollIntoView({block: 'center'})")
            time.sleep(0.5)  # (clear of the app's sticky header)
            page.locator(".dmv-wrap").screenshot(path=str(Path(SHOTS) / "explore-edit-map.png"))
            panel.screenshot(path=str(Path(SHOTS) / "explore-edit-panel.png"))
            page.set_viewport_size(h.VIEWPORT)

        # a frame is selected from the panel like any sample; the share link brings it back with its path
        results.locator("button:visible", has_text="#3").first.click()
        page.wait_for_function("() => (document.querySelector('.dmv-wrap').dataset.selected || '')"
                               ".startsWith('edit-demo-multistep-')")
        frame = h.map_state(page)["selected"]
        page.wait_for_function("(id) => location.search.includes('sel=' + id)", arg=frame)
        link = page.url
        other = context.new_page()
        other.set_default_timeout(60_000)
        other.goto(link)
        h.wait_map(other, timeout=120)
        h.wait_selected(other, frame)
        wait_links(other, "interpolate", FRAMES)
        assert path_vertices(other) == FRAMES + 2
        other.locator(".st-key-edit_panel").get_by_text("This sample is the result of an edit:").wait_for()
        other.close()

        # more edits, the generator warm and the run listed: the number the target is about. The button's own
        # fragment run draws them (no page run); what the fragment runs next (a click) keeps that map
        warm, used = [], {b}
        for rep in range(2):
            button(page, f"edit_sel_parent_{a}").click()
            h.wait_selected(page, a)
            panel.get_by_role("tab", name="Interpolate").click()
            end = pick_end(page, far[10:] + far[:10], exclude=used)
            used.add(end)
            points = int(h.map_state(page)["points"])
            warm.append(timed_interpolation(page, FRAMES))
            assert path_vertices(page) == FRAMES + 2
            assert int(h.map_state(page)["points"]) == points + FRAMES
            assert f"to {end}" in panel.inner_text()
            # the new grid's button, by its key: until the fragment run has replaced it, the previous edit's grid
            # (its "#k" the previous edit's frame) can still be on the page. The edit run numbers its samples in
            # order: the first interpolation 0-7, this one 8 (rep + 1) and on
            frame_id = f"edit-{RUN}-{FRAMES * (rep + 1) + rep + 5:08d}"
            results.locator(f".st-key-edit_sel_{frame_id} button:visible").first.click()
            page.wait_for_function("(id) => { const w = document.querySelector('.dmv-wrap');"
                                   " return w.dataset.selected === id; }", arg=frame_id)
            wait_links(page, "interpolate", FRAMES)
            assert int(h.map_state(page)["points"]) == points + FRAMES and path_vertices(page) == FRAMES + 2
        print("edit_to_map_warm_s=" + ",".join(f"{w:.2f}" for w in warm) + f" (interpolations of {FRAMES} frames)")
        assert seconds < 30 and max(warm) < 30  # on a loaded machine; the target (< 2 s on a quiet one) is reported
    except Exception:
        page.screenshot(path=str(tmp_path / "failed.png"))
        page.locator(".st-key-edit_panel").screenshot(path=str(tmp_path / "failed-panel.png"))
        raise
    finally:
        context.close()
