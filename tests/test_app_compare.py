"""AppTest: the Compare layers page (CKA heatmap, two maps, neighbour agreement, links into Explore), with the
fast stand-in projection engine of the other app tests."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pytest

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

app_store = fx.app_store  # pytest fixtures
app_env = fx.app_env

COMPARE = "app_pages/compare.py"
LAYERS = ["encoder_bottleneck", "midblock"]


def _open_compare(query: dict):
    """A session opened on the Compare page's URL: AppTest must run the default page (Explore) once before
    it can switch, and Explore rewrites the URL, so the page's query is put back before the switch (the page
    reads the URL on its own first run)."""
    return fx.open_page(COMPARE, query)


def _maps(at, timeout: float = 20) -> list[dict]:
    """Rerun until both maps are drawn (the agreement job may outlast the first short wait); their data."""
    deadline = time.time() + timeout
    while not at.get("bidi_component") and time.time() < deadline and not at.exception and not at.error:
        time.sleep(0.2)
        at.run()
    out = []
    for el in at.get("bidi_component"):
        proto = el.proto
        out.append(json.loads(proto.json if proto.WhichOneof("data") == "json" else proto.mixed.json))
    return out


def _heatmap(at) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1, "expected one heatmap"
    return json.loads(charts[0].proto.spec)


def _array(value) -> np.ndarray:
    """A plotly figure array: a list, or plotly's typed-array form {dtype, bdata, shape}."""
    if isinstance(value, dict):
        import base64

        shape = [int(x) for x in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).reshape(shape)
    return np.array(value, dtype=float)


def test_empty_store_shows_the_same_guidance(app_env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    at = app_test(COMPARE)
    at.text_input(key="dmd_store_input").set_value(str(empty)).run()
    assert not at.exception
    assert "holds no samples yet" in fx.page_text(at, at.code) and "python -m pipeline demo" in fx.page_text(at, at.code)
    assert not at.get("plotly_chart")


def test_page_is_listed_after_explore():
    from app import navigation

    titles = [p.title for p in navigation.available()]
    assert titles[:2] == ["Explore", "Compare layers"]


def test_every_listed_page_has_its_script():
    from app import navigation

    assert navigation.available() == list(navigation.PAGES)  # no menu entry for a page that does not exist


def test_heatmap_of_all_layers_and_the_default_pair(app_env, app_store):
    from pipeline import compare
    from store import Store

    at = app_test(COMPARE)
    assert not at.exception
    assert at.multiselect(key="cmp_layers").value == LAYERS  # default: every layer of the model
    assert at.select_slider(key="cmp_step").options == ["step 0 · σ 14.6", "step 1 · σ 2.5", "step 2 · σ 0.3"]
    spec = _heatmap(at)
    trace = spec["data"][0]
    assert trace["type"] == "heatmap" and trace["x"] == LAYERS and trace["y"] == LAYERS
    assert trace["texttemplate"] == "%{z:.2f}" and trace["zmin"] == 0 and trace["zmax"] == 1
    z = _array(trace["z"])
    expected = compare.layer_similarity(Store(app_store), "digits", LAYERS, 2)
    assert np.allclose(z, expected.to_numpy()) and np.allclose(np.diag(z), 1.0)
    assert {m.label: m.value for m in at.metric}["CKA encoder_bottleneck · midblock"] == f"{z[0, 1]:.3f}"
    assert dict(at.query_params) == {"model": "digits", "step": "2", "a": "encoder_bottleneck", "b": "midblock"}


def test_two_layer_comparison_maps_agreement_and_table(app_env, app_store):
    from pipeline import compare
    from store import Store

    at = app_test(COMPARE)
    maps = _maps(at)
    assert not at.exception and len(maps) == 2
    calls = {(c["layer"], c["step"]) for c in app_env.calls}
    assert {("encoder_bottleneck", 2), ("midblock", 2)} <= calls  # the shared projection engine
    assert maps[0]["revision"] != maps[1]["revision"]
    a_color, b_color = (fx.static_json(m["color_url"]) for m in maps)
    assert a_color["kind"] == b_color["kind"] == "category"
    assert a_color["codes"] == [a_color["names"].index(n) for n in
                                [a_color["names"][c] for c in a_color["codes"]]]
    assert a_color["names"] == b_color["names"]  # coloured by the same labels

    # second colour mode: neighbour agreement, the same values on both maps, in each map's point order
    at.radio(key="cmp_color").set_value("agreement").run()
    maps = _maps(at)
    expected = compare.neighbour_agreement(Store(app_store), "digits", *LAYERS, 2, k=10).set_index("sample_id")
    for m in maps:
        color = fx.static_json(m["color_url"])
        ids = fx.static_json(m["points_url"])["ids"]
        assert color["kind"] == "numeric"
        assert np.allclose(color["values"], expected["overlap"].reindex(ids).to_numpy())
    assert at.query_params["color"] == "agreement"
    mean = {x.label: x.value for x in at.metric}["Mean neighbour agreement"]
    assert mean == f"{100 * expected['overlap'].mean():.1f}%"  # one decimal, as every share on the page

    table = at.dataframe[0].value
    assert len(table) == 12
    assert table["overlap"].is_monotonic_increasing
    assert table["overlap"].iloc[0] == pytest.approx(100 * expected["overlap"].min())  # percent
    assert table["thumbnail"].str.startswith("data:image/webp;base64,").all()
    ties = table[table["overlap"] == table["overlap"].iloc[0]]
    assert ties["label"].is_unique or ties["label"].nunique() == 10  # equal overlaps: one per label in turn
    by_label = at.dataframe[1].value
    samples = Store(app_store).samples(model="digits").set_index("sample_id")["label"]
    want = expected["overlap"].groupby(samples.reindex(expected.index)).mean()
    assert by_label["mean"].is_monotonic_increasing and len(by_label) == 10
    assert np.allclose(by_label.set_index("label")["mean"], 100 * want.reindex(by_label["label"]))
    first = table.iloc[0]
    link = first["on midblock"]
    assert link.startswith("explore?") and ("sel", first["sample_id"]) in parse_qsl(urlsplit(link).query)


def test_url_opens_the_same_view(app_env):
    at = _open_compare({"model": "digits", "step": "0", "a": "midblock", "b": "encoder_bottleneck",
                                  "k": "5", "color": "agreement", "runs": "digits-a"})
    maps = _maps(at)
    assert not at.exception and len(maps) == 2
    assert at.select_slider(key="cmp_step").value == 0
    assert at.selectbox(key="cmp_a").value == "midblock" and at.selectbox(key="cmp_b").value == "encoder_bottleneck"
    assert at.slider(key="cmp_k").value == 5 and at.radio(key="cmp_color").value == "agreement"
    assert at.multiselect(key="cmp_runs").value == ["digits-a"]
    assert all(fx.static_json(m["color_url"])["kind"] == "numeric" for m in maps)
    last = app_env.calls[-2:]
    assert {(c["layer"], c["step"], tuple(c["run_ids"])) for c in last} == \
        {("midblock", 0, ("digits-a",)), ("encoder_bottleneck", 0, ("digits-a",))}
    assert len(fx.static_json(maps[0]["points_url"])["ids"]) == 120  # run digits-a only
    assert dict(at.query_params) == {"model": "digits", "step": "0", "a": "midblock", "b": "encoder_bottleneck",
                                     "k": "5", "color": "agreement", "runs": "digits-a"}


def test_a_single_layer_or_model_with_one_layer_says_so(app_env):
    at = app_test(COMPARE)
    at.multiselect(key="cmp_layers").set_value(["midblock"]).run()
    assert not at.exception
    assert "Choose at least two layers" in fx.page_text(at, at.code) and not at.get("plotly_chart")
    assert at.query_params["layers"] == "midblock"
    at.selectbox(key="cmp_model").set_value("words").run()
    assert not at.exception
    assert "has only one layer (mid_block): nothing to compare" in fx.page_text(at, at.code)


def test_the_table_link_opens_the_sample_in_explore(app_env):
    at = app_test(COMPARE)
    _maps(at)
    row = at.dataframe[0].value.iloc[0]
    query = dict(parse_qsl(urlsplit(row["on encoder_bottleneck"]).query))
    assert query["model"] == "digits" and query["layer"] == "encoder_bottleneck" and query["step"] == "2"
    explore = app_test(query=query)  # a new session on the link (Explore is the default page)
    assert not explore.exception
    data = json.loads(explore.get("bidi_component")[0].proto.mixed.json
                      if explore.get("bidi_component")[0].proto.WhichOneof("data") != "json"
                      else explore.get("bidi_component")[0].proto.json)
    assert data["selected"] == row["sample_id"]
    assert explore.query_params["layer"] == "encoder_bottleneck" and explore.query_params["sel"] == row["sample_id"]


def test_a_clicked_sample_is_marked_on_both_maps_and_opens_in_explore(app_env):
    at = app_test(COMPARE)
    maps = _maps(at)
    sid = fx.static_json(maps[0]["points_url"])["ids"][7]
    at.session_state["cmp.selected"] = sid  # what a click on either map does (the maps' callback)
    at.run()
    maps = _maps(at)
    assert [m["highlight"] for m in maps] == [[sid], [sid]]
    assert sid in fx.page_text(at, at.code)
    at.button(key="cmp_open_midblock").click().run()
    assert not at.exception
    assert at.session_state["dmd.selected"] == sid
    assert at.session_state["dmd.view"].layer == "midblock" and at.session_state["dmd.view"].step == 2
    assert at.get("bidi_component")  # Explore's map
    at.button(key="clear_selection")  # Explore's selection panel is shown


def test_a_failed_projection_is_reported(app_env):
    app_env.fail = "projection exploded"
    at = app_test(COMPARE)
    _maps(at, timeout=3)
    assert not at.exception
    assert any("projection exploded" in e.value for e in at.error)
    assert at.get("plotly_chart")  # the heatmap does not need the maps


def test_tables_show_whole_sample_ids_and_every_share_with_one_decimal(app_env):
    """Issue 12, item 17: the sample column was truncated and the page mixed 14.8% / 15.33% / 17%."""
    at = app_test(COMPARE)
    _maps(at)
    assert not at.exception
    table, by_label = at.dataframe[0], at.dataframe[1]
    config = json.loads(table.proto.columns)
    ids = table.value["sample_id"]
    width = config["sample_id"]["width"]
    assert isinstance(width, int) and width >= 7.5 * ids.str.len().max() + 16  # the longest id fits whole
    order = list(table.proto.column_order)
    assert order.index("sample_id") < order.index("on encoder_bottleneck")  # before the links
    formats = {config["overlap"]["type_config"]["format"],
               json.loads(by_label.proto.columns)["mean"]["type_config"]["format"]}
    assert formats == {"%.1f%%"}
    assert table.value["overlap"].between(0, 100).all() and by_label.value["mean"].between(0, 100).all()
    mean = {x.label: x.value for x in at.metric}["Mean neighbour agreement"]
    assert mean.endswith("%") and len(mean.split(".")[1]) == 2  # "23.4%": one decimal


def test_the_cka_heatmap_links_to_the_depth_animation_of_the_same_view(app_env, app_store):
    at = app_test(COMPARE)
    links = [e for e in at.get("page_link") if "move through these layers" in e.proto.label]
    assert len(links) == 1, [e.proto.label for e in at.get("page_link")]
    link = links[0].proto
    assert "motion" in link.page, link.page
    assert "model=digits" in link.query_string and "mode=layers" in link.query_string and "step=2" in link.query_string
