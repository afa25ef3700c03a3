"""The demo's teacher runs: `demo-teacher` (EDM's Heun sampler, 18 steps, the seeds and classes of the 1-step run,
only its last step recorded) and `demo-teacher-encoded` (its final images at the real digits' noise level, step
3), and the step the app opens on with them in the store: 3, the step most runs share, not the teacher's 17."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.demo import DEMO_ENCODED_RUNS, DEMO_NAIVE_RUN, DEMO_TEACHER_RUN
from store import Store

PER_CLASS = 3
ENCODED = DEMO_ENCODED_RUNS[DEMO_TEACHER_RUN]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipeline.demo import build_demo_store

    root = tmp_path_factory.mktemp("demo-teacher")
    build_demo_store(root, samples_per_class=PER_CLASS, batch_size=10, progress=False, maps=False, extras=True)
    return root


def test_the_teacher_samples_the_seeds_and_classes_of_the_1_step_run_with_heun(demo):
    store = Store(demo)
    cols = ["index", "seed", "class_id", "run_kind"]
    teacher = store.samples(run_ids=[DEMO_TEACHER_RUN], columns=cols).sort_values("index")
    naive = store.samples(run_ids=[DEMO_NAIVE_RUN], columns=cols).sort_values("index")
    assert len(teacher) == 10 * PER_CLASS and set(teacher["run_kind"]) == {"teacher"}
    assert teacher["seed"].tolist() == naive["seed"].tolist()
    assert teacher["class_id"].tolist() == naive["class_id"].tolist()
    settings = store.manifest(DEMO_TEACHER_RUN)["settings"]
    assert settings["sampler"] == "heun" and len(settings["sigmas"]) == 18 and settings["record_steps"] == [17]


def test_the_teacher_records_only_its_last_step_at_the_real_digits_noise_level(demo):
    from pipeline import run_pairs

    store = Store(demo)
    steps = run_pairs.run_steps(store, "demo", "midblock", [DEMO_TEACHER_RUN, ENCODED])
    assert steps.set_index("run_id")["step"].to_dict() == {DEMO_TEACHER_RUN: 17, ENCODED: 3}
    assert steps["sigma"].tolist() == [pytest.approx(0.002)] * 2
    # the encoded run reads the teacher's final images, sample by sample
    encoded = store.samples(run_ids=[ENCODED], columns=["source_sample_id", "run_kind"])
    assert set(encoded["run_kind"]) == {"encoded"}
    assert encoded["source_sample_id"].tolist() == store.samples(run_ids=[DEMO_TEACHER_RUN])["sample_id"].tolist()
    # its last step (the network on the almost final image) and its encoded images are near each other: both are
    # the network at sigma 0.002 on (nearly) the same image
    a = store.activations("demo", "midblock", step=17, run_ids=[DEMO_TEACHER_RUN]).matrix.astype("float64")
    b = store.activations("demo", "midblock", step=3, run_ids=[ENCODED]).matrix.astype("float64")
    spread = ((a - a.mean(0)) ** 2).sum(1).mean()
    assert ((a - b) ** 2).sum(1).mean() < 0.1 * spread


def test_the_map_opens_on_the_step_most_runs_share(demo):
    from pipeline.features import default_step

    frame = Store(demo).steps("demo", "midblock")
    assert frame["step"].tolist() == [0, 1, 2, 3, 17]
    # 8 runs: step 3 has the 4-step run, the real digits and the three encoded runs; 17 the teacher alone
    assert frame["runs"].tolist() == [3, 1, 1, 5, 1] and frame.attrs["runs"] == 8
    assert default_step(frame) == 3


def test_explore_and_inside_open_on_step_3_and_a_teacher_sample_on_its_own_step(demo, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from tests import app_fixtures as fx

    with fx.app_pointed_at(demo, monkeypatch, tmp_path) as fake:
        at = AppTest.from_file(fx.ENTRY, default_timeout=120)
        at.run()
        assert not at.exception, at.exception
        assert at.select_slider(key="w_step").value == 3 and at.query_params["step"] == "3"
        assert fake.calls[-1]["step"] == 3
        at = fx.open_page("app_pages/inside.py", {"sel": f"{ENCODED}-00000000"}, timeout=120)
        assert not at.exception, at.exception
        assert at.session_state["ins_step"] == 3
        # a sample of the teacher, which records step 17 only, opens there
        at = fx.open_page("app_pages/inside.py", {"sel": f"{DEMO_TEACHER_RUN}-00000000"}, timeout=120)
        assert not at.exception, at.exception
        assert at.session_state["ins_step"] == 17
        assert "no activations" not in fx.page_text(at)
        # the other pages with a step choice open on step 3 too
        for page, key, params in (("app_pages/analysis.py", "ana_step", {}), ("app_pages/compare.py", "cmp_step", {}),
                                  ("app_pages/motion.py", "mot_step", {"mode": "layers"})):
            at = fx.open_page(page, params, timeout=120)
            assert not at.exception, (page, at.exception)
            assert at.session_state[key] == 3, page


def test_starting_numba_leaves_torchs_thread_count_as_it_was():
    """numba's OpenMP layer sets the OpenMP thread count torch shares when its pool starts; a run generated after
    the first map must use the count it had before (else a resumed run's float sums differ in the last bit).
    In a fresh process, where the pool has not started yet."""
    code = ("import torch; torch.set_num_threads(1)\n"
            "from pipeline.knn import prepare_numba; prepare_numba()\n"
            "import numba; numba.get_num_threads()\n"
            "print(torch.get_num_threads())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
