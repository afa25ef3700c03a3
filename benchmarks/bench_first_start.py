"""First start, as a new user meets it: from the README's app command to the first map in a browser.

    python benchmarks/bench_first_start.py [--workdir /tmp/dmd2viz-first-start]

Runs ``bash scripts/run.sh app`` (the README's command; the packages are already installed, so its pip step
only checks them) with the default store pointed at a new empty folder (``DMD2VIZ_STORE``) and a new, empty
numba cache (``NUMBA_CACHE_DIR``), as on a fresh clone: the app builds the demo store, computes its first
maps and draws one. Headless Chromium (Debian's, through Playwright) opens the page as soon as the server
answers and waits for the drawn map. Prints when the server answered, when the map was drawn, the machine's
load, the peer (``python -m pipeline demo`` run by itself into another empty folder, in the same run: the
build alone), and last ``first_start_s=<seconds to the first map>``. Target: 45 s on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import harness as h  # noqa: E402


def first_start(workdir: Path) -> dict:
    store, numba = workdir / "data", workdir / "numba-cache"
    port = h.free_port()
    env = {**os.environ, "DMD2VIZ_STORE": str(store), "NUMBA_CACHE_DIR": str(numba), "PYTHONUNBUFFERED": "1"}
    log = open(workdir / "streamlit.log", "wb")  # noqa: SIM115 (closed below)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "scripts/run.sh", "app", "--server.port", str(port), "--server.address",
                             "127.0.0.1", "--server.headless", "true"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    out = {}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}: see {log.name}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                if r.status == 200:
                    break
            if time.perf_counter() - t0 > 300:
                raise TimeoutError("the server did not answer within 300 s")
            time.sleep(0.2)
        out["server_s"] = time.perf_counter() - t0
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = h.launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            h.wait_map(page, timeout=600)
            out["first_map_s"] = time.perf_counter() - t0
            page.screenshot(path=str(workdir / "first-map.png"))
            browser.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(20)
        log.close()
    return out


def demo_alone(workdir: Path) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(workdir / "numba-cache-peer")}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "demo", "--store", str(workdir / "peer-data")], cwd=ROOT,
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dmd2viz-first-start-"))
    for name in ("data", "numba-cache", "peer-data", "numba-cache-peer"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
          + f" on {os.cpu_count()} cores", flush=True)
    got = first_start(workdir)
    peer = demo_alone(workdir)
    print(f"server answered after {got['server_s']:.1f} s; first map drawn after {got['first_map_s']:.1f} s "
          f"(screenshot: {workdir / 'first-map.png'})")
    print(f"peer: `python -m pipeline demo` alone (build and first maps, fresh numba cache) {peer:.1f} s; "
          f"first start / peer = {got['first_map_s'] / peer:.2f}")
    print("load average after: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"first_start_s={got['first_map_s']:.1f}")


if __name__ == "__main__":
    main()
