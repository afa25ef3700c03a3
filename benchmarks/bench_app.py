"""The Explore page in headless Chromium at 10,000 and 50,000 points: time to first map, hover to preview,
click to neighbour panel. Prints each and the ratio 50k/10k.

    python benchmarks/bench_app.py [--sizes 10000 50000] [--workdir /tmp/dmd2viz-bench] [--repeats 8]

Each size gets a synthetic store (built once into --workdir and reused) and its own app server
(``streamlit run``); the app's exported thumbnails and view files of that store are deleted first, so the
cold first map includes writing them (the thumbnail export runs in the background and is timed apart). The projection comes from the tests' instant stand-in engine, so the numbers measure the
app, the map component and the browser, not a UMAP fit (``benchmarks/bench_project.py`` measures those).
Hover and click are timed inside the page, from the input event to the frame that shows the result.
Targets: hover preview < 100 ms, click to updated neighbour panel < 1 s.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dmd2viz-bench"))
    parser.add_argument("--repeats", type=int, default=8)
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
        browser.close()
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
