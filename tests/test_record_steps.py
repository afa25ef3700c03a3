"""Which steps a run records (`generate(record_steps=...)`, `--record-steps`), the store's count of runs per step,
and the one rule for the step a map opens on (`pipeline.features.default_step`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.features import default_step
from pipeline.generate import generate, resolve_record_steps
from store import Store
from tests.edm_fixtures import tiny_edm_adapter

LAYERS = ["encoder_bottleneck", "midblock"]


def _steps(root, model="tiny", layer="midblock") -> list[int]:
    return Store(root).steps(model, layer)["step"].tolist()


# -- resolving a request ---------------------------------------------------------------------------------------

def test_a_request_resolves_to_sorted_steps_or_none_for_all():
    assert resolve_record_steps(None, 18) is None and resolve_record_steps("all", 18) is None
    assert resolve_record_steps("last", 18) == [17] and resolve_record_steps(-1, 4) == [3]
    assert resolve_record_steps("3, 0,-1", 18) == [0, 3, 17]  # negative: from the last; sorted, once each
    assert resolve_record_steps([np.int64(2), "last"], 4) == [2, 3]
    assert resolve_record_steps("0,1,2,3", 4) is None  # every step is all: the manifest stays as before
    assert resolve_record_steps("last", 1) is None


@pytest.mark.parametrize("bad, words", [("18", "step 18 out of range"), ("-19", "out of range"),
                                        ("first", "'first' is not a step"), (",", "no step given")])
def test_a_bad_request_says_what_is_wrong(bad, words):
    with pytest.raises(ValueError, match=words):
        resolve_record_steps(bad, 18)


# -- generation ------------------------------------------------------------------------------------------------

def test_a_run_records_only_its_steps_keeps_every_preview_and_resumes(tmp_path):
    sigmas = (80.0, 5.0, 0.5)
    generate(tiny_edm_adapter(sigmas, x0_previews=True), tmp_path, 4, LAYERS, batch_size=2, progress=False,
             run_id="two", record_steps=[0, -1])
    store = Store(tmp_path)
    assert _steps(tmp_path) == [0, 2] and store.steps("tiny", "midblock")["sigma"].tolist() == [80.0, 0.5]
    assert store.manifest("two")["settings"]["record_steps"] == [0, 2]
    sid = store.samples(run_ids=["two"])["sample_id"].iloc[0]
    with pytest.raises(ValueError):  # no activations at the step it does not record
        store.activations("tiny", "midblock", step=1, run_ids=["two"])
    assert all(store.image(sid, step=s) for s in range(3))  # x0 previews stay per step
    # resume with more samples: the same steps, no duplicates
    result = generate(tiny_edm_adapter(sigmas, x0_previews=True), tmp_path, 6, LAYERS, batch_size=2,
                      progress=False, run_id="two", record_steps=[0, 2])
    assert result.generated == 2 and result.total_done == 6
    acts = Store(tmp_path).activations("tiny", "midblock", step=2, run_ids=["two"])
    assert len(acts.sample_ids) == len(set(acts.sample_ids)) == 6 and _steps(tmp_path) == [0, 2]


def test_recording_all_steps_leaves_the_manifest_and_run_id_as_before(tmp_path):
    a = generate(tiny_edm_adapter(), tmp_path / "a", 2, LAYERS, progress=False)
    b = generate(tiny_edm_adapter(), tmp_path / "b", 2, LAYERS, progress=False, record_steps="all")
    c = generate(tiny_edm_adapter(), tmp_path / "b", 2, LAYERS, progress=False, record_steps="last")
    assert a.run_id == b.run_id != c.run_id  # recording fewer steps is another run
    assert "record_steps" not in Store(tmp_path / "a").manifest(a.run_id)["settings"]
    assert _steps(tmp_path / "a") == [0, 1, 2]


def test_a_step_outside_the_model_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="step 3 out of range: this model samples in 3 steps"):
        generate(tiny_edm_adapter(), tmp_path / "s", 2, LAYERS, progress=False, record_steps=3)
    assert not (tmp_path / "s").exists() or not Store(tmp_path / "s").models()


# -- the command line and edits --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_last(tmp_path_factory):
    """A demo run (4 steps) that records only its last step, through the command line."""
    from pipeline.__main__ import main

    root = tmp_path_factory.mktemp("record-last")
    argv = ["generate", "--model", "demo", "--store", str(root), "--layers", "midblock", "--run-name", "last",
            "--record-steps", "last", "--quiet", "--batch-size", "4"]
    assert main([*argv, "--num-samples", "6"]) == 0
    return root, argv


def test_the_command_records_only_the_last_step_and_resumes(demo_last, capsys):
    from pipeline.__main__ import main

    root, argv = demo_last
    store = Store(root)
    assert _steps(root, "demo") == [3] and store.manifest("last")["settings"]["record_steps"] == [3]
    assert main([*argv, "--num-samples", "10"]) == 0  # resumed: only the 4 missing samples
    assert "generated 4 samples" in capsys.readouterr().out
    acts = Store(root).activations("demo", "midblock", step=3, run_ids=["last"])
    assert len(acts.sample_ids) == 10 and _steps(root, "demo") == [3]


@pytest.mark.parametrize("bad, words", [("4", "step 4 out of range: this model samples in 4 steps"),
                                        ("0,x", "'x' is not a step")])
def test_the_command_refuses_a_bad_step_in_one_line(demo_last, capsys, tmp_path, bad, words):
    from pipeline.__main__ import main

    argv = ["generate", "--model", "demo", "--store", str(tmp_path / "s"), "--samples-per-class", "1",
            "--layers", "midblock", "--record-steps", bad, "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_edit_records_the_steps_its_parent_run_records(demo_last):
    from pipeline import run_pairs
    from pipeline.edit import Editor

    root, _ = demo_last
    (result,) = Editor(root, device="cpu").regenerate("last-00000000", label=7)
    store = Store(root)
    edit_run = store.samples(sample_ids=[result])["run_id"].iloc[0]
    assert edit_run != "last"
    assert run_pairs.run_steps(store, "demo", "midblock", [edit_run])["step"].tolist() == [3]


# -- runs per step and the default step ------------------------------------------------------------------------

def test_the_store_counts_the_runs_of_each_step(tmp_path):
    generate(tiny_edm_adapter(), tmp_path, 2, LAYERS, progress=False, run_id="three")
    generate(tiny_edm_adapter((80.0,)), tmp_path, 2, LAYERS, progress=False, run_id="one")
    generate(tiny_edm_adapter(), tmp_path, 2, LAYERS, progress=False, run_id="last", record_steps="last")
    steps = Store(tmp_path).steps("tiny", "midblock")
    assert steps["step"].tolist() == [0, 1, 2] and steps["runs"].tolist() == [2, 1, 2]
    assert steps.attrs["runs"] == 3 and default_step(steps) == 2


def _frame(counts: dict[int, int], runs: int | None) -> pd.DataFrame:
    f = pd.DataFrame({"step": list(counts), "timestep": np.nan, "sigma": np.nan, "runs": list(counts.values())})
    if runs is not None:
        f.attrs["runs"] = runs
    return f


@pytest.mark.parametrize("counts, runs, want", [
    ({0: 3, 1: 1, 2: 1, 3: 5, 17: 1}, 8, 3),  # the demo with its teacher: step 17 is the teacher's alone
    ({0: 2, 1: 1, 2: 1, 3: 1}, 2, 3),  # a 1-step and a 4-step run: each is half
    ({0: 4}, 4, 0),  # only 1-step runs
    ({0: 3, 1: 1, 2: 1, 3: 1}, 3, 0),  # two 1-step runs and a 4-step run: step 0 is the comparison
    ({5: 1, 9: 1}, 2, 9),  # two runs that share no step: the latest of a half
    ({2: 1, 7: 1}, 5, 2),  # no step reaches half: the most recorded one (the first of a tie)
])
def test_the_default_step_is_the_latest_step_half_of_the_runs_record(counts, runs, want):
    assert default_step(_frame(counts, runs)) == want


def test_the_default_step_without_counts_is_the_last_and_an_empty_frame_gives_0():
    assert default_step(pd.DataFrame({"step": [0, 3, 1]})) == 3
    assert default_step(pd.DataFrame({"step": pd.Series(dtype="int64")})) == 0
    assert default_step(_frame({0: 3, 3: 1}, None), runs=2) == 3  # a total given overrides the frame's
    assert default_step(_frame({0: 3, 3: 1, 1: 1}, 6)) == 0
    # one sample's run (Inside): the shared step when its run records it, else the run's last
    demo = _frame({0: 3, 1: 1, 2: 1, 3: 5, 17: 1}, 8)
    assert default_step(demo, own=[0, 1, 2, 3]) == 3 and default_step(demo, own=[17]) == 17
    assert default_step(demo, own=[0]) == 0 and default_step(demo, own=[]) == 3
    # two rows of one step (two sigmas) count together
    two = pd.concat([_frame({0: 1, 3: 1}, None), _frame({3: 1}, None)], ignore_index=True)
    two.attrs["runs"] = 3
    assert default_step(two) == 3
