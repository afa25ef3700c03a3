"""AppTest: the Explore view survives a failed store change, a link's unusable values are named, colour by run
shows the run, and the filter and highlight messages count what the map shows."""

from __future__ import annotations

import pytest

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

app_store = fx.app_store  # pytest fixtures
app_env = fx.app_env

# the Explore sidebar's widgets, by key: the AppTest accessor of each
SIDEBAR = {"w_model": "selectbox", "w_layer": "selectbox", "w_step": "select_slider", "w_nn": "slider",
           "w_md": "slider", "w_metric": "selectbox", "w_feature": "radio", "w_color": "selectbox", "w_k": "slider",
           "w_space": "radio", "w_psize": "slider"}


def _widget(at, key):
    return getattr(at, SIDEBAR[key])(key=key)


def _shown(at, key):
    """What the browser draws for a sidebar widget it mounts anew (one that was not on the page before): the
    value Streamlit sends with it (``set_value``), else the widget's default (a slider's minimum, the first
    option). AppTest itself reads the server's value, which can differ: that difference is what a browser user
    saw."""
    w = _widget(at, key)
    p = w.proto
    kind = SIDEBAR[key]
    if kind in ("selectbox", "radio"):
        return p.raw_value if p.set_value else p.options[p.default]
    if kind == "select_slider":
        return p.raw_value[0] if p.set_value else p.options[int(p.default[0])]
    return round(list(p.value)[0] if p.set_value else list(p.default)[0], 6)


# ------------------------------------------------------------------- item 12: a store-path typo


VIEW_QUERY = {"layer": "encoder_bottleneck", "step": "1", "nn": "30", "md": "0.4", "k": "7", "metric": "cosine",
              "feat": "mean", "space": "map", "color": "run", "ps": "8.0", "sel": "digits-a-00000004"}


def test_the_view_survives_a_store_path_typo(app_env, tmp_path):
    at = app_test(query=VIEW_QUERY)
    assert not at.exception
    shown = {k: _shown(at, k) for k in SIDEBAR}
    assert shown["w_nn"] == 30 and shown["w_k"] == 7 and shown["w_layer"] == "encoder_bottleneck"
    fits = len(app_env.calls)
    fit = app_env.calls[-1]
    store = at.text_input(key="dmd_store_input").value

    at.text_input(key="dmd_store_input").set_value(str(tmp_path / "no-such-store")).run()  # a typo
    assert not at.exception and "does not exist" in fx.page_text(at, at.sidebar.warning)
    at.text_input(key="dmd_store_input").set_value(store).run()  # and back
    assert not at.exception
    # every control is drawn with its value again (not at its minimum), the view and selection are as they were
    assert {k: _shown(at, k) for k in SIDEBAR} == shown
    assert {k: _widget(at, k).value for k in ("w_nn", "w_md", "w_k", "w_step")} == \
        {"w_nn": 30, "w_md": 0.4, "w_k": 7, "w_step": 1}
    assert fx.map_data(at)["selected"] == "digits-a-00000004"
    assert {k: at.query_params[k] for k in VIEW_QUERY} == VIEW_QUERY
    # no fit with other values: the projection asked for is the same one as before
    assert all(c["params"] == fit["params"] and (c["layer"], c["step"]) == (fit["layer"], fit["step"])
               for c in app_env.calls[fits:])
    # the next interaction sends what the browser shows: still the same projection
    for k in SIDEBAR:
        if SIDEBAR[k] == "slider":
            _widget(at, k).set_value(type(_widget(at, k).value)(_shown(at, k)))
    at.run()
    assert not at.exception
    assert all(c["params"] == fit["params"] for c in app_env.calls[fits:])
    assert at.query_params["nn"] == "30" and at.query_params["k"] == "7"


def test_the_same_store_spelled_otherwise_keeps_the_view(app_env):
    at = app_test(query={"nn": "30", "sel": "digits-a-00000004"})
    store = at.text_input(key="dmd_store_input").value
    at.text_input(key="dmd_store_input").set_value(f"  {store} ").run()  # the same store
    assert not at.exception
    assert at.slider(key="w_nn").value == 30 and fx.map_data(at)["selected"] == "digits-a-00000004"


# ------------------------------------------------------------------- item 13: what a link could not use


def test_a_links_unusable_values_are_named_with_what_was_used(app_env):
    at = app_test(query={"model": "nope", "layer": "nope", "step": "99", "sel": "nope-00000001", "color": "nope",
                         "nn": "9999", "md": "abc"})
    assert not at.exception
    assert at.selectbox(key="w_model").value == "digits" and at.selectbox(key="w_layer").value == "midblock"
    notice = [w.value for w in at.warning if "could not be used" in w.value]
    assert len(notice) == 1
    text = notice[0]
    for expected in ("`model=nope` (no such model in this store): used `digits`",
                     "`layer=nope` (not a layer of digits): used `midblock`",
                     "`step=99` (digits · midblock has no such step): used `2`",
                     "`color=nope` (not a colouring of this view): used `label`",
                     "`sel=nope-00000001` (not a sample of digits): used no selection",
                     "`nn=9999` (out of range): used `100`",
                     "`md=abc` (not a number): used `0.1`"):
        assert expected in text, (expected, text)
    assert fx.map_data(at)["selected"] is None
    at.button(key="dismiss_url_fixes").click().run()  # until dismissed
    assert not [w for w in at.warning if "could not be used" in w.value]


def test_a_good_link_has_no_notice_and_a_later_change_adds_none(app_env):
    at = app_test(query={"model": "words", "layer": "mid_block", "step": "0", "color": "category",
                         "sel": "words-a-00000004", "kw": "cat "})
    assert not at.exception and not [w for w in at.warning if "could not be used" in w.value]
    at.selectbox(key="w_model").set_value("digits").run()  # the user's own change is not the link's
    assert not at.exception and not [w for w in at.warning if "could not be used" in w.value]


# ------------------------------------------- colour by run, filters and highlights on a store with uneven runs


@pytest.fixture(scope="module")
def uneven_store(tmp_path_factory):
    """Two runs of one model: digits-a has three steps, digits-b only the first, so steps 1 and 2 hold one run."""
    root = tmp_path_factory.mktemp("uneven") / "store"
    fx._write_class_run(root, "digits", "digits-a", ("midblock",), 60, fx.SIGMAS, seed=1)
    fx._write_class_run(root, "digits", "digits-b", ("midblock",), 40, fx.SIGMAS[:1], seed=2)
    return root


@pytest.fixture
def uneven_env(uneven_store, monkeypatch, tmp_path):
    with fx.app_pointed_at(uneven_store, monkeypatch, tmp_path) as fake:
        yield fake


def test_colour_by_run_at_a_step_with_one_run_shows_that_run(uneven_env):
    at = app_test(query={"step": "2", "color": "run"})
    assert not at.exception
    assert at.selectbox(key="w_color").value == "run"
    color = fx.static_json(fx.map_data(at)["color_url"])
    assert color["title"] == "run" and color["names"] == ["digits-a"] and color["counts"] == [60]
    assert len(set(color["colors"])) == 1
    at.select_slider(key="w_step").set_value(0).run()  # both runs: two colours
    color = fx.static_json(fx.map_data(at)["color_url"])
    assert color["names"] == ["digits-a", "digits-b"] and color["counts"] == [60, 40]


def test_highlight_counts_only_what_the_view_shows(uneven_env):
    at = app_test(query={"step": "2", "kw": "three"})
    assert not at.exception
    highlight = fx.map_data(at)["highlight"]
    assert len(highlight) == 6 and all(s.startswith("digits-a-") for s in highlight)  # 4 threes are in digits-b
    assert "**6 highlighted** (4 of the 10 matching samples are not in this view)" in fx.page_text(at, at.sidebar.warning)
    at.select_slider(key="w_step").set_value(0).run()  # every match is here
    assert len(fx.map_data(at)["highlight"]) == 10 and "**10 highlighted**" in fx.page_text(at, at.sidebar.warning)
    assert "not in this view" not in fx.page_text(at, at.sidebar.warning)


def test_a_filter_without_matches_says_so(app_env):
    at = app_test(query={"kw": "zzzz", "fm": "project"})
    assert not at.exception
    text = fx.page_text(at, at.sidebar.warning)
    assert "No sample matches the filter" in text and "Only 0" not in text
    assert app_env.calls[-1]["sample_ids"] is None  # the whole map
    at = app_test(query={"model": "words", "layer": "mid_block", "kw": "ramen", "fm": "project"})
    assert len(fx.map_data(at)["highlight"]) == 6  # too few to project: highlighted, and said so with the count
    assert "Only 6 samples match the filter" in fx.page_text(at, at.sidebar.warning) and "No sample matches" not in fx.page_text(at, at.sidebar.warning)
