"""pipeline.run_pairs and Projector.project_runs: steps per run, linked samples, default runs, the checkpoint
plan, and one joint map of runs at different steps (the Compare runs page's engine)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import run_pairs as rp

N = 40  # samples per run: 4 per class


def _write(root, run_id, steps, *, kind=None, checkpoint_step=None, shift=0.0, tag_step=None, n=N, seed=7):
    """A run of model "m" on layer "L": class c's samples around centre c (+ `shift`), seeds 1000 + i, one
    activation per recorded step (the value of step s adds s). `tag_step`: a real run's single step number."""
    from store import RunWriter

    settings = {"steps": len(steps), "sigmas": list(steps)}
    if kind:
        settings["kind"] = kind
    if checkpoint_step is not None:
        settings["checkpoint_step"] = checkpoint_step
    manifest = dict(run_id=run_id, model="m", family="synthetic", checkpoint="x", checkpoint_sha256="x",
                    layers=["L"], seed=1, num_samples=n, reduce={"L": "mean"}, settings=settings)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    centres = np.random.default_rng(0).normal(0, 5, size=(10, 6))
    samples = [dict(seed=1000 + i, class_id=int(c), class_name=f"c{c}", category=f"c{c}", label=f"{c}: c{c}",
                    num_steps=len(steps)) for i, c in enumerate(labels)]
    images = [np.full((4, 4, 3), 9 * int(c), np.uint8) for c in labels]
    step_numbers = [tag_step] if tag_step is not None else range(len(steps))
    acts = {"L": [dict(step=int(s), timestep=None, sigma=float(sig), reduce="mean", layer_shape=(6, 2, 2),
                       array=(centres[labels] + shift + s + rng.normal(0, 0.3, (n, 6))).astype(np.float32))
                  for s, sig in zip(step_numbers, steps, strict=True)]}
    with RunWriter(root, manifest) as w:
        w.write_batch(np.arange(n), samples, images, acts)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from store import Store

    root = tmp_path_factory.mktemp("pairs") / "store"
    _write(root, "gen", (10.0, 1.0))  # 2 steps
    _write(root, "one", (10.0,), shift=3.0)  # 1 step
    _write(root, "real", (1.0,), kind="real", tag_step=1)  # real images tagged at step 1
    _write(root, "ck-200", (10.0, 1.0), checkpoint_step=200, shift=1.0)
    _write(root, "ck-100", (10.0, 1.0), checkpoint_step=100, shift=2.0)
    return Store(root)


def test_run_steps_and_resolution(store):
    table = rp.run_steps(store, "m", "L")
    got = {r: sorted(g["step"]) for r, g in table.groupby("run_id")}
    assert got == {"gen": [0, 1], "one": [0], "real": [1], "ck-100": [0, 1], "ck-200": [0, 1]}
    assert table.loc[(table.run_id == "gen") & (table.step == 1), "sigma"].item() == pytest.approx(1.0)
    assert rp.resolve_run_steps(store, "m", "L", {"gen": "last", "one": None, "real": -1}) == \
        {"gen": 1, "one": 0, "real": 1}
    assert rp.resolve_run_steps(store, "m", "L", {"gen": 0, "one": 0}) == {"gen": 0, "one": 0}
    with pytest.raises(rp.RunPairsError, match=r"run 'real' did not record step 0 of 'L'; its steps: \[1\]"):
        rp.resolve_run_steps(store, "m", "L", {"gen": 0, "real": 0})
    with pytest.raises(rp.RunPairsError, match="'nope' has no activations"):
        rp.resolve_run_steps(store, "m", "L", {"nope": None})
    with pytest.raises(rp.RunPairsError, match="counts back further"):
        rp.resolve_run_steps(store, "m", "L", {"one": -2})
    assert rp.shared_steps(table, ["gen", "ck-100"]) == [0, 1]
    assert rp.shared_steps(table, ["gen", "one", "real"]) == []


def test_link_groups_pair_seed_and_class_but_not_real_images(store):
    samples = store.samples(model="m")
    kinds = store.run_kinds()
    groups = rp.link_groups(samples, ["real", "gen", "ck-100"], kinds)
    assert len(groups) == N  # every seed, once; the real run is left out although its seeds match
    assert groups[0] == ["gen-00000000", "ck-100-00000000"]
    assert all(not any(s.startswith("real-") for s in g) for g in groups)
    # a sample of another class under the same seed is not linked
    other = samples.copy()
    flip = other["sample_id"] == "ck-100-00000003"
    other.loc[flip, "class_id"] = 9
    groups = rp.link_groups(other, ["gen", "ck-100"], kinds)
    assert len(groups) == N - 1 and ["gen-00000003", "ck-100-00000003"] not in groups
    assert rp.link_groups(samples, ["real", "gen"], kinds) == []  # one linkable run: nothing to link


def test_default_runs_put_real_first_and_checkpoints_in_training_order(store):
    runs = rp.default_runs(store.runs(), store.run_kinds(), ["gen", "one", "real", "ck-200", "ck-100"])
    assert runs == ["real", "gen", "one", "ck-100", "ck-200"]


def test_checkpoint_plan(store):
    plan = rp.checkpoint_plan(["real", "gen", "ck-200", "ck-100"], store.checkpoint_runs("m"))
    assert plan.fixed == ("real", "gen") and plan.sequence == ("ck-100", "ck-200") and plan.steps == (100, 200)
    assert plan.active and plan.positions == ("ck-100", "ck-200")
    assert plan.runs_at(0) == ["real", "gen", "ck-100"] and plan.runs_at(1) == ["real", "gen", "ck-200"]
    alone = rp.checkpoint_plan(["ck-200", "ck-100"], store.checkpoint_runs("m"))
    assert alone.positions == ("ck-200",) and alone.runs_at(0) == ["ck-100", "ck-200"]  # the first is the reference
    assert not alone.active  # one position: nothing to slide over
    assert not rp.checkpoint_plan(["gen", "ck-100"], store.checkpoint_runs("m")).active


def test_project_runs_fits_one_map_over_each_runs_own_step(store):
    from pipeline.features import load_features
    from pipeline.methods import get_method
    from pipeline.project import PER_RUN, Projector

    steps = {"gen": None, "one": None, "real": None}
    proj = Projector().project_runs(store, "m", "L", steps, {"method": "pca"})
    assert proj.step == PER_RUN and proj.meta["run_steps"] == {"gen": 1, "one": 0, "real": 1}
    ids = list(proj.sample_ids)
    assert len(ids) == 3 * N and len(set(ids)) == 3 * N
    # exactly the PCA of each run's vectors at its own step, stacked (runs in sorted order)
    X = np.concatenate([load_features(store, "m", "L", s, "full", [r]).X
                        for r, s in sorted({"gen": 1, "one": 0, "real": 1}.items())])
    expected = get_method("pca")().fit_transform(X)
    assert np.allclose(np.abs(proj.xy), np.abs(expected), atol=1e-4)
    # the 1-step run sits where its step puts it: shifted by 3 - 1 = 2 from the generated run's step 1
    frame = proj.frame().set_index("sample_id")
    assert frame.loc["one-00000000"].tolist() != frame.loc["gen-00000000"].tolist()
    # cached in the store: a fresh projector reads it back; a map of one step has another key
    again = Projector().project_runs(store, "m", "L", steps, {"method": "pca"})
    assert again.source == "cache" and again.key == proj.key and np.array_equal(again.xy, proj.xy)
    assert again.step == PER_RUN


def test_project_runs_on_one_shared_step_is_the_ordinary_map(store):
    from pipeline.project import ProjectionError, Projector

    p = Projector()
    shared = p.project_runs(store, "m", "L", {"gen": 0, "ck-100": 0}, {"method": "pca"})
    plain = p.project(store, "m", "L", 0, {"method": "pca"}, run_ids=["gen", "ck-100"])
    assert shared.key == plain.key and shared.step == 0
    last = p.project_runs(store, "m", "L", {"gen": None, "real": None}, {"method": "pca"})
    assert last.step == 1 and sorted({s.rsplit("-", 1)[0] for s in last.sample_ids}) == ["gen", "real"]
    with pytest.raises(ProjectionError, match="did not record step 0"):
        p.project_runs(store, "m", "L", {"gen": 0, "real": 0}, {"method": "pca"})


def test_map_figure_and_png(store):
    from pipeline.project import Projector

    proj = Projector().project_runs(store, "m", "L", {"gen": None, "ck-100": None}, {"method": "pca"})
    samples = store.samples(model="m").set_index("sample_id").loc[list(proj.sample_ids)].reset_index()
    groups = rp.link_groups(samples, ["gen", "ck-100"], store.run_kinds())
    fig = rp.map_figure(proj.xy, samples, ["gen", "ck-100"], "t", links=groups)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 1 and fig.data[0] is lines[0]  # under the points
    assert sum(v is None for v in lines[0].x) == N  # one polyline per linked pair
    assert [t.name for t in fig.data[1:]] == ["gen", "ck-100"]
    png = rp.map_png(proj.xy, samples, ["gen", "ck-100"], "title", "sub")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(rp.RunPairsError, match="not in"):
        rp.map_png(proj.xy, samples, ["gen"], "title")


def test_class_column():
    assert rp.class_column(pd.DataFrame({"prompt": [None, None], "label": ["a", "b"]})) == "label"
    assert rp.class_column(pd.DataFrame({"prompt": ["x", None], "label": ["a", "b"]})) == "category"


def test_over_training_is_each_checkpoints_overall_row(store):
    from pipeline.distribution import compare_runs

    plan = rp.checkpoint_plan(["real", "ck-200", "ck-100"], store.checkpoint_runs("m"))
    got = rp.over_training(store, "m", "L", plan, k=3)
    assert got["checkpoint_step"].tolist() == [100, 200] and got["run_b"].tolist() == ["ck-100", "ck-200"]
    for _, row in got.iterrows():
        want = compare_runs(store, "m", "L", ["real", row["run_b"]], k=3)
        assert row["fd"] == pytest.approx(want.loc[want["class"] == "all", "fd"].item())
    # ck-200 sits nearer the real run (shift 1 against 2): a smaller Fréchet distance
    assert got["fd"].iloc[1] < got["fd"].iloc[0]
