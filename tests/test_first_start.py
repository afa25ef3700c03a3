"""First start: the demo build reports every batch (the app's progress bar moves), and it caches the map the
app opens on, so the first map needs no fit. The extra runs (real digits, the distilled student, the 18-step
teacher, and the 1-step runs' and the teacher's outputs encoded like the real digits) come after that first map
is ready, each with its own progress, in order (an encoded run after the run it reads), and each is moved into
the store whole; the cached maps then hold them too."""

from __future__ import annotations

import pytest

from pipeline.demo import (
    DEMO_ENCODED_RUNS,
    DEMO_EXTRAS,
    DEMO_REAL_RUN,
    DEMO_STUDENT_RUN,
    DEMO_TEACHER_RUN,
    STAGING,
    build_demo_extras,
    build_demo_store,
)
from pipeline.project import ProjectionParams, Projector
from store import Store


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-start")
    batches, maps, events = [], [], []

    def on_batch(done, total):
        batches.append((done, total))
        events.append("batch")

    def on_map(i, n, layer):
        maps.append((i, n, layer))
        events.append("map")

    runs = build_demo_store(root, samples_per_class=4, batch_size=10, progress=False, on_batch=on_batch,
                            on_map=on_map, extras=True, on_ready=lambda ids: events.append(("ready", tuple(ids))),
                            on_extra=lambda run, done, total: events.append(("extra", run, done, total)))
    return root, runs, batches, maps, events


def test_every_batch_is_reported_even_without_a_progress_bar(demo):
    _, runs, batches, _, _ = demo
    assert runs == ["demo-multistep", "demo-1step", DEMO_REAL_RUN, DEMO_STUDENT_RUN, "demo-1step-encoded",
                    "demo-student-encoded", DEMO_TEACHER_RUN, "demo-teacher-encoded"]
    # two runs of 40 samples in batches of 10: 10, 20, 30, 40 each (and 40 again when the run closes)
    per_run = [b for b in batches if b[1] == 40]
    assert [d for d, _ in per_run if d < 40] == [10, 20, 30, 10, 20, 30]
    assert all(d <= t for d, t in batches) and batches[-1] == (40, 40)


def test_the_real_digits_come_after_the_first_maps_with_their_own_progress(demo):
    from pipeline.demo_model import digits_dataset
    from store.verify import verify

    root, _, _, _, events = demo
    ready = events.index(("ready", ("demo-multistep", "demo-1step")))
    assert "map" in events[:ready] and "map" not in events[ready:] and "batch" not in events[ready:]
    extras = events[ready + 1:]
    assert all(e[0] == "extra" and e[3] == 40 for e in extras)
    order = list(DEMO_EXTRAS)
    assert [e[1] for e in extras] == sorted((e[1] for e in extras), key=order.index)
    for source, encoded in DEMO_ENCODED_RUNS.items():  # an encoded run is built after the run it reads
        assert source in ("demo-1step", *order[:order.index(encoded)])
    for run in order:  # each run's own progress, batch by batch, to its end
        done = [e[2] for e in extras if e[1] == run]
        assert sorted(set(done)) == [10, 20, 30, 40] and done == sorted(done)
    store = Store(root)
    frame = store.samples(run_ids=[DEMO_REAL_RUN])
    _, labels = digits_dataset(16)
    assert frame["class_id"].tolist() == labels[:40].tolist() and set(frame["run_kind"]) == {"real"}
    assert store.manifest(DEMO_REAL_RUN)["status"] == "complete"
    assert store.steps("demo", "midblock").query("step == 3")["sigma"].tolist() == [pytest.approx(0.002)]
    for source, encoded in DEMO_ENCODED_RUNS.items():  # a 1-step run's outputs, at the real digits' step 3
        frame = store.samples(run_ids=[encoded])
        assert set(frame["run_kind"]) == {"encoded"} and store.manifest(encoded)["status"] == "complete"
        assert frame["source_sample_id"].tolist() == store.samples(run_ids=[source])["sample_id"].tolist()
        acts = store.activations("demo", "midblock", step=3, run_ids=[encoded])
        assert len(acts.sample_ids) == 40
    assert not (root / STAGING).exists() and verify(root).ok  # built aside, moved in whole, nothing left over


def test_the_map_the_app_opens_on_is_cached_by_the_build(demo, monkeypatch):
    from app import data
    from app.state import ViewSettings
    from pipeline.features import default_step
    from pipeline.methods import umap as U

    root, _, _, maps, _ = demo
    store = Store(root)
    assert [m[2] for m in maps] == store.layers("demo") and maps[0][:2] == (0, len(store.layers("demo")))
    # the app's default view asks for exactly these parameters, at the step most runs share, for all runs
    assert ProjectionParams.coerce(data.projection_params(ViewSettings())) == ProjectionParams()
    monkeypatch.setattr(U, "umap_layout", lambda *a, **k: pytest.fail("the first map needed a fit"))
    for layer in store.layers("demo"):
        step = default_step(store.steps("demo", layer))
        assert step == 3  # not the teacher's step 17, which it records alone
        proj = Projector().project(store, "demo", layer, step, ProjectionParams())
        assert proj.source == "cache"
        # that map holds the multi-step run's samples, the real digits and the encoded 1-step and teacher
        # outputs, recorded at that step
        assert sum(s.startswith(DEMO_REAL_RUN) for s in proj.sample_ids) == 40 and len(proj.sample_ids) == 200
        assert all(sum(s.startswith(f"{run}-0") for s in proj.sample_ids) == 40 for run in DEMO_ENCODED_RUNS.values())
    # the first maps' caches, of the data before the extra runs, are gone; nothing left is stale
    assert not [e.path.name for e in store.derived.scan() if e.stale]


def test_a_second_build_of_the_extras_adds_nothing(demo):
    root, _, _, _, _ = demo
    before = Store(root).samples(columns=["sample_id"])["sample_id"].tolist()
    assert build_demo_extras(root, samples_per_class=4, batch_size=10, progress=False,
                             maps=False) == [DEMO_REAL_RUN, DEMO_STUDENT_RUN, "demo-1step-encoded",
                                             "demo-student-encoded", DEMO_TEACHER_RUN, "demo-teacher-encoded"]
    assert Store(root).samples(columns=["sample_id"])["sample_id"].tolist() == before


def test_the_app_build_names_its_stage(tmp_path):
    from app.ui import EXTRA_RUN_TITLES, DemoBuild

    build = DemoBuild(extras_grace_s=0.0)
    build._on_batch(300, 1500)
    assert (build.done, build.total, build.stage) == (300, 1500, "")
    build._on_map(1, 3, "midblock")
    assert build.stage == "computing the first maps · midblock (2 of 3)"
    assert not build.ready
    build._on_ready(["demo-multistep", "demo-1step"])
    assert build.extra_label() == "adding runs for comparison · starting"  # no count known yet: no "0 / ?"
    build._on_extra(DEMO_REAL_RUN, 500, 1500)
    assert build.ready and build.extra_label() == "adding real digits for comparison · 500 / 1,500"
    build._on_extra("demo-student-encoded", 1500, 1500)
    assert build.extra_label() == "placing the student digits at the real digits' noise level (σ 0.002) on the maps"
    build._on_extra(DEMO_TEACHER_RUN, 100, 1500)
    assert build.extra_label() == "adding digits of the 18-step teacher (EDM's Heun sampler) for comparison · 100 / 1,500"
    assert set(DEMO_EXTRAS) <= set(EXTRA_RUN_TITLES)  # every extra run is named by its title, not its id


def test_real_digits_lie_among_generated_digits_of_their_class(demo):
    """In the shared space of the last step, the generated neighbours of a real digit are of its class (chance:
    0.1); the full-size demo store gives 0.99 at the bottleneck and 0.995 at the middle block (k = 10)."""
    from sklearn.neighbors import NearestNeighbors

    store = Store(demo[0])
    acts = store.activations("demo", "encoder_bottleneck", step=3)
    meta = store.samples(sample_ids=list(acts.sample_ids), columns=["sample_id", "run_kind", "class_id"])
    meta = meta.set_index("sample_id").loc[acts.sample_ids]
    real, labels = (meta["run_kind"] == "real").to_numpy(), meta["class_id"].to_numpy()
    gen = (meta["run_kind"] == "generated").to_numpy()  # the 4-step run's samples (not the encoded 1-step runs')
    assert real.sum() == 40 and gen.sum() == 40
    _, idx = NearestNeighbors(n_neighbors=3).fit(acts.matrix[gen]).kneighbors(acts.matrix[real])
    assert (labels[gen][idx] == labels[real][:, None]).mean() >= 0.7
