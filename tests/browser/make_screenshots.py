"""Write docs/screenshots/{explore,overview,compare}-{light,dark}.png from a running app on a store.

    python tests/browser/make_screenshots.py --store data [--stand-in-projector] [--out docs/screenshots]

The Explore shots show a selected sample with its neighbours and a hover preview; the theme follows the
browser's colour scheme (the app's default "system" setting).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.browser import harness as h  # noqa: E402


def explore(page, url: str, out: Path) -> None:
    page.goto(url)
    h.wait_map(page, timeout=600)
    ids = h.spread_ids(page, 40, margin=120, seed=3)
    # a selection whose neighbours sit inside the map, then a hover preview next to it
    sid = ids[0]
    page.goto(url + f"&sel={sid}&k=8" if "?" in url else url + f"?sel={sid}&k=8")
    h.wait_map(page, timeout=120)
    h.wait_selected(page, sid)
    page.wait_for_function("""() => [...document.querySelectorAll('[class*="st-key-nb_kNN_"] img')]
        .filter(i => i.complete && i.naturalWidth > 0).length >= 8""", timeout=60_000)
    sx, sy = h.point_xy(page, sid)
    # hover a point of another part of the map, a little away from the selection
    others = sorted(ids[1:], key=lambda o: abs(abs(h.point_xy(page, o)[0] - sx) - 260)
                    + abs(h.point_xy(page, o)[1] - sy) / 2)
    for other in others:
        x, y = h.point_xy(page, other)
        page.mouse.move(x, y)
        try:
            page.wait_for_function("""() => { const t = document.querySelector('.dmv-tip');
                return t && !t.hidden && t.querySelector('img').naturalWidth > 0; }""", timeout=3000)
            break
        except Exception:
            continue
    time.sleep(0.8)
    page.screenshot(path=str(out))


def overview(page, url: str, out: Path) -> None:
    page.goto(url.rstrip("/") + "/overview")
    page.wait_for_selector("text=Samples per class or category", timeout=120_000)
    loaded = """() => { const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')]
        .filter(i => i.getBoundingClientRect().top < window.innerHeight);
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"""
    page.wait_for_function(loaded, timeout=60_000)
    time.sleep(2)
    page.wait_for_function(loaded, timeout=60_000)
    page.screenshot(path=str(out))


def compare(page, url: str, out: Path, color: str = "label") -> None:
    """Compare layers at the last step of the demo store (both maps drawn, the disagreement table loaded)."""
    page.goto(url.rstrip("/") + f"/compare-layers?model=demo&step=3&color={color}")
    page.wait_for_function("() => document.querySelectorAll(\".dmv-wrap[data-ready='1']\").length === 2",
                           timeout=900_000)
    page.wait_for_selector("[data-testid='stDataFrame']", timeout=60_000)
    time.sleep(2.5)
    page.screenshot(path=str(out), full_page=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--stand-in-projector", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with h.AppServer(args.store, stand_in_projector=args.stand_in_projector,
                     log=Path("/tmp/make_screenshots.log")) as server, sync_playwright() as p:
        browser = h.launch(p)
        for scheme in ("light", "dark"):
            context = browser.new_context(viewport={"width": 1600, "height": 1000}, color_scheme=scheme,
                                          device_scale_factor=1)
            explore(context.new_page(), server.url, args.out / f"explore-{scheme}.png")
            context.close()
            context = browser.new_context(viewport={"width": 1600, "height": 1400}, color_scheme=scheme)
            overview(context.new_page(), server.url, args.out / f"overview-{scheme}.png")
            context.close()
            context = browser.new_context(viewport={"width": 1600, "height": 2650}, color_scheme=scheme)
            compare(context.new_page(), server.url, args.out / f"compare-{scheme}.png",
                    color="label" if scheme == "light" else "agreement")
            context.close()
            print(f"wrote {scheme} screenshots to {args.out}", flush=True)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
