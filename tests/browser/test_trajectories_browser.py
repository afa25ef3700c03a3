"""Browser test of an all-steps map: hover names the step, a click draws the sample's trajectory.

Its own server on a synthetic store (three steps), with the AppTest stand-in engine (``tests.app_fixtures.FakeProjector``), which maps every step as it maps one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.browser import harness as h

pytestmark = pytest.mark.browser

_SERVE = """
import sys
sys.path.insert(0, {root!r})
from app import data
from tests.app_fixtures import FakeProjector
data.set_projector(FakeProjector())
from streamlit.web import cli
sys.argv = ["streamlit", "run", {entry!r}, "--server.port", "{port}", "--server.address", "127.0.0.1",
            "--server.headless", "true"]
sys.exit(cli.main())
"""


LAST_ONLY = 200


@pytest.fixture(scope="module")
def steps_server(tmp_path_factory):
    from tests.app_fixtures import SIGMAS, _write_class_run, build_app_store

    store = build_app_store(tmp_path_factory.mktemp("steps") / "store")
    # a run that records only the last step (a teacher's): that step has the most points
    _write_class_run(store, "digits", "digits-last", ("encoder_bottleneck", "midblock"), LAST_ONLY, SIGMAS[-1:],
                     seed=4, first_step=len(SIGMAS) - 1)
    port = h.free_port()
    code = _SERVE.format(root=str(h.ROOT), entry=str(h.ROOT / "app" / "streamlit_app.py"), port=port)
    log = open(tmp_path_factory.mktemp("steps-log") / "streamlit.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=h.ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "DMD2VIZ_STORE": str(store), "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            assert proc.poll() is None, f"the app server exited (log: {log.name})"
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_all_steps_hover_shows_the_step_and_a_click_draws_the_trajectory(chromium, steps_server):
    context = chromium.new_context(viewport=h.VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(steps_server + "?step=all&color=step")
        h.wait_map(page)
        assert int(h.map_state(page)["points"]) == 3 * 180 + LAST_ONLY
        assert "step 0 (σ 14.6)" in page.inner_text(".dmv-legend")
        # steps are listed in their order, not by count (step 2 holds the most points)
        names = page.evaluate("() => [...document.querySelectorAll('.dmv-legend .dmv-legend-name')]"
                              ".map(e => e.textContent)")
        assert [n.split(" (")[0] for n in names] == ["step 0", "step 1", "step 2"], names
        sid, x, y = h.pick(page, h.spread_ids(page, 1, seed=3)[0])
        assert "@" in sid
        page.wait_for_function(h.TIP_SHOWN, arg=sid)  # the sample's thumbnail, though the id names a point
        rows = dict(line.split("\t", 1) for line in page.inner_text(".dmv-tip table").splitlines() if "\t" in line)
        assert rows["step"] == sid.rsplit("@", 1)[1] and rows["sigma"] in {"14.6", "2.5", "0.3"}
        page.mouse.click(x, y)
        h.wait_selected(page, sid)
        page.wait_for_function("() => document.querySelector('.dmv-wrap').dataset.trajectory === '3'")
        # neighbours are points too; their rows show their sample's thumbnail and their step
        page.wait_for_function("() => [...document.querySelectorAll('[class*=\"st-key-nb_kNN_\"] img')]"
                               ".filter(i => i.complete && i.naturalWidth > 0).length === 5")
        assert " · step " in page.inner_text(h.PANEL)
        line = page.evaluate("""() => { const p = document.querySelector('.dmv-rings polyline.dmv-trajectory');
            return p && p.getAttribute('points').trim().split(/\\s+/).length; }""")
        assert line == 3  # one vertex per step
        labels = page.evaluate("() => [...document.querySelectorAll('.dmv-rings .dmv-traj-label')]"
                               ".map(t => t.textContent)")
        assert labels == ["0", "1", "2"]
        # the line follows the points on zoom (it lives in the SVG layer, not in the figure)
        before = page.get_attribute(".dmv-rings polyline.dmv-trajectory", "points")
        page.mouse.move(x, y)
        page.mouse.wheel(0, -360)
        page.wait_for_function("(b) => document.querySelector('.dmv-rings polyline.dmv-trajectory')"
                               ".getAttribute('points') !== b", arg=before)
        assert "sel=" in page.url and "step=all" in page.url
    finally:
        context.close()
