"""First start: the demo build reports every batch (the app's progress bar moves), and it caches the map the
app opens on, so the first map needs no fit."""

from __future__ import annotations

import pytest

from pipeline.demo import build_demo_store
from pipeline.project import ProjectionParams, Projector
from store import Store


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-start")
    batches, maps = [], []
    runs = build_demo_store(root, samples_per_class=4, batch_size=10, progress=False,
                            on_batch=lambda done, total: batches.append((done, total)),
                            on_map=lambda i, n, layer: maps.append((i, n, layer)))
    return root, runs, batches, maps


def test_every_batch_is_reported_even_without_a_progress_bar(demo):
    _, runs, batches, _ = demo
    assert len(runs) == 2
    # two runs of 40 samples in batches of 10: 10, 20, 30, 40 each (and 40 again when the run closes)
    per_run = [b for b in batches if b[1] == 40]
    assert [d for d, _ in per_run if d < 40] == [10, 20, 30, 10, 20, 30]
    assert all(d <= t for d, t in batches) and batches[-1] == (40, 40)


def test_the_map_the_app_opens_on_is_cached_by_the_build(demo, monkeypatch):
    from app import data
    from app.state import ViewSettings
    from pipeline.methods import umap as U

    root, _, _, maps = demo
    store = Store(root)
    assert [m[2] for m in maps] == store.layers("demo") and maps[0][:2] == (0, len(store.layers("demo")))
    # the app's default view asks for exactly these parameters, at the last step, for all runs
    assert ProjectionParams.coerce(data.projection_params(ViewSettings())) == ProjectionParams()
    monkeypatch.setattr(U, "umap_layout", lambda *a, **k: pytest.fail("the first map needed a fit"))
    for layer in store.layers("demo"):
        assert Projector().project(store, "demo", layer, None, ProjectionParams()).source == "cache"


def test_the_app_build_names_its_stage(tmp_path):
    from app.ui import DemoBuild

    build = DemoBuild()
    build._on_batch(300, 1500)
    assert (build.done, build.total, build.stage) == (300, 1500, "")
    build._on_map(1, 3, "midblock")
    assert build.stage == "computing the first maps · midblock (2 of 3)"
