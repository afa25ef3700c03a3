"""Stale caches: what `store.derived` calls stale after data changes, what `prune` removes, what it keeps
(current caches, the latest map of a lineage, caches of other runs), caches of the old layout, and the
`prune-cache` command."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline import features as F
from pipeline.compare import layer_similarity
from pipeline.methods import umap as U
from pipeline.project import ProjectionParams, Projector
from store import Store
from tests.feature_fixtures import write_clustered_run

PARAMS = ProjectionParams(feature="full+pca5", n_neighbors=10, min_dist=0.1)


def scan(st):
    return st.derived.scan()


def prune(st):
    return st.derived.prune()


def stale_kinds(st) -> Counter:
    return Counter(f.kind for f in scan(st) if f.stale)


@pytest.fixture(autouse=True)
def _fresh_memory():
    F.FEATURE_CACHE.clear()
    yield
    F.FEATURE_CACHE.clear()


def test_appending_makes_old_caches_stale_and_prune_removes_only_them(tmp_path, monkeypatch):
    write_clustered_run(tmp_path, range(120))
    st = Store(tmp_path)
    first = Projector().project(st, "demo", "mid", 0, PARAMS)
    layer_similarity(st, "demo", ["mid", "enc"], step=0)
    files = scan(st)
    assert {f.kind for f in files} == {"projection", "features", "knn", "lineage", "family", "compare"}
    assert not [f for f in files if f.stale], [(f.path.name, f.why) for f in files]

    write_clustered_run(tmp_path, range(120, 180))  # 60 samples appended: a new data version
    by_kind = {f.kind: f for f in scan(st)}
    assert stale_kinds(st) == Counter(features=1, knn=1, compare=1)
    assert not by_kind["projection"].stale and "latest map of its lineage" in by_kind["projection"].why
    assert "changed since" in by_kind["knn"].why

    placed = Projector().project(st, "demo", "mid", 0, PARAMS)  # placed into the kept map, no refit
    assert placed.source == "transform" and placed.meta["base_key"] == first.key
    before = sum(f.bytes for f in scan(st))
    removed = prune(st)
    assert Counter(f.kind for f in removed) == Counter(projection=1, family=1, features=1, knn=1, compare=1)
    assert first.key in {f.path.stem for f in removed} and not any(f.path.exists() for f in removed)
    assert sum(f.bytes for f in scan(st)) == before - sum(f.bytes for f in removed)
    assert not [f for f in scan(st) if f.stale]

    monkeypatch.setattr(U, "umap_layout", lambda *a, **k: pytest.fail("the current map was pruned"))
    again = Projector().project(st, "demo", "mid", 0, PARAMS)  # a fresh process: still a cache hit
    assert again.source == "cache" and again.key == placed.key


def test_maps_of_other_runs_stay_current_when_a_run_is_added(tmp_path):
    write_clustered_run(tmp_path, range(120), run_id="r1")
    st = Store(tmp_path)
    Projector().project(st, "demo", "mid", 0, PARAMS, run_ids=["r1"])
    write_clustered_run(tmp_path, range(120), run_id="r2")
    assert not [f for f in scan(st) if f.stale]
    assert prune(st) == []


def test_old_layout_caches_are_pruned_never_read_and_unreadable_ones_removed(tmp_path, monkeypatch):
    write_clustered_run(tmp_path, range(60))
    st = Store(tmp_path)
    proj = Projector().project(st, "demo", "mid", 0, PARAMS)
    # the same map under the layout before caches/, as a store written before this version holds it
    old = tmp_path / f"projections/model=demo/layer=mid/{proj.key}.parquet"
    old.parent.mkdir(parents=True)
    (tmp_path / f"caches/projection/model=demo/layer=mid/{proj.key}.parquet").rename(old)
    pointer = tmp_path / "derived/compare/model=demo/cka-0123.parquet"
    pointer.parent.mkdir(parents=True)
    pointer.write_bytes(b"whatever an older version wrote")
    broken = tmp_path / "caches/knn/model=demo/layer=mid/s0-broken.parquet"
    broken.write_bytes(b"not parquet")
    files = {f.path: f for f in scan(st)}
    assert files[old].stale and files[old].why == "written by an older cache layout"
    assert files[pointer].stale and files[broken].stale and files[broken].why.startswith("unreadable")
    # never misread: a fresh process recomputes the map rather than reading the old file
    fits = []
    real = U.umap_layout
    monkeypatch.setattr(U, "umap_layout", lambda *a, **k: fits.append(1) or real(*a, **k))
    again = Projector().project(st, "demo", "mid", 0, PARAMS)
    assert again.key == proj.key and again.source in ("fit", "warm") and fits
    assert {old, pointer, broken} <= {f.path for f in prune(st)}
    assert not old.exists() and not pointer.exists() and not broken.exists()


def test_cli_lists_then_removes(tmp_path, capsys):
    from pipeline.__main__ import main

    write_clustered_run(tmp_path, range(120))
    Projector().project(Store(tmp_path), "demo", "mid", 0, PARAMS)
    write_clustered_run(tmp_path, range(120, 180))
    Projector().project(Store(tmp_path), "demo", "mid", 0, PARAMS, refit=True)  # a new lineage head
    assert main(["prune-cache", "--store", str(tmp_path), "--dry-run", "-v"]) == 0
    out = capsys.readouterr().out
    assert "would remove 4 of " in out and "family" in out and out.count("STALE ") == 4
    assert len([f for f in scan(Store(tmp_path)) if f.stale]) == 4  # a dry run removes nothing
    assert main(["prune-cache", "--store", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("removed 4 of ")
    assert not [f for f in scan(Store(tmp_path)) if f.stale]
    assert main(["prune-cache", "--store", str(tmp_path / "nope")]) == 2
