"""What a newcomer's walk through the demo found in Chromium at a 1400x900 window, pinned on a store of the
same shape (four sampling steps with x0 previews)."""

from __future__ import annotations

import pytest

from tests.browser import harness as h
from tests.browser.previews_store import MODEL, SIGMAS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WINDOW = {"width": 1400, "height": 900}


def test_x0_previews_are_all_one_size_in_the_selection_panel(chromium, previews_server):
    context = chromium.new_context(viewport=WINDOW)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{previews_server}/?model={MODEL}&step=3&sel=run-a-00000004")
        h.wait_map(page, timeout=180)
        images = ".st-key-x0_previews [data-testid='stImage'] img"
        page.wait_for_function(f"() => [...document.querySelectorAll(\"{images}\")].filter(i => i.complete "
                               f"&& i.naturalWidth > 0).length === {len(SIGMAS)}")
        widths = page.evaluate(f"() => [...document.querySelectorAll(\"{images}\")]"
                               ".map(i => i.getBoundingClientRect().width)")
        strip = page.evaluate("() => document.querySelector('.st-key-x0_previews').getBoundingClientRect().width")
        # a preview that wrapped alone onto a row grew to the whole panel (4x the others) before
        assert max(widths) - min(widths) <= 1, widths
        assert max(widths) <= strip / 2, (widths, strip)
    finally:
        context.close()


def test_two_downloads_clicked_one_after_the_other_both_arrive(chromium, previews_server):
    """A download used to rerun the page, replacing the other buttons' deferred files: a second download clicked
    while that rerun ran got nothing ("Deferred file ... not found" in the server's log)."""
    context = chromium.new_context(viewport=WINDOW, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{previews_server}/?model={MODEL}&step=3&sel=run-a-00000004")
        h.wait_map(page, timeout=180)
        page.locator("[data-testid=stMain] button", has_text="Map (HTML)").first.wait_for()
        for _ in range(4):
            got = []
            for label in ("CSV", "Map (HTML)"):
                with page.expect_download(timeout=15_000) as download:
                    page.locator("[data-testid=stMain] button", has_text=label).first.click()
                got.append(download.value.suggested_filename)
            assert [n.rsplit(".", 1)[1] for n in got] == ["csv", "html"], got
    finally:
        context.close()


def test_motion_cka_values_are_drawn_whole_in_a_narrow_column(chromium, tmp_path):
    """The depth animation's CKA line is drawn in a column about 190 px wide: a value near 1 ("0.98", the
    demo's encoder_bottleneck -> midblock) was cut at the plot's right edge to "0.9"."""
    import pandas as pd

    from app import motion_view as mv

    frame = pd.DataFrame({"cka": [0.976, 0.245], "to": ["midblock", "dec.16x16_block0"],
                          "pair": ["encoder_bottleneck → midblock", "midblock → dec.16x16_block0"]})
    fig = mv.cka_figure(frame, 600)
    fig.update_layout(width=190)
    html = tmp_path / "cka.html"
    html.write_text(fig.to_html(include_plotlyjs=True, full_html=True), encoding="utf-8")
    with h.offline_page(chromium, html, {"width": 400, "height": 700}) as (page, _, errors):
        page.wait_for_selector(".textpoint text")
        found = page.evaluate("""() => {
          const svg = document.querySelector('.main-svg').getBoundingClientRect();
          const text = document.querySelector('.textpoint text');
          let clipped = false;
          for (let e = text; e && e.tagName !== 'svg'; e = e.parentElement) clipped = clipped || e.hasAttribute('clip-path');
          const area = document.querySelector('.nsewdrag');
          const right = area.getBoundingClientRect().right;
          return {svg: svg.right, plotRight: right, clipped,
                  texts: [...document.querySelectorAll('.textpoint text')].map(t => [t.textContent, t.getBoundingClientRect().right])};
        }""")
        assert not errors
    assert [t for t, _ in found["texts"]] == ["0.98", "0.24"]
    for text, right in found["texts"]:
        assert right <= found["svg"], (text, found)
        if found["clipped"]:
            assert right <= found["plotRight"] + 0.5, (text, found)
