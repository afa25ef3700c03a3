"""The app server's log after real projections: no "OpenBLAS Warning: Detect OpenMP Loop" (see app/threads.py).

The server imports torch first, as on a first start (the demo build), so that torch's libgomp is the one
OpenBLAS checks; then it computes maps with the real projection engine (UMAP: numba's OpenMP kernels), and a
probe in the server process calls BLAS from inside a numba OpenMP region once the entry script has run (what
made the warning, without the app's thread settings)."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pytest

from tests.browser import harness as h

pytestmark = pytest.mark.browser


def test_no_openmp_loop_warning_after_computing_maps(chromium, browser_store, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)  # the app must not rely on the caller's setting
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    log = tmp_path / "streamlit.log"
    args = ("--torch-first", "--openmp-probe")
    with h.AppServer(browser_store, stand_in_projector=False, log=log, args=args) as server:
        page = chromium.new_page(viewport=h.VIEWPORT)
        try:
            page.goto(server.url)
            h.wait_map(page, timeout=400)
            layer = page.evaluate("() => new URL(location.href).searchParams.get('layer')")
            page.goto(server.url + "?" + urlencode({"layer": layer, "nn": "10", "md": "0.3"}))  # a second fit
            h.wait_map(page, timeout=400)
        finally:
            page.close()
        deadline = time.time() + 120
        while "openmp probe done" not in log.read_text(errors="replace") and time.time() < deadline:
            time.sleep(0.5)
    text = log.read_text(errors="replace")
    assert "openmp probe done" in text, text[-2000:]
    assert "Detect OpenMP Loop" not in text, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
