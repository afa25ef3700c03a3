"""The Explore page in headless Chromium at 10,000 and 50,000 points: time to first map, hover to preview,
click to neighbour panel. Prints each and the ratio 50k/10k.

    python benchmarks/bench_app.py [--sizes 10000 50000] [--workdir /tmp/dmd2viz-bench] [--repeats 8]

Each size gets a synthetic store (built once into --workdir and reused) and its own app server
(``streamlit run``); the app's exported thumbnails and view files of that store are deleted first, so the
cold first map includes writing them (the thumbnail export runs in the background and is timed apart). The projection comes from the tests' instant stand-in engine, so the numbers measure the
app, the map component and the browser, not a UMAP fit (``benchmarks/bench_project.py`` measures those).
Hover and click are timed inside the page, from the input event to the frame that shows the result.
Targets: hover preview < 100 ms, click to updated neighbour panel < 1 s.

The Motion page's step animation (``--animation-points``, default 3,000; 0 skips it): a synthetic store of that
many samples at 4 steps, its aligned step maps fitted by the real engine (``pipeline.aligned``, printed as
``aligned_first_s``; a fresh server, so numba compiles first), then Play pressed and the frames the browser
draws counted while the points move, printed as ``step_animation_fps=`` (target >= 20). ``--sizes`` with no
value skips the Explore part.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.app_fixtures import build_points_store  # noqa: E402
from tests.browser import harness as h  # noqa: E402

K = 5


def store_for(workdir: Path, n: int) -> Path:
    root = workdir / f"points-{n}"
    if not (root / "samples").is_dir():
        t = time.perf_counter()
        build_points_store(root, n)
        print(f"built a {n:,}-sample store in {time.perf_counter() - t:.1f}s: {root}", flush=True)
    return root


def wait_thumbs(store: Path, n: int, timeout: float = 300) -> float:
    """Seconds until the app has exported every thumbnail of the map (hovers before that may wait for one)."""
    from app import static_files

    folder = static_files.thumbs_dir(static_files.store_key(store))
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if folder.is_dir() and sum(1 for _ in os.scandir(folder)) >= n:
            break
        time.sleep(0.2)
    return time.perf_counter() - t


def forget_static_files(store: Path) -> None:
    """Delete the app's exported thumbnails and view files of this store, so that "cold" is cold."""
    import shutil

    from app import static_files

    key = static_files.store_key(store)
    for folder in (static_files.thumbs_dir(key), static_files.views_dir(key)):
        shutil.rmtree(folder, ignore_errors=True)


def measure(store: Path, n: int, repeats: int, browser) -> dict:
    out: dict = {}
    forget_static_files(store)
    with h.AppServer(store, log=Path(f"/tmp/bench_app_{n}.log")) as server:
        context = browser.new_context(viewport=h.VIEWPORT)
        for label in ("first_map_cold_s", "first_map_warm_s"):
            page = context.new_page()
            t = time.perf_counter()
            page.goto(server.url)
            h.wait_map(page, timeout=300)
            out[label] = time.perf_counter() - t
            if label == "first_map_cold_s":
                out["thumbs_export_s"] = wait_thumbs(store, n)
                page.close()
        ids = h.spread_ids(page, repeats * 2)  # dense maps: whichever point is under the mouse counts
        hovers = [h.timed_hover(page, sid, exact=False) for sid in ids[:repeats]]
        page.mouse.move(5, 5)
        clicks = []
        for sid in ids[repeats: repeats * 2]:
            clicks.append(h.timed_click(page, sid, K, exact=False))
            h.clear_selection(page)
        out["hover_median_s"] = statistics.median(hovers)
        out["hover_max_s"] = max(hovers)
        out["click_median_s"] = statistics.median(clicks)
        out["click_max_s"] = max(clicks)
        context.close()
    return out


ANIMATION_STEPS = (14.6, 5.0, 1.5, 0.3)  # four sampling steps, like the demo's multi-step run
_PLOT = ("[...document.querySelectorAll('.js-plotly-plot')].find(p => p._transitionData && "
         "p._transitionData._frames && p._transitionData._frames.length)")
_WATCH_FRAMES = f"""(limitMs) => {{
  const gd = {_PLOT};
  const pts = gd.querySelectorAll('.scatterlayer .trace:first-child .point');
  const probe = [pts[0], pts[Math.floor(pts.length / 2)], pts[pts.length - 1]];
  window.__anim = new Promise(resolve => {{
    const t0 = performance.now(); let last = null; const changes = [];
    const tick = (t) => {{
      const now = probe.map(p => p.getAttribute('transform')).join('|');
      if (last !== null && now !== last) changes.push(t);
      last = now;
      if (performance.now() - t0 < limitMs) requestAnimationFrame(tick);
      else resolve({{changes, points: pts.length}});
    }};
    requestAnimationFrame(tick);
  }});
}}"""


def animation_store(workdir: Path, n: int) -> Path:
    from tests.app_fixtures import _write_class_run

    root = workdir / f"steps-{n}"
    if not (root / "samples").is_dir():
        t = time.perf_counter()
        _write_class_run(root, "points", f"steps-{n}", ("midblock",), n, ANIMATION_STEPS, seed=11, image_size=24,
                         batch=1000)
        print(f"built a {n:,}-sample, {len(ANIMATION_STEPS)}-step store in {time.perf_counter() - t:.1f}s: {root}",
              flush=True)
    return root


def measure_animation(workdir: Path, n: int, browser) -> dict:
    """Seconds to the first aligned step maps, and the frames per second the browser draws while Play moves the
    points (the median interval between frames in which the points moved)."""
    store = animation_store(workdir, n)
    out: dict = {}
    with h.AppServer(store, log=Path(f"/tmp/bench_app_motion_{n}.log")) as server:
        context = browser.new_context(viewport=h.VIEWPORT)
        page = context.new_page()
        t = time.perf_counter()
        page.goto(server.url + "motion?model=points&mode=steps&layer=midblock&k=0&speed=normal")
        page.wait_for_function(f"() => !!({_PLOT})", timeout=900_000)
        out["aligned_first_s"] = time.perf_counter() - t
        time.sleep(1.0)
        page.evaluate(_WATCH_FRAMES, 4500)
        page.locator(".updatemenu-button", has_text="Play").first.click()
        got = page.evaluate("() => window.__anim")
        changes = got["changes"]
        gaps = [b - a for a, b in zip(changes, changes[1:], strict=False) if b - a < 250]  # within a transition
        out["points"] = got["points"]
        out["moving_frames"] = len(changes)
        out["step_animation_fps"] = 1000.0 / statistics.median(gaps) if gaps else 0.0
        context.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dmd2viz-bench"))
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--animation-points", type=int, default=3000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    load = os.getloadavg()
    print(f"cpus={os.cpu_count()} load_avg={load[0]:.1f},{load[1]:.1f},{load[2]:.1f} (a shared machine: "
          "timings swing with the load)")
    results = {}
    with sync_playwright() as p:
        browser = h.launch(p)
        for n in args.sizes:
            store = store_for(args.workdir, n)
            results[n] = measure(store, n, args.repeats, browser)
            r = results[n]
            print(f"{n:>7,} points: first map {r['first_map_cold_s']:.2f}s cold / {r['first_map_warm_s']:.2f}s warm"
                  f" · thumbnails exported after {r['thumbs_export_s']:.1f}s"
                  f" · hover→preview median {r['hover_median_s'] * 1000:.0f} ms (max {r['hover_max_s'] * 1000:.0f})"
                  f" · click→panel median {r['click_median_s'] * 1000:.0f} ms (max {r['click_max_s'] * 1000:.0f})",
                  flush=True)
        if args.animation_points:
            r = measure_animation(args.workdir, args.animation_points, browser)
            print(f"motion: {r['points']:,} points, aligned step maps after {r['aligned_first_s']:.1f}s "
                  f"(aligned_first_s, includes the page), {r['moving_frames']} frames with motion; "
                  f"step_animation_fps={r['step_animation_fps']:.1f} (target >= 20: "
                  f"{'met' if r['step_animation_fps'] >= 20 else 'MISSED'})", flush=True)
        browser.close()
    if not results:
        return 0
    if len(args.sizes) >= 2:
        a, b = args.sizes[0], args.sizes[-1]
        print(f"ratios {b // 1000}k/{a // 1000}k:", " ".join(
            f"{k}={results[b][k] / results[a][k]:.2f}" for k in
            ("first_map_cold_s", "first_map_warm_s", "hover_median_s", "click_median_s")))
    worst_hover = max(r["hover_median_s"] for r in results.values())
    worst_click = max(r["click_median_s"] for r in results.values())
    print(f"targets: hover<100ms {'met' if worst_hover < 0.1 else 'MISSED'} ({worst_hover * 1000:.0f} ms), "
          f"click<1s {'met' if worst_click < 1 else 'MISSED'} ({worst_click * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
