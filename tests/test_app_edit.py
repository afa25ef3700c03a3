"""AppTest: the Explore panel's what if (issue 13) on a small demo store, with the real `pipeline.edit.Editor`
(the demo model on CPU) and the stand-in projection engine (`tests.app_fixtures.FakeProjector`, which maps
every sample of the store, edit results included).

The controls start real edits; the tests check what they wrote to the store (provenance), what the panel
shows (results beside their parents, the equivalent command line, why an edit cannot be done) and what the map
is given (the results marked, linked to their parents in order: frames, alphas, a patch's set).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from tests import app_fixtures as fx
from tests.app_fixtures import app_test

app_store = fx.app_store  # the synthetic store: a model this code cannot generate
app_env = fx.app_env

PER_CLASS = 6
RUN = "demo-multistep"
LAYERS = ["encoder_bottleneck", "midblock"]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A demo store: the multi-step run, 6 samples of each digit, two layers."""
    import torch

    from pipeline.adapters.edm import load_demo
    from pipeline.generate import generate

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("edit-app") / "store"
    adapter = load_demo(torch.device("cpu"), samples_per_class=PER_CLASS, x0_previews=True)
    generate(adapter, root, 10 * PER_CLASS, LAYERS, run_id=RUN, batch_size=60, progress=False)
    return root


@pytest.fixture
def demo_env(demo_store, monkeypatch, tmp_path):
    from app import data

    monkeypatch.setattr(data, "EDIT_WAIT_S", 120)  # an edit ends within the click's run (no polling in AppTest)
    with fx.app_pointed_at(demo_store, monkeypatch, tmp_path) as fake:
        yield fake


def sid(k: int, j: int = 0) -> str:
    """The j-th sample of digit k."""
    return f"{RUN}-{k * PER_CLASS + j:08d}"


def _codes(at) -> list[str]:
    return [str(c.value) for c in at.code]


def _samples(store, ids) -> pd.DataFrame:
    from store import Store

    return Store(store).samples(sample_ids=list(ids)).set_index("sample_id").loc[list(ids)]


def _open(sample: str, **query):
    at = app_test(query={"sel": sample, **query})
    assert not at.exception, at.exception
    return at


# ------------------------------------------------------------------------------------------ controls


def test_panel_says_where_the_generator_loads_from_and_shows_each_command(demo_env, demo_store):
    at = _open(sid(2))
    text = fx.page_text(at)
    assert "What if" in text and "the shipped demo weights" in text
    assert [t.label for t in at.tabs] == ["Regenerate", "Interpolate", "From neighbours", "Steer"]
    codes = _codes(at)
    seed = int(_samples(demo_store, [sid(2)])["seed"].iloc[0])
    assert f"python -m pipeline edit --store {demo_store} regenerate --sample {sid(2)} --label 2 --seed {seed}" \
        in codes
    patch = next(c for c in codes if " patch " in c)
    assert f"--sample {sid(2)} --layer midblock --set " in patch  # the map's layer, the panel's neighbours
    # interpolation waits for an end point: no command yet, and the button says why it is off
    assert at.button(key="edit_go_interpolate").proto.disabled
    assert "Pick the end point on the map first." in text


def test_regenerate_with_another_class_writes_a_result_beside_its_parent(demo_env, demo_store):
    at = _open(sid(2, 1))
    at.selectbox(key=f"edit_class_{sid(2, 1)}").set_value(7)
    at.text_input(key=f"edit_seed_{sid(2, 1)}").set_value("4242")
    at.run()
    assert "--label 7 --seed 4242" in " ".join(_codes(at))
    at.button(key="edit_go_regenerate").click().run()
    assert not at.exception, at.exception
    (record,) = at.session_state["dmd.edit_results"]
    (result,) = record["ids"]
    row = _samples(demo_store, [result]).iloc[0]
    assert row["edit_op"] == "regenerate" and row["edit_parents"] == sid(2, 1)
    assert int(row["class_id"]) == 7 and int(row["seed"]) == 4242 and row["run_id"] == f"edit-{RUN}"
    # beside its parent in the panel, marked on the map with a line from the parent
    keys = {b.key for b in at.button}
    assert f"edit_sel_{result}" in keys and f"edit_sel_parent_{sid(2, 1)}" in keys
    m = fx.map_data(at)
    assert m["edited"] == [result]
    assert {"kind": "regenerate", "ids": [sid(2, 1), result], "labels": ["", "regenerate"]} in m["links"]
    # the result is on the map (placed with the others) and can be selected like any sample
    assert result in m_ids(at)
    at.button(key=f"edit_sel_{result}").click().run()
    assert at.session_state["dmd.selected"] == result and at.query_params["sel"] == result
    assert "This sample is the result of an edit: **regenerate**" in fx.page_text(at)


def m_ids(at) -> list[str]:
    from app import static_files

    rel = fx.map_data(at)["points_url"].split("/app/static/", 1)[1]
    return json.loads((static_files.STATIC_DIR / rel).read_text())["ids"]


def test_interpolation_to_a_picked_end_point_is_a_path_through_its_frames(demo_env, demo_store):
    from app import state

    a, b = sid(3, 2), sid(8, 2)
    at = _open(a)
    at.button(key="edit_pick").click().run()
    assert at.session_state[state.EDIT_PICK] is True
    assert "Click a point on the map: it becomes the end point." in fx.page_text(at)
    # the map's click callback, as the component calls it (AppTest cannot click a chart)
    at.session_state[state.EDIT_PICK] = False
    at.session_state[state.EDIT_END] = b
    at.slider(key="edit_frames").set_value(5).run()
    assert f"interpolate --from {a} --to {b} --frames 5" in " ".join(_codes(at))
    at.button(key="edit_go_interpolate").click().run()
    assert not at.exception, at.exception
    frames = at.session_state["dmd.edit_results"][-1]["ids"]
    meta = _samples(demo_store, frames)
    assert meta["edit_frame"].tolist() == [0, 1, 2, 3, 4] and set(meta["edit_parents"]) == {f"{a},{b}"}
    m = fx.map_data(at)
    (path,) = [link for link in m["links"] if link["kind"] == "interpolate"]
    assert path["ids"] == [a, *frames, b] and path["labels"] == ["", "0", "1", "2", "3", "4", ""]
    assert sorted(m["edited"]) == sorted(frames)
    # a share link to a frame restores it with its path (no session record needed)
    again = app_test(query={"sel": frames[2], **{k: at.query_params[k] for k in at.query_params if k != "sel"}})
    assert not again.exception and again.session_state["dmd.selected"] == frames[2]
    m2 = fx.map_data(again)
    assert m2["selected"] == frames[2]
    assert [link["ids"] for link in m2["links"] if link["kind"] == "interpolate"] == [[a, *frames, b]]


def test_interpolation_refuses_an_end_point_of_another_run_or_itself(demo_env):
    from app import state

    at = _open(sid(1))
    at.session_state[state.EDIT_END] = sid(1)
    at.run()
    assert "The end point is the selected sample: pick another." in fx.page_text(at)
    assert at.button(key="edit_go_interpolate").proto.disabled


def test_steer_from_one_class_towards_another_is_a_path_by_alpha(demo_env, demo_store):
    parent = sid(3, 4)
    at = _open(parent)
    at.selectbox(key=f"edit_class_A_{parent}").set_value(3)
    at.selectbox(key=f"edit_class_B_{parent}").set_value(8)
    at.text_input(key="edit_alphas").set_value("2, 0, 1").run()
    cmd = next(c for c in _codes(at) if " steer " in c)
    assert "--alpha 2,0,1" in cmd and f"--from-set {','.join(sid(3, j) for j in range(PER_CLASS))}" in cmd
    at.button(key="edit_go_steer").click().run()
    assert not at.exception, at.exception
    ids = at.session_state["dmd.edit_results"][-1]["ids"]
    meta = _samples(demo_store, ids)
    assert meta["edit_alpha"].tolist() == [2.0, 0.0, 1.0]  # in the order asked
    assert meta["edit_layer"].iloc[0] == "midblock"
    (path,) = [link for link in fx.map_data(at)["links"] if link["kind"] == "steer"]
    assert path["ids"] == [parent, ids[1], ids[2], ids[0]]  # by alpha
    assert path["labels"] == ["", "α 0", "α 1", "α 2"]
    # alpha 0 is the parent: the same point of the map (the stand-in maps activations linearly)
    xy = {i: (x, y) for i, x, y in zip(*_points(at), strict=True)}
    np.testing.assert_allclose(xy[ids[1]], xy[parent], atol=1e-3)
    assert not np.allclose(xy[ids[0]], xy[parent], atol=1e-3)


def _points(at):
    from app import static_files

    rel = fx.map_data(at)["points_url"].split("/app/static/", 1)[1]
    p = json.loads((static_files.STATIC_DIR / rel).read_text())
    return p["ids"], p["x"], p["y"]


def test_steer_with_a_bad_alpha_list_says_why(demo_env):
    at = _open(sid(4))
    at.text_input(key="edit_alphas").set_value("0, half").run()
    assert "α values are numbers separated by commas: 'half' is not a number" in fx.page_text(at)
    assert at.button(key="edit_go_steer").proto.disabled


def test_steer_sets_from_lasso_selections(demo_env, demo_store):
    from app import state

    parent = sid(5, 1)
    at = _open(parent)
    at.session_state[state.LASSO] = [sid(5, j) for j in range(3)]
    at.run()
    at.radio(key="edit_kind_A").set_value("lasso").run()
    at.button(key="edit_take_A").click().run()
    at.session_state[state.LASSO] = [sid(6, j) for j in range(3)]
    at.run()
    at.radio(key="edit_kind_B").set_value("lasso").run()
    at.button(key="edit_take_B").click().run()
    assert at.session_state[state.EDIT_SETS] == {
        "A": [sid(5, j) for j in range(3)], "B": [sid(6, j) for j in range(3)]}
    at.text_input(key="edit_alphas").set_value("1").run()
    at.button(key="edit_go_steer").click().run()
    assert not at.exception, at.exception
    (result,) = at.session_state["dmd.edit_results"][-1]["ids"]
    row = _samples(demo_store, [result]).iloc[0]
    assert row["edit_from_set"] == ",".join(sid(5, j) for j in range(3))
    assert row["edit_set"] == ",".join(sid(6, j) for j in range(3))


def test_generate_from_the_neighbours_uses_the_panel_set_and_links_it(demo_env, demo_store):
    parent = sid(6, 3)
    at = _open(parent, k="4")
    knn = list(at.session_state["dmd.knn_current"])
    assert len(knn) == 4
    at.button(key="edit_go_patch").click().run()
    assert not at.exception, at.exception
    (result,) = at.session_state["dmd.edit_results"][-1]["ids"]
    row = _samples(demo_store, [result]).iloc[0]
    assert row["edit_op"] == "patch" and row["edit_layer"] == "midblock"
    assert row["edit_set"].split(",") == knn and row["edit_steps"] == "0,1,2,3"
    links = fx.map_data(at)["links"]
    assert {"kind": "patch", "ids": [parent, result], "labels": ["", "patch"]} in links
    assert sorted(link["ids"][1] for link in links if link["kind"] == "set") == sorted(knn)
    assert all(link["ids"][0] == result for link in links if link["kind"] == "set")


def test_an_edit_that_fails_shows_the_message_and_the_command_not_a_traceback(demo_env, monkeypatch):
    from pipeline import edit

    def refuse(self, *args, **kwargs):
        raise edit.EditError("layer midblock has no step 7 in this run")

    monkeypatch.setattr(edit.Editor, "patch", refuse)
    at = _open(sid(7), k="3")
    at.button(key="edit_go_patch").click().run()
    assert not at.exception
    assert "The edit failed: layer midblock has no step 7 in this run" in fx.page_text(at)
    assert any(c.startswith("python -m pipeline edit") and " patch " in c for c in _codes(at))
    assert "dmd.edit_results" not in at.session_state or not at.session_state["dmd.edit_results"]


def test_the_result_of_an_edit_is_not_edited_again(demo_env, demo_store):
    from pipeline.edit import Editor

    frames = Editor(demo_store, device="cpu").interpolate(sid(0, 5), sid(1, 5), 3)
    at = _open(frames[1])
    assert "the result of an edit (interpolate)" in fx.page_text(at)
    assert not [b for b in at.button if (b.key or "").startswith("edit_go_")]
    # its parents are one click away
    at.button(key=f"edit_parent_{sid(0, 5)}").click().run()
    assert at.session_state["dmd.selected"] == sid(0, 5)


def test_a_model_this_code_cannot_generate_says_why_and_shows_the_command(app_env, app_store):
    at = app_test(query={"sel": "digits-a-00000003"})
    assert not at.exception
    text = fx.page_text(at)
    assert "Edits are not available for this sample" in text and "is not one this code can generate" in text
    assert any(c.startswith(f"python -m pipeline edit --store {app_store} regenerate --sample digits-a-00000003")
               for c in _codes(at))
    assert not [b for b in at.button if (b.key or "").startswith("edit_go_")]


# --------------------------------------------------------------------------------------- pure parts


def test_command_lines_quote_and_order_their_arguments():
    from app.edit_panel import command, parse_alphas

    assert command("my store", "steer", {"sample_id": "a", "layer": "mid", "from_ids": ["b", "c"],
                                         "to_ids": ["d"], "alphas": [0.0, 0.5, 2.0], "steps": [1, 3]}) == \
        "python -m pipeline edit --store 'my store' steer --sample a --layer mid --from-set b,c --to-set d " \
        "--alpha 0,0.5,2 --steps 1,3"
    assert command("s", "regenerate", {"sample_id": "x", "prompt": "a red car", "seed": 3}) == \
        "python -m pipeline edit --store s regenerate --sample x --prompt 'a red car' --seed 3"
    assert parse_alphas("0, 0.5 1;2") == [0.0, 0.5, 1.0, 2.0]
    for bad in ("", "0, nan", "1, x"):
        with pytest.raises(ValueError):
            parse_alphas(bad)


def test_edit_links_order_frames_and_alphas_and_skip_what_the_view_lacks():
    from app import data, views

    ids = ["p", "q", "f2", "f0", "f1", "s1", "s0", "r"]
    frame = pd.DataFrame({
        "sample_id": ids, "label": ids, "category": ids, "seed": range(8), "run_id": "r", "index": range(8),
        "edit_op": [None, None, "interpolate", "interpolate", "interpolate", "steer", "steer", "patch"],
        "edit_parents": [None, None, "p,q", "p,q", "p,q", "p", "p", "gone"],
        "edit_frame": [None, None, 2, 0, 1, None, None, None],
        "edit_alpha": [None, None, None, None, None, 1.0, 0.5, None],
        "edit_layer": [None, None, None, None, None, "mid", "mid", "mid"],
        "edit_steps": None, "edit_from_set": [None] * 5 + ["a", "a", None],
        "edit_set": [None] * 5 + ["b", "b", "p,q,missing"],
    })
    view = views.make_view(store_key="k", projection_key="p", model="m", layer="mid", step=0, sample_ids=ids,
                           xy=np.zeros((8, 2)), samples=frame, quality={}, source="fit")
    links = data.edit_links(view, ["f2", "f0", "f1", "s1", "s0", "r"])
    assert {"kind": "interpolate", "ids": ["p", "f0", "f1", "f2", "q"], "labels": ["", "0", "1", "2", ""]} in links
    assert {"kind": "steer", "ids": ["p", "s0", "s1"], "labels": ["", "α 0.5", "α 1"]} in links
    # the patch's parent is not in the view: no line to it; spokes to the members that are
    assert sorted(link["ids"][1] for link in links if link["kind"] == "set") == ["p", "q"]
    assert not [link for link in links if link["kind"] == "patch"]
    assert data.edit_family(view, "f1") == ["f2", "f0", "f1"] and data.edit_family(view, "p") == []


# ------------------------------------------------------------------------------- text-to-image model


@pytest.fixture(scope="module")
def t2i_store(tmp_path_factory):
    """A store with one run of the tiny SD v1.5 model of t2i_fixtures: two seeds of each of four prompts."""
    import torch

    from pipeline.generate import generate
    from tests.t2i_fixtures import build, tiny_files

    torch.set_num_threads(1)
    files = tiny_files(tmp_path_factory)
    root = tmp_path_factory.mktemp("edit-app-t2i") / "store"
    generate(build(files, "sd15", seeds_per_prompt=2), root, 8, ["mid", "down1"], run_id="sd", batch_size=8,
             progress=False)
    return root, files


def test_a_prompt_model_regenerates_with_another_prompt_and_steers_between_categories(t2i_store, monkeypatch,
                                                                                      tmp_path):
    from app import data
    from tests.t2i_fixtures import CATEGORIES, PROMPTS

    root, files = t2i_store
    monkeypatch.setattr(data, "EDIT_WAIT_S", 120)
    with fx.app_pointed_at(root, monkeypatch, tmp_path):
        at = app_test(query={"sel": "sd-00000000", "layer": "mid"})
        assert not at.exception, at.exception
        assert f"`{files.checkpoint('sd15')}`" in fx.page_text(at) or str(files.checkpoint("sd15")) in fx.page_text(at)
        assert at.text_input(key="edit_prompt_sd-00000000").value == PROMPTS[0]
        at.text_input(key="edit_prompt_sd-00000000").set_value("a green bicycle").run()
        assert "regenerate --sample sd-00000000 --prompt 'a green bicycle' --seed " in " ".join(_codes(at))
        at.button(key="edit_go_regenerate").click().run()
        assert not at.exception, at.exception
        (result,) = at.session_state["dmd.edit_results"][-1]["ids"]
        row = _samples(root, [result]).iloc[0]
        assert row["prompt"] == "a green bicycle" and row["edit_op"] == "regenerate"
        # steering sets by category: A the sample's own, B another; the sets are that category's samples
        assert at.radio(key="edit_kind_A").options == ["a category", "a lasso set"]
        assert at.selectbox(key="edit_class_A_sd-00000000").value == CATEGORIES[0]
        at.selectbox(key="edit_class_B_sd-00000000").set_value(CATEGORIES[2])
        at.text_input(key="edit_alphas").set_value("0, 1").run()
        at.button(key="edit_go_steer").click().run()
        assert not at.exception, at.exception
        ids = at.session_state["dmd.edit_results"][-1]["ids"]
        meta = _samples(root, ids)
        members = _samples(root, meta["edit_set"].iloc[0].split(","))
        assert set(members["category"]) == {CATEGORIES[2]} and len(members) == 2
        assert meta["edit_alpha"].tolist() == [0.0, 1.0] and set(meta["edit_layer"]) == {"mid"}


def test_a_checkpoint_missing_from_this_server_says_why_and_shows_the_command(t2i_store, monkeypatch, tmp_path):
    import pipeline.checkpoints as checkpoints

    root, files = t2i_store

    def missing(ref):
        raise FileNotFoundError(f"checkpoint not found: {str(ref)!r}")

    monkeypatch.setattr(checkpoints, "resolve_checkpoint", missing)
    with fx.app_pointed_at(root, monkeypatch, tmp_path):
        at = app_test(query={"sel": "sd-00000001", "layer": "mid"})
        assert not at.exception, at.exception
        text = fx.page_text(at)
        assert "the checkpoint of run sd is not on this server: checkpoint not found:" in text
        assert str(files.checkpoint("sd15")) in text
        assert any(c.startswith(f"python -m pipeline edit --store {root} regenerate --sample sd-00000001")
                   for c in _codes(at))
        assert not [b for b in at.button if (b.key or "").startswith("edit_go_")]


def test_a_generator_that_fails_to_load_says_why_and_shows_the_command(demo_env, demo_store, monkeypatch):
    from app import data
    from pipeline import edit

    def cannot(self, parent):
        raise edit.EditError("no CUDA device here: this run was generated in float16 on cuda")

    original = edit.Editor.adapter
    monkeypatch.setattr(edit.Editor, "adapter", cannot)
    at = _open(sid(9))
    job = data.jobs().find(("edit-load", data.resolve(str(demo_store)), RUN))  # the panel's preload of the demo
    assert job is not None
    job.thread.join(30)
    at.run()
    text = fx.page_text(at)
    assert "The generator of run `demo-multistep` cannot be loaded from the shipped demo weights: no CUDA device" \
        in text
    assert any(c.startswith("python -m pipeline edit --store ") and f"regenerate --sample {sid(9)}" in c
               for c in _codes(at))
    assert not [b for b in at.button if (b.key or "").startswith("edit_go_")]
    # "Try again" loads it again (and it loads, once the cause is gone)
    monkeypatch.setattr(edit.Editor, "adapter", original)
    at.button(key="edit_reload").click().run()
    data.jobs().find(("edit-load", data.resolve(str(demo_store)), RUN)).thread.join(30)
    at.run()
    assert "demo from the shipped demo weights, on cpu" in fx.page_text(at)
    assert at.button(key="edit_go_regenerate")


def test_sets_leave_out_edit_results_and_real_images():
    from app.edit_panel import _editable

    samples = pd.DataFrame({"sample_id": ["g", "r", "i", "x"], "run_id": ["gen", "edit-gen", "edit-gen", "real"],
                            "edit_op": [None, "regenerate", "interpolate", None]})
    kinds = {"gen": "generated", "edit-gen": "edit", "real": "real"}
    assert _editable(samples, ["g", "r", "i", "x", "unknown"], kinds) == (["g", "r"], 3)
    assert _editable(samples, ["x"], {}) == (["x"], 0)


def test_a_slow_edit_shows_its_progress_then_its_results(demo_env, demo_store, monkeypatch):
    import threading

    from app import data, state
    from pipeline import edit

    release = threading.Event()
    original = edit.Editor.regenerate

    def slow(self, *args, **kwargs):
        self.progress("regenerate: generating 1 sample")
        release.wait(30)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(edit.Editor, "regenerate", slow)
    monkeypatch.setattr(data, "EDIT_WAIT_S", 0.05)
    at = _open(sid(1, 2))
    at.text_input(key=f"edit_seed_{sid(1, 2)}").set_value("77").run()
    at.button(key="edit_go_regenerate").click().run()
    assert not at.exception, at.exception
    bar = at.get("progress")
    assert bar and "regenerate: generating 1 sample" in bar[0].proto.text
    assert at.button(key="edit_stop_waiting") and at.button(key="edit_go_interpolate").proto.disabled
    job = data.jobs().find(at.session_state[state.EDIT_JOB]["key"])
    release.set()
    job.thread.join(30)
    at.run()
    (result,) = at.session_state[state.EDIT_RESULTS][-1]["ids"]
    assert int(_samples(demo_store, [result])["seed"].iloc[0]) == 77
    assert result in fx.map_data(at)["edited"]


class _PageRun(Exception):
    """`st.rerun(scope="app")` asked for (the page, not only the fragment, would run again)."""


@pytest.fixture
def bare_session(monkeypatch):
    """Streamlit's bare-mode session state, emptied after the test; `st.rerun` raises `_PageRun`."""
    import streamlit as st

    def rerun(scope="app"):
        raise _PageRun(scope)

    monkeypatch.setattr(st, "rerun", rerun)
    before = set(st.session_state.keys())
    yield st.session_state
    for key in set(st.session_state.keys()) - before:
        del st.session_state[key]


def test_an_edit_into_a_listed_run_is_drawn_by_the_clicks_own_fragment_run(demo_env, demo_store, bare_session):
    """The fragment run of the edit's button draws the map with the results (no page run, which would redo
    the sidebar after a forced garbage collection); a run new to the sidebar's Runs list, or a map drawn while
    another projection computes, runs the page instead."""
    from app import data, explore, state

    at = _open(sid(6, 3))
    at.text_input(key=f"edit_seed_{sid(6, 3)}").set_value("901").run()
    at.button(key="edit_go_regenerate").click().run()  # the first edit of the run: a page run lists it
    assert not at.exception, at.exception
    assert f"edit-{RUN}" in at.session_state[explore.RUNS_LISTED]
    bare_session[state.PROJECTION_REQUEST] = at.session_state[state.PROJECTION_REQUEST]
    bare_session[explore.RUNS_LISTED] = at.session_state[explore.RUNS_LISTED]
    before = explore._view_with_edit(str(demo_store), False, {"run": f"edit-{RUN}"})[0]

    job = data.run_edit(str(demo_store), "regenerate", {"sample_id": sid(6, 3), "label": 6, "seed": 902})
    (result,) = job.result
    view, settings, busy = explore._view_with_edit(str(demo_store), False, {"run": f"edit-{RUN}"})
    assert result in view.position and result not in before.position and not busy
    assert len(view) == len(before) + 1 and settings == at.session_state[state.PROJECTION_REQUEST][0]
    assert bare_session[explore.LAST_DRAWN][1] == settings

    with pytest.raises(_PageRun):  # the results' run is not in the sidebar yet
        explore._view_with_edit(str(demo_store), False, {"run": "edit-another-run"})
    with pytest.raises(_PageRun):  # the map drawn is the previous one: the page shows the new one's progress
        explore._view_with_edit(str(demo_store), True, {"run": f"edit-{RUN}"})


def test_settle_returns_the_finished_edit_once_and_keeps_a_failure_for_the_panel(demo_env, bare_session):
    from app import data, edit_panel, state

    done = data.start_job(("edit", "test-settle", "ok"), lambda job: ["r1", "r2"], wait_s=30)
    bare_session[state.EDIT_JOB] = {"key": done.key, "op": "steer", "title": "t", "parents": ["p"],
                                    "run": f"edit-{RUN}", "command": "python -m pipeline edit"}
    record = edit_panel.settle()
    assert record["ids"] == ["r1", "r2"] and record["run"] == f"edit-{RUN}" and record["op"] == "steer"
    assert state.edit_results()[-1]["ids"] == ["r1", "r2"] and bare_session[state.EDIT_JOB] is None
    assert edit_panel.settle() is None  # taken in once

    def fail(job):
        raise ValueError("no such layer")

    failed = data.start_job(("edit", "test-settle", "bad"), fail, wait_s=30)
    bare_session[state.EDIT_JOB] = {**record, "key": failed.key, "command": "python -m pipeline edit x"}
    assert edit_panel.settle() is None
    assert bare_session[state.EDIT_ERROR] == {"error": "no such layer", "command": "python -m pipeline edit x"}


def test_a_click_waits_for_the_placement_once_the_results_are_written(monkeypatch, tmp_path):
    """An edit whose results are written by the end of `EDIT_WAIT_S` is waited for while the map places them (the
    click's own run then shows them); one still generating comes back running (the panel polls its progress)."""
    import threading

    from app import data

    generating = threading.Event()

    class Quick:
        def regenerate(self, **args):
            return ["r-1"]

        def steer(self, **args):
            generating.wait(30)
            return ["r-2"]

    monkeypatch.setattr(data, "_editor", lambda path, job: Quick())
    monkeypatch.setattr(data, "EDIT_WAIT_S", 0.1)
    placed = []
    job = data.run_edit(str(tmp_path), "regenerate", {"n": 1}, then=lambda: (time.sleep(0.6), placed.append(1)))
    assert not job.running and job.result == ["r-1"] and placed == [1]
    slow = data.run_edit(str(tmp_path), "steer", {"n": 2}, then=lambda: None)
    assert slow.running and slow.progress < data.PLACING
    generating.set()
    slow.thread.join(30)
    assert slow.result == ["r-2"]


def test_warming_the_model_reads_the_new_samples_into_the_cache(demo_env, demo_store, monkeypatch):
    """What an edit's job reads beside the placement is what the run drawing the results asks for: after
    `warm_model`, the samples (the new result among them) and the steps come from the cache."""
    from app import data
    from pipeline.edit import Editor

    data.model_samples(str(demo_store), "demo")  # the cache holds the samples before the edit
    (result,) = Editor(demo_store, device="cpu").regenerate(sid(5, 4), seed=5150)
    data._version.clear()  # (as the edit's job does)
    data.warm_model(str(demo_store), "demo", LAYERS[0])

    def no_store(path):
        raise AssertionError("read from the store, not the cache")

    monkeypatch.setattr(data, "open_store", no_store)
    assert result in set(data.model_samples(str(demo_store), "demo")["sample_id"])
    assert len(data.model_steps(str(demo_store), "demo", LAYERS[0]))


def test_freezing_long_lived_objects_takes_them_out_of_full_collections(monkeypatch):
    """Streamlit's collection after every script run walks what `freeze_long_lived` froze no more."""
    import gc
    import threading

    from app import data

    monkeypatch.setattr(data, "_FROZEN", threading.Event())
    kept = [[i] for i in range(100_000)]  # long-lived objects the collector tracks
    try:
        tracked = len(gc.get_objects())
        assert data.freeze_long_lived() is True
        assert gc.get_freeze_count() >= len(kept)
        assert len(gc.get_objects()) < tracked - len(kept)
        assert data.freeze_long_lived() is False  # once per process
        later = [[i] for i in range(1000)]
        assert sum(1 for o in gc.get_objects() if o is later) == 1  # what is made later is collected as before
    finally:
        gc.unfreeze()


def test_a_student_run_of_the_shipped_student_is_editable_with_its_own_family(tmp_path):
    """The distilled student is stored under `demo` with its own family (settings.model_family): the panel
    builds it from the shipped student weights, not the demo teacher's, and does not call them missing."""
    import torch

    from app import data
    from pipeline.adapters.edm import demo_student_loader
    from pipeline.generate import generate

    torch.set_num_threads(1)
    root = tmp_path / "store"
    generate(demo_student_loader(samples_per_class=1), root, 10, LAYERS, run_id="demo-student", progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "resolve", lambda path: str(path))
        source = data.edit_source(str(root), "demo", "demo-student-00000003")
    assert source.ok and source.shipped, source.why_not
    assert source.run_id == "demo-student" and source.num_steps == 1 and source.conditioning == "class"
