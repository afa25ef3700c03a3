"""AppTest: the Explore page's control paths, with a fast stand-in projection engine.

A chart cannot be clicked in AppTest: clicks are replayed through the same session-state functions the map's
callbacks call (``state.handle_click``), and the selection is seeded through the URL or session state.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

app_store = fx.app_store  # pytest fixtures
app_env = fx.app_env

EXPLORE = "app_pages/explore.py"


def _neighbour_rows(at) -> dict[str, list[str]]:
    """Neighbour rows shown in the panel, by kind, from the keys of their buttons."""
    out = {"kNN": [], "manual": []}
    for b in at.button:
        key = b.key or ""
        if key.startswith("rm_"):
            _, kind, sid = key.split("_", 2)
            out[kind].append(sid)
    return out


def test_default_view_draws_the_map_and_writes_the_url(app_env):
    at = app_test()
    assert not at.exception
    data = fx.map_data(at)
    assert data["points_url"].endswith(".points.json") and "/app/static/views/" in data["points_url"]
    assert data["thumb_base"].startswith("/app/static/thumbs/")
    assert data["plotly_url"].startswith("/app/static/vendor/plotly-")
    assert data["selected"] is None and data["knn"] == [] and data["highlight"] is None
    assert at.query_params["model"] == "digits" and at.query_params["layer"] == "midblock"
    assert at.query_params["step"] == "2"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Trustworthiness": "0.930", "kNN overlap": "41%"}
    call = app_env.calls[-1]
    assert (call["model"], call["layer"], call["step"]) == ("digits", "midblock", 2)
    assert call["params"] == {"feature": "auto", "method": "umap", "n_neighbors": 15, "min_dist": 0.1,
                              "metric": "euclidean"}


def test_view_files_are_written_under_static(app_env, app_store):
    import json

    from app import static_files

    at = app_test()
    data = fx.map_data(at)
    rel = data["points_url"].split("/app/static/", 1)[1]
    points = json.loads((static_files.STATIC_DIR / rel).read_text())
    assert len(points["ids"]) == 180 == len(points["x"]) == len(points["y"])
    meta = json.loads((static_files.STATIC_DIR / data["meta_url"].split("/app/static/", 1)[1]).read_text())
    assert meta["title"]["values"][meta["title"]["codes"][0]].endswith(": zero")
    assert ["step", "2"] in meta["common"] and ["layer", "midblock"] in meta["common"]
    color = json.loads((static_files.STATIC_DIR / data["color_url"].split("/app/static/", 1)[1]).read_text())
    assert color["kind"] == "category" and color["names"][:2] == ["0: zero", "1: one"]
    assert sum(color["counts"]) == 180
    # thumbnails are exported in the background for the whole view
    thumbs = static_files.STATIC_DIR / data["thumb_base"].split("/app/static/", 1)[1]
    deadline = time.time() + 20
    while len(list(thumbs.glob("*.webp"))) < 180 and time.time() < deadline:
        time.sleep(0.05)
    assert len(list(thumbs.glob("*.webp"))) == 180


def test_shared_url_restores_view_and_selection(app_env):
    sid = "words-a-00000004"
    at = app_test(query={"model": "words", "layer": "mid_block", "step": "0", "nn": "30", "md": "0.25",
                         "metric": "cosine", "k": "3", "sel": sid})
    assert not at.exception
    assert at.selectbox(key="w_model").value == "words"
    assert at.slider(key="w_nn").value == 30 and at.slider(key="w_md").value == 0.25
    assert at.selectbox(key="w_metric").value == "cosine" and at.slider(key="w_k").value == 3
    call = app_env.calls[-1]
    assert call["params"] == {"feature": "auto", "method": "umap", "n_neighbors": 30, "min_dist": 0.25,
                              "metric": "cosine"}
    data = fx.map_data(at)
    assert data["selected"] == sid and len(data["knn"]) == 3
    assert "#### a cat sleeping on a windowsill" in fx.page_text(at)  # the selected sample's prompt heads the panel
    assert len(_neighbour_rows(at)["kNN"]) == 3
    assert at.query_params["sel"] == sid and at.query_params["nn"] == "30"


def test_bad_url_values_fall_back_to_defaults(app_env):
    at = app_test(query={"model": "nope", "layer": "nope", "nn": "9999", "md": "abc", "k": "-3", "feat": "x"})
    assert not at.exception
    assert at.selectbox(key="w_model").value == "digits"
    assert at.slider(key="w_nn").value == 100 and at.slider(key="w_md").value == 0.1
    assert at.slider(key="w_k").value == 1
    assert at.radio(key="w_feature").value == "auto"


def test_click_selects_then_toggles_neighbours(app_env):
    """The map's click callback: first click selects; then kNN → removed, other → manual, manual → removed."""
    from app import state

    at = app_test(query={"sel": "digits-a-00000000"})
    rows = _neighbour_rows(at)
    assert len(rows["kNN"]) == 5 and rows["manual"] == []
    first_knn = rows["kNN"][0]
    other = "digits-a-00000001"  # class one: not a neighbour of a zero
    assert other not in rows["kNN"]

    _click(at, other)
    rows = _neighbour_rows(at)
    assert rows["manual"] == [other] and len(rows["kNN"]) == 5
    assert fx.map_data(at)["manual"] == [other]
    assert at.query_params["man"] == other

    _click(at, first_knn)  # a kNN neighbour: removed from the kNN list
    rows = _neighbour_rows(at)
    assert first_knn not in rows["kNN"] and len(rows["kNN"]) == 4
    assert first_knn not in fx.map_data(at)["knn"]

    _click(at, other)  # a manual neighbour: removed
    assert _neighbour_rows(at)["manual"] == []

    at.button(key="find_neighbours").click().run()  # brings the removed kNN back
    assert len(_neighbour_rows(at)["kNN"]) == 5
    assert state.SELECTED in at.session_state and at.session_state[state.SELECTED] == "digits-a-00000000"


def _click(at, sample_id):
    """Replay a map click with the function the map's click callback runs."""
    from app import state
    from app.explore import KNN_CURRENT

    current = state.Selection(at.session_state[state.SELECTED], list(at.session_state[state.MANUAL]),
                              list(at.session_state[state.KNN_REMOVED]))
    sel, _ = state.apply_click(current, sample_id, list(at.session_state[KNN_CURRENT]))
    at.session_state[state.SELECTED] = sel.selected
    at.session_state[state.MANUAL] = sel.manual
    at.session_state[state.KNN_REMOVED] = sel.knn_removed
    at.run()
    assert not at.exception


def test_panel_buttons_select_remove_and_clear(app_env):
    at = app_test(query={"sel": "digits-a-00000000", "k": "4"})
    rows = _neighbour_rows(at)["kNN"]
    assert len(rows) == 4
    at.button(key=f"rm_kNN_{rows[1]}").click().run()
    assert rows[1] not in _neighbour_rows(at)["kNN"]
    at.button(key=f"go_kNN_{rows[0]}").click().run()  # make a neighbour the selected sample
    assert fx.map_data(at)["selected"] == rows[0]
    assert at.query_params["sel"] == rows[0]
    at.button(key="clear_selection").click().run()
    assert not at.exception
    assert fx.map_data(at)["selected"] is None
    assert "sel" not in at.query_params
    assert "Click a point on the map" in fx.page_text(at)


def _nearest(ids: list[str], points: np.ndarray, sample_id: str, k: int) -> list[str]:
    """The k nearest of ``sample_id`` among ``ids`` (rows of ``points``), by Euclidean distance."""
    i = ids.index(sample_id)
    d = np.linalg.norm(points - points[i], axis=1)
    d[i] = np.inf
    return [ids[j] for j in np.argsort(d, kind="stable")[:k]]


def test_k_and_space_change_the_neighbour_list(app_env, app_store):
    import json

    from app import static_files
    from store import Store

    sid = "digits-a-00000010"
    at = app_test(query={"sel": sid})
    assert at.radio(key="w_space").value == "activation"  # the default: the faithful neighbours
    assert "space" not in at.query_params
    assert "in activation space (euclidean distance" in fx.page_text(at)  # the panel says which space
    default_nb = _neighbour_rows(at)["kNN"]
    at.slider(key="w_k").set_value(2).run()
    act_nb = _neighbour_rows(at)["kNN"]
    # k: the first two of the longer list; activation space: the nearest stored vectors of the layer and step
    assert len(default_nb) > 2 and act_nb == default_nb[:2]
    acts = Store(app_store).activations("digits", "midblock", 2)
    assert act_nb == _nearest(np.asarray(acts.sample_ids).astype(str).tolist(), acts.matrix.astype(np.float64),
                              sid, 2)
    at.radio(key="w_space").set_value("map").run()  # map space: still an option
    assert not at.exception
    map_nb = _neighbour_rows(at)["kNN"]
    # map space: the nearest points of the map as drawn, another list than the activation space's
    points = json.loads((static_files.STATIC_DIR / fx.map_data(at)["points_url"].split("/app/static/", 1)[1])
                        .read_text())
    assert map_nb == _nearest(points["ids"], np.column_stack([points["x"], points["y"]]), sid, 2)
    assert act_nb != map_nb
    assert "in map space (2-D" in fx.page_text(at) and "41% of map neighbours are also activation neighbours" in fx.page_text(at)
    assert at.query_params["space"] == "map"


def test_the_method_switch_shows_each_methods_own_controls(app_env):
    at = app_test()
    assert at.slider(key="w_nn") and at.slider(key="w_md")
    at.radio(key="w_method").set_value("tsne").run()  # a new map at once, with t-SNE's own parameter
    assert not at.exception
    assert [s.key for s in at.slider if s.key in ("w_nn", "w_md", "w_p")] == ["w_p"]
    assert app_env.calls[-1]["params"] == {"feature": "auto", "method": "tsne", "perplexity": 30.0,
                                           "metric": "euclidean"}
    assert at.query_params["method"] == "tsne" and "t-SNE" in " ".join(c.value for c in at.caption)
    at.slider(key="w_p").set_value(12.0)
    at.button[[b.label for b in at.button].index("Recompute")].click().run()
    assert app_env.calls[-1]["params"]["perplexity"] == 12.0 and at.query_params["perp"] == "12.0"
    at.radio(key="w_method").set_value("pca").run()  # PCA has no parameters of its own
    assert not [s for s in at.slider if s.key in ("w_nn", "w_md", "w_p")]
    assert app_env.calls[-1]["params"] == {"feature": "auto", "method": "pca", "metric": "euclidean"}
    at.radio(key="w_method").set_value("umap").run()  # back: UMAP's parameters as they were
    assert at.slider(key="w_nn").value == 15 and "method" not in at.query_params  # the default is left out
    assert "UMAP · n_neighbors 15 · min_dist 0.1" in " ".join(c.value for c in at.caption)


def test_recompute_applies_parameters_and_refits(app_env):
    at = app_test()
    n = len(app_env.calls)
    at.slider(key="w_nn").set_value(40)
    at.slider(key="w_md").set_value(0.5)
    at.button[[b.label for b in at.button].index("Recompute")].click().run()
    assert not at.exception
    assert app_env.calls[-1]["params"]["n_neighbors"] == 40 and app_env.calls[-1]["params"]["min_dist"] == 0.5
    assert app_env.calls[-1]["force"] is False
    assert at.query_params["nn"] == "40"
    assert len(app_env.calls) == n + 1
    at.button[[b.label for b in at.button].index("Recompute")].click().run()  # unchanged: a refit
    assert app_env.calls[-1]["force"] is True
    at.run()  # a plain rerun neither refits nor recomputes
    assert len(app_env.calls) == n + 2


def test_switching_model_layer_and_step(app_env):
    at = app_test()
    at.select_slider(key="w_step").set_value(0).run()
    assert app_env.calls[-1]["step"] == 0
    at.selectbox(key="w_layer").set_value("encoder_bottleneck").run()
    assert app_env.calls[-1]["layer"] == "encoder_bottleneck"
    at.selectbox(key="w_model").set_value("words").run()
    assert not at.exception
    assert app_env.calls[-1]["model"] == "words" and app_env.calls[-1]["layer"] == "mid_block"
    assert at.query_params["model"] == "words"
    at.multiselect(key="w_runs").set_value(["words-a"]).run()
    assert app_env.calls[-1]["run_ids"] == ["words-a"]


@pytest.mark.parametrize("color", ["label", "category", "cluster", "seed", "index"])
def test_colour_by_options(app_env, color):
    import json

    from app import static_files
    from app.views import COLORING_TITLES

    at = app_test(query={"model": "words", "layer": "mid_block"})
    assert COLORING_TITLES[color] in at.selectbox(key="w_color").options
    at.selectbox(key="w_color").set_value(color).run()
    assert not at.exception
    payload = json.loads((static_files.STATIC_DIR / fx.map_data(at)["color_url"].split("/app/static/", 1)[1])
                         .read_text())
    if color in ("seed", "index"):
        assert payload["kind"] == "numeric" and len(payload["values"]) == 48
    else:
        assert payload["kind"] == "category" and sum(payload["counts"]) == 48
    if color == "cluster":
        at.slider(key="w_nclusters").set_value(3).run()
        payload = json.loads((static_files.STATIC_DIR / fx.map_data(at)["color_url"].split("/app/static/", 1)[1])
                             .read_text())
        assert len(payload["names"]) == 3


def test_class_filter_highlights_or_projects(app_env):
    at = app_test()
    at.multiselect(key="w_classes").set_value(["3: three", "7: seven"]).run()
    assert not at.exception
    highlight = fx.map_data(at)["highlight"]
    assert len(highlight) == 36 and all(s.startswith("digits-") for s in highlight)
    assert "36 highlighted" in fx.page_text(at)
    assert app_env.calls[-1]["sample_ids"] is None
    at.radio(key="w_fmode").set_value("project").run()
    assert not at.exception
    assert sorted(app_env.calls[-1]["sample_ids"]) == sorted(highlight)
    assert fx.map_data(at)["highlight"] is None


def test_keyword_filter_and_its_errors(app_env):
    at = app_test(query={"model": "words", "layer": "mid_block"})
    at.text_input(key="w_keyword").set_value("cat OR owl").run()
    assert not at.exception
    # substrings, case-insensitive: "cat", "owl" and the "owl" of "a bowl of ramen": 3 of 8 prompts
    assert len(fx.map_data(at)["highlight"]) == 18
    at.text_input(key="w_keyword").set_value('"unclosed').run()
    assert not at.exception
    assert any("Keywords" in e.value for e in at.sidebar.error)
    assert fx.map_data(at)["highlight"] is None  # the map stays, unfiltered


def test_highlight_from_a_search_link(app_env):
    from app import state

    ids = [f"digits-a-{i:08d}" for i in (1, 2, 3)]
    at = app_test(query={"hl": "~".join(ids)})
    assert fx.map_data(at)["highlight"] == ids
    assert "Highlighting 3 samples" in fx.page_text(at)
    at.button(key="clear_hl").click().run()
    assert fx.map_data(at)["highlight"] is None and "hl" not in at.query_params
    token = state.register_highlight([f"digits-b-{i:08d}" for i in range(30)])
    at = app_test(query={"hl": token})
    assert len(fx.map_data(at)["highlight"]) == 30
    at = app_test(query={"hl": "s:forgotten"})
    assert fx.map_data(at)["highlight"] == []
    assert "no longer known" in fx.page_text(at)


def test_projection_progress_then_map(app_env, monkeypatch):
    from app import data

    slow = fx.FakeProjector(delay_s=1.5)
    data.set_projector(slow)
    monkeypatch.setattr(data, "JOB_WAIT_S", 0.05)
    at = app_test()
    assert not at.exception
    assert len(at.get("progress")) == 1 and "Projecting" in at.get("progress")[0].proto.text
    assert not at.get("bidi_component")
    time.sleep(2.0)
    at.run()
    assert at.get("bidi_component") and not at.get("progress")


def test_a_new_projection_keeps_the_previous_map_dimmed_supersedes_the_older_and_can_be_cancelled(app_env,
                                                                                                   monkeypatch):
    from app import data

    at = app_test()  # the first map (instant)
    assert fx.map_data(at)["busy"] is False
    first_points = fx.map_data(at)["points_url"]
    slow = fx.FakeProjector(delay_s=30)
    data.set_projector(slow)
    monkeypatch.setattr(data, "JOB_WAIT_S", 0.05)
    at.slider(key="w_nn").set_value(40)
    at.button[[b.label for b in at.button].index("Recompute")].click().run()
    assert not at.exception
    # the previous map stays, dimmed, under a progress bar that names the stage and counts the seconds
    assert fx.map_data(at)["busy"] is True and fx.map_data(at)["points_url"] == first_points
    text = at.get("progress")[0].proto.text
    assert "Projecting… reading activations" in text and text.endswith(" s")
    first_job = at.session_state["dmd.waiting_job"]

    at.slider(key="w_nn").set_value(41)  # a newer request supersedes the older one: its fit stops
    at.button[[b.label for b in at.button].index("Recompute")].click().run()
    deadline = time.time() + 5
    while not slow.cancelled and time.time() < deadline:
        time.sleep(0.05)
    assert [c["params"]["n_neighbors"] for c in slow.cancelled] == [40]
    assert data.jobs().find(first_job).cancelled and at.session_state["dmd.waiting_job"] != first_job

    second_job = at.session_state["dmd.waiting_job"]
    at.button(key="cancel_projection").click().run()  # Cancel: the fit stops, the previous map stays
    deadline = time.time() + 5
    while len(slow.cancelled) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert [c["params"]["n_neighbors"] for c in slow.cancelled] == [40, 41]
    assert data.jobs().find(second_job).cancelled
    at.run()  # a later rerun does not restart it
    assert "Projection cancelled" in " ".join(i.value for i in at.info) and not at.get("progress")
    assert fx.map_data(at)["points_url"] == first_points and len(slow.calls) == 2
    slow.delay_s = 0
    at.button[[b.label for b in at.button].index("Compute it after all")].click().run()
    time.sleep(0.3)
    at.run()
    assert len(slow.calls) == 3 and slow.calls[-1]["params"]["n_neighbors"] == 41
    assert fx.map_data(at)["busy"] is False and fx.map_data(at)["points_url"] != first_points


def test_projection_error_is_shown_not_raised(app_env):
    from app import data

    data.set_projector(fx.FakeProjector(fail="n_neighbors (100) must be smaller than the number of samples (48)"))
    at = app_test(query={"model": "words", "layer": "mid_block"})
    assert not at.exception
    assert any("must be smaller than the number of samples" in e.value for e in at.error)


def test_lasso_selection_drives_the_export(app_env):
    from app import state

    at = app_test()
    ids = [f"digits-a-{i:08d}" for i in range(7)]
    at.session_state[state.LASSO] = ids
    at.run()
    assert "lasso/box selection (7 samples)" in fx.page_text(at)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["CSV", "Parquet", "Images (ZIP)", "Map (HTML)"]


def test_png_button_asks_the_browser(app_env):
    at = app_test()
    assert fx.map_data(at)["png_nonce"] == 0
    at.button(key="dl_png").click().run()
    assert fx.map_data(at)["png_nonce"] == 1


def test_store_switch_resets_the_view(app_env, app_store, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(app_store, other)
    at = app_test(query={"model": "words", "layer": "mid_block", "sel": "words-a-00000001"})
    at.text_input(key="dmd_store_input").set_value(str(other)).run()
    assert not at.exception
    assert fx.map_data(at)["selected"] is None
    assert at.query_params["store"] == str(other)


def test_a_refit_applies_to_its_own_projection_only(app_env):
    at = app_test()
    recompute = [b.label for b in at.button].index("Recompute")
    at.button[recompute].click().run()  # unchanged parameters: refit
    assert app_env.calls[-1]["force"] is True
    at.slider(key="w_nn").set_value(33)
    at.button[[b.label for b in at.button].index("Recompute")].click().run()  # new parameters: no refit
    assert app_env.calls[-1]["force"] is False and app_env.calls[-1]["params"]["n_neighbors"] == 33
    at.select_slider(key="w_step").set_value(1).run()
    assert app_env.calls[-1]["force"] is False and app_env.calls[-1]["step"] == 1


@pytest.mark.slow
def test_the_real_projection_engine_end_to_end(app_env, monkeypatch):
    """The page with pipeline.project and pipeline.neighbors (UMAP on 180 points; numba's cache makes it a
    few seconds after the first run on a machine)."""
    from app import data

    data.set_projector(None)
    monkeypatch.setattr(data, "JOB_WAIT_S", 120)  # wait for the fit inside the run
    at = app_test(query={"sel": "digits-a-00000003", "space": "activation"})
    assert not at.exception and not at.error
    info = fx.map_data(at)
    assert info["selected"] == "digits-a-00000003" and len(info["knn"]) == 5
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Trustworthiness"]) > 0.8
    assert "in activation space" in fx.page_text(at)
    # the neighbours of a "3" in activation space are mostly "3"s (the synthetic clusters are well apart)
    rows = _neighbour_rows(at)["kNN"]
    assert sum(int(s.rsplit("-", 1)[1]) % 10 == 3 for s in rows) >= 4


def test_a_corrupt_part_is_reported_on_the_map_page(app_env, app_store, tmp_path):
    import shutil

    store = tmp_path / "corrupt"
    shutil.copytree(app_store, store)
    bad = store / "activations/model=digits/layer=midblock/run_id=digits-b/part-00000000-00000059.parquet"
    bad.write_bytes(b"not parquet at all")
    at = app_test(query={"store": str(store)})
    assert not at.exception
    assert any("corrupt part" in w.value for w in at.warning)
    assert len(app_env.calls) and fx.map_data(at)["points_url"]  # the map is still drawn, without that part


# -- all steps in one map --------------------------------------------------------------------------------------

class StepsProjector(fx.FakeProjector):
    """The stand-in engine, which maps every step as it maps one: the pipeline's own stacked (sample, step)
    features (``pipeline.features.load_features(step="all")``), PCA to 2-D."""


@pytest.fixture
def steps_env(app_env):
    from app import data

    engine = StepsProjector()
    data.set_projector(engine)
    return engine


def test_all_steps_colours_by_step_and_draws_the_trajectory(steps_env):
    at = app_test()
    at.select_slider(key="w_step").set_value("all").run()
    assert not at.exception
    assert steps_env.calls[-1]["step"] == "all" and at.query_params["step"] == "all"
    assert at.selectbox(key="w_color").value == "step"  # the default colouring of an all-steps map
    data = fx.map_data(at)
    points = fx.static_json(data["points_url"])
    assert len(points["ids"]) == 3 * 180 and points["ids"][0] == "digits-a-00000000@0"
    color = fx.static_json(data["color_url"])
    assert color["kind"] == "category" and color["names"] == ["step 0 (σ 14.6)", "step 1 (σ 2.5)", "step 2 (σ 0.3)"]
    assert color["counts"] == [180, 180, 180]
    meta = fx.static_json(data["meta_url"])
    fields = {f["name"]: f for f in meta["fields"]}
    assert fields["step"]["values"][fields["step"]["codes"][180]] == "1"  # row 180: the first point of step 1
    assert fields["sigma"]["values"][fields["sigma"]["codes"][180]] == "2.5"
    assert "All steps" not in fx.page_text(at) and "540 points (180 samples × up to 3 steps)" in fx.page_text(at)

    _click(at, "digits-a-00000004@1")  # a click selects a (sample, step) point
    data = fx.map_data(at)
    assert data["selected"] == "digits-a-00000004@1" and at.query_params["sel"] == "digits-a-00000004@1"
    assert data["trajectory"] == {"ids": [f"digits-a-00000004@{k}" for k in range(3)], "labels": ["0", "1", "2"]}
    knn = _neighbour_rows(at)["kNN"]
    assert len(knn) == 5 and all("@" in s for s in knn) and data["knn"] == knn
    assert "4: four · step " in fx.page_text(at)  # neighbour rows name their step

    at.select_slider(key="w_step").set_value(1).run()  # back to one step: the same sample stays selected
    assert not at.exception
    data = fx.map_data(at)
    assert data["selected"] == "digits-a-00000004" and data["trajectory"] is None
    assert at.selectbox(key="w_color").value == "label" and "step" not in at.selectbox(key="w_color").options


def test_all_steps_share_link_restores_selection_and_expands_search_highlights(steps_env):
    sel = "digits-b-00000003@2"
    at = app_test(query={"step": "all", "color": "step", "sel": sel, "hl": "digits-a-00000005~digits-b-00000001"})
    assert not at.exception
    assert at.select_slider(key="w_step").value == "all" and at.selectbox(key="w_color").value == "step"
    data = fx.map_data(at)
    assert data["selected"] == sel and len(data["trajectory"]["ids"]) == 3
    # a search names samples: each is highlighted at every step
    assert sorted(data["highlight"]) == sorted(f"{s}@{k}" for s in ("digits-a-00000005", "digits-b-00000001")
                                               for k in range(3))
    assert "Highlighting 2 samples from a search link" in fx.page_text(at)
    assert at.query_params["step"] == "all" and at.query_params["sel"] == sel
    # a numeric metadata colouring still works on points
    at.selectbox(key="w_color").set_value("seed").run()
    color = fx.static_json(fx.map_data(at)["color_url"])
    assert color["kind"] == "numeric" and len(color["values"]) == 540


def test_explore_exports_the_neighbourhood_with_roles_and_names_the_png(app_env, monkeypatch):
    """Issue 12, item 14: what Explore hands the exports (the selected sample, its kNN and manual neighbours
    with their distances and space) and the PNG's title."""
    from app import exports

    made = []
    real = exports.neighbourhood_set
    monkeypatch.setattr(exports, "neighbourhood_set", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    at = app_test(query={"model": "digits", "layer": "midblock", "step": "2", "sel": "digits-a-00000003",
                         "k": "4"})
    assert not at.exception
    chosen = made[-1]
    assert chosen.ids[0] == "digits-a-00000003" and chosen.roles == ("selected", "kNN", "kNN", "kNN", "kNN")
    assert chosen.ranks == (0, 1, 2, 3, 4) and list(chosen.distances) == sorted(chosen.distances)
    view = at.session_state["dmd.view"]
    assert chosen.space == view.space
    assert "ranked by distance in" in fx.page_text(at)
    title = fx.map_data(at)["title"]
    assert title.startswith("digits · midblock · step 2") and "samples" in title


def test_the_selection_links_to_its_feature_map_and_its_motion(app_env):
    """Inside opens on the selected sample at the map's layer and step; Motion (multi-step runs) on its layer."""
    from urllib.parse import parse_qs

    at = app_test(query={"sel": "digits-a-00000000"})
    links = {e.proto.label: e.proto for e in at.get("page_link")}
    inside = parse_qs(links["Inside its feature map"].query_string)
    assert "inside" in links["Inside its feature map"].page
    assert inside["sel"] == ["digits-a-00000000"] and inside["layer"] == [at.session_state["w_layer"]]
    assert inside["step"] == [str(at.session_state["w_step"])]
    motion = parse_qs(links["Its motion over the steps"].query_string)
    assert motion["mode"] == ["steps"] and motion["sel"] == ["digits-a-00000000"] and motion["model"] == ["digits"]
