"""AppTest: the Motion page (aligned maps animated across steps or layers, small multiples, consecutive-layer
CKA), on the synthetic app store with the real aligned-map engine (pipeline.aligned)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import app_fixtures as fx

app_store = fx.app_store
app_env = fx.app_env

MOTION = "app_pages/motion.py"


def _open(query: dict):
    at = fx.open_page(MOTION, query, timeout=180)
    assert not at.exception, at.exception
    return at


def _figures(at) -> dict:
    return {i: json.loads(c.proto.spec) for i, c in enumerate(at.get("plotly_chart"))}


def _xy(trace) -> np.ndarray:
    from tests.test_app_compare import _array

    return np.column_stack([_array(trace["x"]), _array(trace["y"])])


@pytest.fixture(scope="module", autouse=True)
def _fresh():
    from pipeline import aligned

    aligned.clear_cache()
    yield


def test_steps_animate_with_points_keeping_identity(app_env):
    at = _open({"model": "digits", "mode": "steps", "layer": "midblock", "sel": "digits-a-00000003", "k": "5"})
    figs = _figures(at)
    anim = figs[0]
    frames = anim["frames"]
    assert [f["name"] for f in frames] == ["0", "1", "2"]
    ids = [f["data"][0]["customdata"] for f in frames]
    assert all(x == ids[0] for x in ids) and len(ids[0]) == 180  # every sample in every frame, same order
    xy = [_xy(f["data"][0]) for f in frames]
    assert not np.allclose(xy[0], xy[2])  # the points move
    # the selected sample (from the URL, Explore's parameter) and its neighbours are marked in every frame
    for f in frames:
        assert f["data"][2]["customdata"] == ["digits-a-00000003"]
        assert len(f["data"][1]["customdata"]) == 5
    sel_xy = [_xy(f["data"][2])[0] for f in frames]
    row = ids[0].index("digits-a-00000003")
    for f, p in zip(frames, sel_xy, strict=True):
        np.testing.assert_allclose(_xy(f["data"][0])[row], p)
    menu = anim["layout"]["updatemenus"][0]["buttons"]
    assert menu[0]["method"] == "animate" and menu[0]["args"][1]["transition"]["duration"] > 0
    assert [s["label"] for s in anim["layout"]["sliders"][0]["steps"]] == ["0", "1", "2"]
    # small multiples: one panel per step, in the map component (linked hover lives in the browser)
    assert len(figs) == 1
    multiples = fx.map_data(at)
    assert multiples["kind"] == "multiples" and multiples["frame_title"] == "step"
    assert multiples["selected"] == "digits-a-00000003" and len(multiples["knn"]) == 5
    assert multiples["knn"] == list(frames[0]["data"][1]["customdata"])
    assert at.query_params["sel"] == ["digits-a-00000003"] or at.query_params["sel"] == "digits-a-00000003"
    # speed changes the frame duration of Play, nothing else
    slow = at.select_slider(key="mot_speed").set_value("slow").run()
    assert _figures(slow)[0]["layout"]["updatemenus"][0]["buttons"][0]["args"][1]["frame"]["duration"] == 1600


def test_small_multiples_files_hold_every_frame_of_the_animation(app_env, app_store):
    """The panels' files: the animation's positions per frame (same samples, same order), its colours and
    Explore's hover card; a lasso selection in the app's state is drawn over every panel."""
    from app import state

    at = _open({"model": "digits", "mode": "steps", "layer": "midblock"})
    anim = _figures(at)[0]
    data = fx.map_data(at)
    points = fx.static_json(data["points_url"])
    assert points["frames"] == ["0", "1", "2"]
    assert points["ids"] == list(anim["frames"][0]["data"][0]["customdata"])
    for f, frame in enumerate(anim["frames"]):
        xy = _xy(frame["data"][0])
        np.testing.assert_allclose(np.column_stack([points["x"][f], points["y"][f]]), xy, atol=1e-3)
    # colours: each sample the colour the animation gives it; the legend counts add up
    colours = fx.static_json(data["color_url"])
    drawn = [colours["colors"][c] for c in colours["codes"]]
    assert drawn == list(anim["frames"][0]["data"][0]["marker"]["color"])
    assert sum(colours["counts"]) == len(points["ids"]) and colours["kind"] == "category"
    # hover text: Explore's card (title = the label, seed, run...), the layer once for every panel
    meta = fx.static_json(data["meta_url"])
    title = meta["title"]
    row = points["ids"].index("digits-a-00000003")
    from store import Store

    labels = Store(app_store).samples(model="digits").set_index("sample_id")["label"]
    assert title["values"][title["codes"][row]] == labels["digits-a-00000003"]
    assert {f["name"] for f in meta["fields"]} >= {"seed", "run"} and meta["common"] == [["layer", "midblock"]]
    assert data["highlight"] is None
    # a lasso/box selection (the app's, shared with Explore): highlighted in the panels, counted on the page
    chosen = points["ids"][:7]
    at.session_state[state.LASSO] = [*chosen, "not-in-this-map"]
    at.run()
    assert fx.map_data(at)["highlight"] == chosen
    assert "7 samples" in fx.page_text(at)


def test_depth_multiples_name_their_layers(app_env):
    at = _open({"model": "digits", "mode": "layers", "step": "1"})
    data = fx.map_data(at)
    assert data["frame_title"] == "layer" and data["frame_prefix"] == ""
    assert fx.static_json(data["points_url"])["frames"] == ["encoder_bottleneck", "midblock"]
    assert fx.static_json(data["meta_url"])["common"] == [["step", "1"]]


def test_second_visit_is_from_the_cache(app_env):
    import streamlit as st

    from pipeline import aligned

    _open({"model": "digits", "mode": "steps", "layer": "encoder_bottleneck"})
    st.cache_resource.clear()  # a fresh server: no finished jobs, no maps in memory; the store keeps them
    aligned.clear_cache()
    at = _open({"model": "digits", "mode": "steps", "layer": "encoder_bottleneck"})
    assert "from the cache" in fx.page_text(at)


def test_depth_mode_animates_layers_beside_consecutive_cka(app_env, app_store):
    from pipeline import compare
    from store import Store

    at = _open({"model": "digits", "mode": "layers", "step": "1"})
    figs = _figures(at)
    assert [f["name"] for f in figs[0]["frames"]] == ["encoder_bottleneck", "midblock"]
    cka = figs[1]["data"][0]
    expected = compare.layer_similarity(Store(app_store), "digits", ["encoder_bottleneck", "midblock"], 1)
    from tests.test_app_compare import _array

    assert _array(cka["x"])[0] == pytest.approx(expected.loc["encoder_bottleneck", "midblock"])
    assert "2 layers at step 1" in fx.page_text(at)


def test_a_one_step_model_says_why_nothing_moves(app_env):
    at = _open({"model": "words", "mode": "steps"})
    assert "one step only" in fx.page_text(at)
    assert not at.get("plotly_chart")


def test_a_long_alignment_shows_progress_and_can_be_cancelled(app_env, monkeypatch):
    import streamlit as st

    from app import data
    from pipeline import aligned

    st.cache_resource.clear()
    aligned.clear_cache()
    monkeypatch.setattr(data, "JOB_WAIT_S", 0.0)
    real = aligned.fit_aligned

    def slow(*args, cancel=None, progress=None, **kw):  # a fit that reports and waits to be cancelled
        for i in range(600):
            if progress:
                progress(i / 600, f"epoch {i}/600")
            if cancel is not None and cancel.wait(0.05):
                raise aligned.Cancelled("cancelled")
        return real(*args, cancel=cancel, progress=progress, **kw)

    monkeypatch.setattr(aligned, "fit_aligned", slow)
    at = _open({"model": "digits", "mode": "layers", "step": "0", "layers": "encoder_bottleneck~midblock"})
    assert any("Aligning maps" in str(p.proto.text) for p in at.get("progress"))
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("mot_cancel_"))).click().run()
    assert "Cancelled" in fx.page_text(at) and not at.get("plotly_chart")
    # the cancelled job is not started again by the next rerun, only when asked
    at.run()
    assert "Cancelled" in fx.page_text(at)
    monkeypatch.setattr(aligned, "fit_aligned", real)
    monkeypatch.setattr(data, "JOB_WAIT_S", 60)
    at.button(key="mot_compute").click().run()
    assert at.get("plotly_chart") and "Cancelled" not in fx.page_text(at)
