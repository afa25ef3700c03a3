"""Drive the app in headless Chromium: start a server, open pages, find, hover and click map points.

Shared by the browser tests (``tests/browser``) and ``benchmarks/bench_app.py``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1500, "height": 1000}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``streamlit run app/streamlit_app.py`` on a free localhost port, for one store."""

    def __init__(self, store: str | Path, *, stand_in_projector: bool = True, log: Path | None = None,
                 args: tuple[str, ...] = ()):
        self.store = str(store)
        self.stand_in = stand_in_projector
        self.args = tuple(args)  # more options of tests/browser/serve.py
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> AppServer:
        cmd = [sys.executable, str(ROOT / "tests" / "browser" / "serve.py"), "--port", str(self.port),
               "--store", self.store]
        if self.stand_in:
            cmd.append("--stand-in-projector")
        cmd.extend(self.args)
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL  # noqa: SIM115 (closed with the process)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app server exited with {self.proc.returncode} (log: {self.log})")
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url + "_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the app server did not answer within {timeout}s (log: {self.log})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


# ------------------------------------------------------------------------------------------ the map

MAP_READY = ".dmv-wrap[data-ready='1']"
TIP_SHOWN = """(id) => {
  const tip = document.querySelector('.dmv-tip');
  const img = tip && tip.querySelector('img');
  return tip && !tip.hidden && tip.dataset.id === id && img && img.complete && img.naturalWidth > 0;
}"""


def wait_map(page, timeout: float = 60) -> None:
    page.wait_for_selector(MAP_READY, timeout=timeout * 1000)


def map_state(page) -> dict:
    return page.evaluate("""() => { const w = document.querySelector('.dmv-wrap');
      const m = window.dmvMap; const xa = m.plot._fullLayout.xaxis, ya = m.plot._fullLayout.yaxis;
      return {...w.dataset, xrange: xa.range.slice(), yrange: ya.range.slice()}; }""")


def isolated_ids(page, count: int, min_px: float = 14, margin: float = 30) -> list[str]:
    """Ids of points drawn at least ``min_px`` from any other point and inside the plot (safe to hover/click)."""
    return page.evaluate("""([count, minPx, margin]) => {
      const m = window.dmvMap; const ids = m.points.ids; const rect = m.plot.getBoundingClientRect();
      const full = m.plot._fullLayout; const xa = full.xaxis, ya = full.yaxis;
      const px = ids.map((_, i) => [xa._offset + xa.l2p(m.points.x[i]), ya._offset + ya.l2p(m.points.y[i])]);
      const cell = minPx, grid = new Map();
      px.forEach(([x, y], i) => { const k = Math.floor(x / cell) + ',' + Math.floor(y / cell);
        (grid.get(k) || grid.set(k, []).get(k)).push(i); });
      const out = [];
      for (let i = 0; i < ids.length && out.length < count; i++) {
        const [x, y] = px[i];
        if (x < margin || y < margin || x > rect.width - margin || y > rect.height - margin) continue;
        let ok = true;
        const gx = Math.floor(x / cell), gy = Math.floor(y / cell);
        for (let dx = -1; dx <= 1 && ok; dx++) for (let dy = -1; dy <= 1 && ok; dy++) {
          for (const j of grid.get((gx + dx) + ',' + (gy + dy)) || []) {
            if (j !== i && Math.hypot(px[j][0] - x, px[j][1] - y) < minPx) { ok = false; break; }
          }
        }
        if (ok) out.push(ids[i]);
      }
      return out; }""", [count, min_px, margin])


def spread_ids(page, count: int, margin: float = 60, seed: int = 0) -> list[str]:
    """``count`` ids of points inside the plot (not at its edges), spread over the map, deterministic."""
    return page.evaluate("""([count, margin, seed]) => {
      const m = window.dmvMap; const ids = m.points.ids; const rect = m.plot.getBoundingClientRect();
      const xa = m.plot._fullLayout.xaxis, ya = m.plot._fullLayout.yaxis; const out = [];
      let state = seed + 1;
      const rand = () => (state = (state * 1103515245 + 12345) % 2147483648) / 2147483648;
      for (let tries = 0; tries < 100000 && out.length < count; tries++) {
        const i = Math.floor(rand() * ids.length);
        const x = xa._offset + xa.l2p(m.points.x[i]), y = ya._offset + ya.l2p(m.points.y[i]);
        if (x > margin && y > margin && x < rect.width - margin && y < rect.height - margin) out.push(ids[i]);
      }
      return out; }""", [count, margin, seed])


def point_xy(page, sample_id: str) -> tuple[float, float]:
    p = page.evaluate("(id) => window.dmvMap.pointPixel(id)", sample_id)
    return p["x"], p["y"]


def hover(page, sample_id: str, timeout: float = 10) -> float:
    """Move the mouse onto a point; returns seconds until its preview image is drawn."""
    x, y = point_xy(page, sample_id)
    page.mouse.move(x - 40, y - 40)
    t0 = time.perf_counter()
    page.mouse.move(x, y)
    page.wait_for_function(TIP_SHOWN, arg=sample_id, timeout=timeout * 1000, polling="raf")
    return time.perf_counter() - t0


def click(page, sample_id: str) -> None:
    x, y = point_xy(page, sample_id)
    page.mouse.move(x, y)
    page.mouse.click(x, y)


def wait_selected(page, sample_id: str, timeout: float = 15) -> None:
    page.wait_for_function("(id) => document.querySelector('.dmv-wrap').dataset.selected === id",
                           arg=sample_id, timeout=timeout * 1000)


PANEL = ".st-key-selection_panel"


def neighbour_images(page, kind: str = "kNN") -> int:
    """Loaded thumbnails in the selection panel's neighbour rows of one kind."""
    return page.evaluate("""(kind) => [...document.querySelectorAll(`[class*="st-key-nb_${kind}_"] img`)]
      .filter(img => img.complete && img.naturalWidth > 0).length""", kind)


def neighbour_ids(page, kind: str = "kNN") -> list[str]:
    return page.evaluate("""(kind) => [...document.querySelectorAll(`[class*="st-key-nb_${kind}_"]`)]
      .map(el => [...el.classList].find(c => c.startsWith(`st-key-nb_${kind}_`)).slice(`st-key-nb_${kind}_`.length))""",
                         kind)


# ---------------------------------------------------------------------------------- in-page timings
# Measured inside the page (performance.now() from the input event to the frame that shows the result), so
# Playwright's round trips are not counted.

_WATCH = """([kind, id, k]) => {
  window.__dmvT = {start: null, end: null};
  const ev = kind === 'hover' ? 'mousemove' : 'mousedown';
  const onInput = (e) => { if (window.__dmvT.start === null) window.__dmvT.start = e.timeStamp; };
  document.addEventListener(ev, onInput, {capture: true});
  const done = () => {
    if (kind === 'hover') {
      const tip = document.querySelector('.dmv-tip'); const img = tip && tip.querySelector('img');
      return tip && !tip.hidden && (id === null ? !!tip.dataset.id : tip.dataset.id === id)
        && img.complete && img.naturalWidth > 0 && img.dataset.id === tip.dataset.id;
    }
    const sel = document.querySelector('.dmv-wrap').dataset.selected;
    if (id === null ? !sel : sel !== id) return false;
    const imgs = [...document.querySelectorAll('[class*="st-key-nb_kNN_"] img')];
    return imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0);
  };
  const tick = () => {
    if (window.__dmvT.start !== null && done()) {
      window.__dmvT.end = performance.now();
      document.removeEventListener(ev, onInput, {capture: true});
    } else requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}"""


def timed_hover(page, sample_id: str, timeout: float = 10, exact: bool = True) -> float:
    """Seconds from the mouse reaching a point to its preview image drawn (in-page clock). ``exact=False``
    accepts whichever point plotly finds under the mouse (dense maps)."""
    x, y = point_xy(page, sample_id)
    page.mouse.move(5, 5)
    page.wait_for_selector(".dmv-tip", state="hidden")
    page.evaluate(_WATCH, ["hover", sample_id if exact else None, 0])
    page.mouse.move(x, y)
    page.wait_for_function("() => window.__dmvT.end !== null", timeout=timeout * 1000)
    return page.evaluate("() => (window.__dmvT.end - window.__dmvT.start) / 1000")


def timed_click(page, sample_id: str, k: int, timeout: float = 30, exact: bool = True) -> float:
    """Seconds from the click on a point to the selection panel showing its k neighbour thumbnails."""
    x, y = point_xy(page, sample_id)
    page.mouse.move(x, y)
    page.evaluate(_WATCH, ["click", sample_id if exact else None, k])
    page.mouse.click(x, y)
    page.wait_for_function("() => window.__dmvT.end !== null", timeout=timeout * 1000)
    return page.evaluate("() => (window.__dmvT.end - window.__dmvT.start) / 1000")


def clear_selection(page) -> None:
    page.click(".st-key-clear_selection button")
    page.wait_for_function("() => document.querySelector('.dmv-wrap').dataset.selected === ''")
    page.wait_for_function("() => !document.querySelector('[class*=\"st-key-nb_kNN_\"]')")


def pick(page, sample_id: str, timeout: float = 10) -> tuple[str, float, float]:
    """Hover the point drawn for ``sample_id``; returns the id plotly finds under the mouse (that one on a
    sparse map, maybe an overlapping neighbour on a dense one) and the mouse position: a click there selects
    that id."""
    x, y = point_xy(page, sample_id)
    page.mouse.move(5, 5)
    page.wait_for_selector(".dmv-tip", state="hidden")
    page.mouse.move(x, y)
    page.wait_for_function("""() => { const t = document.querySelector('.dmv-tip');
        return t && !t.hidden && !!t.dataset.id; }""", timeout=timeout * 1000)
    return page.evaluate("() => document.querySelector('.dmv-tip').dataset.id"), x, y


# ------------------------------------------------------------------------------ standalone HTML files

@contextlib.contextmanager
def offline_page(chromium, html: Path, viewport: dict):
    """A page of the standalone file `html` in a context with the network cut (any request but the file itself
    is aborted). Yields (page, asked, errors): the URLs it asked for and its script errors, for the caller to
    check after its steps."""
    context = chromium.new_context(viewport=viewport, offline=True)
    asked: list[str] = []
    errors: list[str] = []
    context.on("request", lambda r: asked.append(r.url))
    context.route("**/*", lambda route: route.continue_() if route.request.url == html.as_uri() else route.abort())
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(html.as_uri())
        yield page, asked, errors
    finally:
        page.close()
        context.close()


def hover_thumbnails(page, plot: str, xy, ids: list[str], store, count: int = 2) -> None:
    """Hover the `count` most isolated points of a standalone plotly map (`plot`: its CSS selector; `xy` its
    coordinates, `ids` its samples) and check that the hover box shows each one's thumbnail from `store`."""
    import base64

    import numpy as np

    xy = np.asarray(xy, dtype=float)
    box = page.locator("#hover-thumb")
    gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 1e9
    for row in np.argsort(-gaps.min(axis=1))[:count]:
        x, y = page.evaluate(
            """([sel, x, y]) => { const gd = document.querySelector(sel), L = gd._fullLayout,
                   r = gd.getBoundingClientRect();
               return [r.left + L._size.l + L.xaxis.l2p(x), r.top + L._size.t + L.yaxis.l2p(y)]; }""",
            [plot, float(xy[row, 0]), float(xy[row, 1])])
        page.mouse.move(x, y)
        want = "data:image/webp;base64," + base64.b64encode(store.thumbs([ids[row]])[0]).decode()
        # the box still shows the previous point until this hover lands: wait for this point's image
        page.wait_for_function("""(want) => { const b = document.getElementById('hover-thumb');
            return b.style.display === 'block' && b.src === want && b.complete && b.naturalWidth > 0; }""", arg=want)
        assert box.get_attribute("src") == want


def thumbnail_hides(page) -> None:
    """Move the mouse off the map: the hover box hides."""
    page.mouse.move(5, 5)
    page.wait_for_function("() => document.getElementById('hover-thumb').style.display === 'none'")
