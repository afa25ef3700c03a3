"""Checkpoints over training: train-demo's snapshots, generate's recorded checkpoint step, and the store's
order of a model's checkpoint runs (Store.runs()' checkpoint_step, Store.checkpoint_runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.demo_model import snapshot_path, snapshots_of
from pipeline.generate import checkpoint_step_of
from store import Store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step demo training through the CLI, keeping snapshots at steps 1 and 2."""
    out = tmp_path_factory.mktemp("train") / "demo_edm.safetensors"
    assert main(["train-demo", "--out", str(out), "--steps", "3", "--snapshots", "1,2"]) == 0
    return out


def test_train_demo_keeps_named_snapshots_that_record_their_step(trained):
    snaps = snapshots_of(trained)
    assert [step for step, _ in snaps] == [1, 2]
    assert [path for _, path in snaps] == [snapshot_path(trained, 1), snapshot_path(trained, 2)]
    assert snapshot_path(trained, 250).name == "demo_edm-step00250.safetensors"
    assert [checkpoint_step_of(p) for _, p in snaps] == [1, 2]
    assert checkpoint_step_of(trained) == 3  # the final file is the last step (from its metadata)


def test_generate_runs_of_several_checkpoints_are_ordered_by_training_step(trained, tmp_path, capsys):
    store = tmp_path / "s"
    base = ["generate", "--model", "demo", "--store", str(store), "--num-samples", "4", "--steps", "1",
            "--seed", "5", "--quiet"]
    for ckpt in (trained, snapshot_path(trained, 2), snapshot_path(trained, 1)):  # generated out of order
        assert main(base + ["--checkpoint", str(ckpt)]) == 0
    assert main(base) == 0  # the shipped weights: no step
    st = Store(store)
    runs = st.runs()
    assert len(runs) == 4
    assert sorted(runs["checkpoint_step"].dropna().tolist()) == [1, 2, 3]
    assert runs.loc[runs.checkpoint.str.contains("shipped"), "checkpoint_step"].isna().all()
    ordered = st.checkpoint_runs("demo")
    assert ordered["checkpoint_step"].tolist() == [1, 2, 3]
    assert [json.loads(s)["checkpoint_step"] for s in ordered.settings] == [1, 2, 3]
    assert st.checkpoint_runs("imagenet").empty
    # the same seeds and classes in every checkpoint's run; the images change with training
    samples = st.samples("demo", run_ids=ordered.run_id.tolist())
    by_run = {r: g.sort_values("index") for r, g in samples.groupby("run_id")}
    seeds = [g.seed.tolist() for g in by_run.values()]
    classes = [g.class_id.tolist() for g in by_run.values()]
    assert all(s == seeds[0] for s in seeds) and all(c == classes[0] for c in classes)
    first, last = (st.images(by_run[r].sample_id.tolist()) for r in ordered.run_id[[0, 2]])
    assert first != last


def test_checkpoint_step_flag_is_recorded_and_a_different_one_for_the_same_run_is_refused(trained, tmp_path,
                                                                                          capsys):
    store = tmp_path / "s"
    base = ["generate", "--model", "demo", "--store", str(store), "--num-samples", "2", "--steps", "1", "--quiet",
            "--checkpoint", str(trained)]
    assert main(base + ["--checkpoint-step", "2000"]) == 0
    assert Store(store).runs()["checkpoint_step"].tolist() == [2000]
    assert main(base + ["--checkpoint-step", "7"]) == 2
    assert "checkpoint_step" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a count
        main(base + ["--checkpoint-step", "-1"])
    assert "--checkpoint-step: must be an integer, 0 or more" in capsys.readouterr().err


def test_a_run_written_without_a_step_still_resumes(trained, tmp_path, monkeypatch):
    """Runs written before steps were recorded: rerunning the same command must resume them, not fail on
    settings that no longer match."""
    import pipeline.generate as gen

    store = tmp_path / "s"
    args = ["generate", "--model", "demo", "--store", str(store), "--steps", "1", "--quiet",
            "--checkpoint", str(snapshot_path(trained, 2))]
    monkeypatch.setattr(gen, "checkpoint_step_of", lambda checkpoint: None)  # as the code before steps did
    assert main(args + ["--num-samples", "2"]) == 0
    monkeypatch.undo()
    assert main(args + ["--num-samples", "4"]) == 0
    runs = Store(store).runs()
    assert len(runs) == 1 and runs.num_done.tolist() == [4] and runs.checkpoint_step.isna().all()


@pytest.mark.parametrize(("ref", "step"), [
    ("hf://tianweiy/DMD2/model/imagenet/imagenet_gan_classifier_genloss3e-3_diffusion1000_lr5e-7_resume_fid1.28_"
     "checkpoint_model_548000", 548000),
    ("runs/imagenet_lr2e-6_scratch_fid2.61_checkpoint_model_405500/pytorch_model.bin", 405500),
    ("out/checkpoint-2000/model.safetensors", 2000),
    ("weights/demo_edm-step00250.safetensors", 250),
    ("ckpt_1000.pt", 1000),
    ("iter_300/model.safetensors", 300),
    ("shipped demo weights", None),
    ("runs/edit_5/fid1.28.safetensors", None),
    ("", None),
    (None, None),
])
def test_checkpoint_step_from_names(ref, step):
    assert checkpoint_step_of(ref) == step


def test_bad_snapshot_lists_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train-demo", "--out", str(tmp_path / "x.safetensors"), "--snapshots", "0,5"])
    assert "snapshot steps must be 1 or more" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_images_of_checkpoints_differ_but_each_is_deterministic(trained, tmp_path):
    store = tmp_path / "s"
    base = ["generate", "--model", "demo", "--store", str(store), "--num-samples", "2", "--steps", "1", "--quiet"]
    assert main(base + ["--checkpoint", str(snapshot_path(trained, 1)), "--run-name", "a"]) == 0
    assert main(base + ["--checkpoint", str(snapshot_path(trained, 1)), "--run-name", "b"]) == 0
    st = Store(store)
    a = st.images(st.samples(run_ids=["a"]).sort_values("index").sample_id.tolist())
    b = st.images(st.samples(run_ids=["b"]).sort_values("index").sample_id.tolist())
    assert a == b
    assert np.array_equal(st.checkpoint_runs("demo").checkpoint_step.to_numpy(dtype=int), [1, 1])


def test_a_snapshot_is_the_weights_at_its_step(tmp_path):
    """A snapshot at step 2 of a 3-step training is the final weights of the same training stopped at 2 (both
    in the warm-up, where the learning rate does not depend on the step count)."""
    from safetensors.torch import load_file

    from pipeline.demo_model import train_demo
    from tests.edm_fixtures import TINY_EDM

    tiny = {**TINY_EDM, "model_channels": 8, "channels_per_head": 8, "sigma_data": 0.5, "dropout": 0.0}
    kwargs = dict(config=tiny, batch_size=8, warmup=10, log_every=0, seed=4)
    long = train_demo(tmp_path / "long.safetensors", steps=3, snapshots=(2, 9), **kwargs)
    short = train_demo(tmp_path / "short.safetensors", steps=2, snapshots=(), **kwargs)
    assert [s for s, _ in snapshots_of(long)] == [2]  # a snapshot past the last step is not written
    snap, final, other = (load_file(p) for p in (snapshot_path(long, 2), short, long))
    assert all(np.array_equal(snap[k].numpy(), final[k].numpy()) for k in snap)
    assert any(not np.array_equal(snap[k].numpy(), other[k].numpy()) for k in snap)
