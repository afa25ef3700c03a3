"""AppTest: what a newcomer's walk through the demo's runs (a 4-step run, a teacher that records only its step
17) found misleading, pinned on a small store of the same shape."""

from __future__ import annotations

import pytest

from tests import app_fixtures as fx
from tests.app_fixtures import app_pointed_at, app_test

OVERVIEW = "app_pages/overview.py"
LAST_SIGMA = 0.002


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory):
    """A multi-step run (steps 0–2, the last at σ 0.002) and a teacher run recording only its step 17 at the same
    σ, as the demo's multistep and teacher runs do."""
    root = tmp_path_factory.mktemp("walk") / "store"
    fx._write_class_run(root, "digits", "digits-multi", ("midblock",), 40, (14.6, 2.5, LAST_SIGMA), seed=1)
    fx._write_class_run(root, "digits", "digits-teacher", ("midblock",), 40, (LAST_SIGMA,), seed=2, first_step=17)
    return root


@pytest.fixture
def walk_env(teacher_store, monkeypatch, tmp_path):
    with app_pointed_at(teacher_store, monkeypatch, tmp_path) as fake:
        yield fake


def test_overview_names_each_step_with_its_sigma_and_each_runs_steps(walk_env):
    at = app_test(OVERVIEW)
    assert not at.exception
    layers = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    # two steps of equal sigma (the multi-step run's last, the teacher's 17th) read apart, each by its number
    assert list(layers["step: σ"]) == ["0: 14.6 · 1: 2.5 · 2: 0.002 · 17: 0.002"]
    assert list(layers["steps"]) == [4]
    per_run = next(d.value for d in at.dataframe if "run kind" in d.value.columns and "steps" in d.value.columns)
    steps = dict(zip(per_run["run"], per_run["steps"], strict=True))
    assert steps == {"digits-multi": "0–2", "digits-teacher": "17"}



def test_inside_offers_only_the_steps_the_samples_run_records(walk_env):
    teacher = fx.open_page("app_pages/inside.py", {"sel": "digits-teacher-00000003"}, timeout=120)
    assert not teacher.exception
    # the teacher records step 17 alone: no slider over the multi-step run's 0–2 (each an error), and it says so
    assert not [s for s in teacher.select_slider if s.key == "ins_step"]
    assert any("Step 17: the only step" in c.value for c in teacher.sidebar.caption)
    assert not any("no activations" in e.value for e in teacher.error)
    multi = fx.open_page("app_pages/inside.py", {"sel": "digits-multi-00000003"}, timeout=120)
    assert not multi.exception
    assert list(multi.select_slider(key="ins_step").options) == ["0", "1", "2"]


def test_explore_links_to_motion_only_for_a_sample_whose_run_records_several_steps(walk_env):
    teacher = app_test(query={"sel": "digits-teacher-00000003", "step": "17"})
    assert not teacher.exception
    links = {e.proto.label for e in teacher.get("page_link")}
    # Motion's step animation has no frame for a run that records step 17 alone: no link there
    assert "Inside its feature map" in links and "Its motion over the steps" not in links
    multi = app_test(query={"sel": "digits-multi-00000003", "step": "2"})
    assert not multi.exception
    assert {"Inside its feature map", "Its motion over the steps"} <= {e.proto.label for e in multi.get("page_link")}


def test_search_results_name_their_run(walk_env):
    at = app_test("app_pages/search.py")
    at.radio(key="search.mode").set_value("keywords").run()
    at.text_input(key="search.text_keywords").set_value("three")
    at.button[[b.label for b in at.button].index("Search")].click().run()
    assert not at.exception
    captions = [c.value for c in at.caption if "seed" in c.value]
    assert len(captions) == 8  # class 3 of 40 samples a run: 4 in each of the two runs
    # both runs' samples of one class share seeds and labels: the caption says which run each image is from
    assert sum("digits-multi (" in c for c in captions) == 4 and sum("digits-teacher (" in c for c in captions) == 4


def test_all_steps_export_counts_points_not_samples(walk_env):
    at = app_test(query={"step": "all"})
    assert not at.exception
    export = next(c.value for c in at.caption if c.value.startswith("Export:"))
    # 40 samples at 3 steps and 40 at one: 160 points of 80 samples
    assert "the whole view (160 points)" in export


def test_compare_runs_does_not_ask_for_a_shared_step_that_the_runs_lack(walk_env):
    at = fx.open_page("app_pages/compare_runs.py", {"crm": "digits", "crl": "midblock",
                                                    "crr": "digits-multi~digits-teacher"}, timeout=120)
    assert not at.exception
    # step 2 (the multi-step run's last) against step 17 (the teacher's only one): no step is shared
    assert list(at.selectbox(key="cr_step").options) == ["each run's last step"]
    caption = next(c.value for c in at.caption if "different steps" in c.value)
    assert "choose a shared step" not in caption and "these runs share no step" in caption


def test_a_column_colouring_is_titled_as_in_the_menu(walk_env):
    at = app_test(query={"step": "2", "color": "index"})
    assert not at.exception
    assert at.session_state["w_color"] == "index"
    # as the menu says ("index in run"; "run kind" for run_kind), not the column's name
    assert fx.static_json(fx.map_data(at)["color_url"])["title"] == "index in run"
