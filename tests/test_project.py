"""Projections: cache keys, cache hits, min_dist warm start, kNN reuse, placement of appended samples, errors.

One module-scoped store and a handful of real (small) UMAP fits; numba compiles once per test session.
"""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import pytest

from pipeline import features as F
from pipeline import project as P
from pipeline.features import FeatureSpec
from pipeline.methods import umap as U
from pipeline.project import ProjectionError, ProjectionParams, Projector, projection_key
from store import Store
from tests.feature_fixtures import class_of, write_clustered_run

N = 240
SPLIT = (np.flatnonzero(np.arange(N) % 3 != 0), np.flatnonzero(np.arange(N) % 3 == 0))  # every class in both
PARAMS = ProjectionParams(feature="full", n_neighbors=10, min_dist=0.1)


def map_accuracy(xy: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """How well the map keeps the classes apart: 5-NN classification of `test` points by `train` points."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(5).fit(xy[train], labels[train])
    return float((clf.predict(xy[test]) == labels[test]).mean())


class Spy:
    """Wraps a function: counts calls and remembers their keyword arguments; `fail` makes calls an error."""

    def __init__(self, fn, fail: str | None = None):
        self.fn, self.fail, self.calls = fn, fail, []

    def __call__(self, *args, **kwargs):
        self.calls.append(kwargs)
        if self.fail:
            raise AssertionError(self.fail)
        return self.fn(*args, **kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("project-store")
    write_clustered_run(root, range(N))
    return Store(root)


@pytest.fixture(scope="module")
def fitted(store):
    """(projector, projection) of the first fit: shared by the reuse tests."""
    F.FEATURE_CACHE.clear()
    projector = Projector()
    seen = []
    proj = projector.project(store, "demo", "mid", 1, PARAMS, progress=lambda f, m: seen.append((f, m)))
    assert seen and seen[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in seen)
    return projector, proj


# -- keys ----------------------------------------------------------------------------------------------------

def test_projection_key_changes_with_every_input():
    base = projection_key("v1", "demo", "mid", 0, PARAMS, "all")
    assert base == projection_key("v1", "demo", "mid", 0, ProjectionParams.coerce(PARAMS.to_dict()), "all")
    assert base.startswith("s0-full-nn10-md0.1-euclidean-seed0-umap-")
    variants = [
        projection_key("v2", "demo", "mid", 0, PARAMS, "all"),  # data version: appended samples
        projection_key("v1", "demo2", "mid", 0, PARAMS, "all"),
        projection_key("v1", "demo", "enc", 0, PARAMS, "all"),
        projection_key("v1", "demo", "mid", 1, PARAMS, "all"),
        projection_key("v1", "demo", "mid", 0, PARAMS, "f123"),
    ]
    for change in [dict(feature="mean"), dict(feature=FeatureSpec("full", pca=5)),
                   dict(feature=FeatureSpec("full", standardize=True)), dict(n_neighbors=11),
                   dict(min_dist=0.2), dict(metric="cosine"), dict(seed=1), dict(seed=None),
                   dict(backend="cuml")]:
        variants.append(projection_key("v1", "demo", "mid", 0, ProjectionParams.coerce(PARAMS, **change), "all"))
    assert len({base, *variants}) == len(variants) + 1
    for key in [base, *variants]:
        assert len(key) <= 200 and key.replace("-", "").replace(".", "").replace("+", "").isalnum()


def test_appended_samples_change_the_key(tmp_path):
    write_clustered_run(tmp_path, range(20), batch_size=10)
    st = Store(tmp_path)
    v1 = st.data_version("demo", "mid")
    write_clustered_run(tmp_path, range(20, 30), batch_size=10)
    v2 = st.data_version("demo", "mid")
    assert v1 != v2
    assert projection_key(v1, "demo", "mid", 0, PARAMS) != projection_key(v2, "demo", "mid", 0, PARAMS)


@pytest.mark.parametrize("params, words", [
    (dict(n_neighbors=1), ["n_neighbors", "2 to 200"]),
    (dict(n_neighbors=10.5), ["n_neighbors"]),
    (dict(min_dist=1.5), ["min_dist", "0 to 1"]),
    (dict(min_dist="far"), ["min_dist"]),
    (dict(metric="hamming"), ["unknown metric", "euclidean", "cosine"]),
    (dict(seed=-1), ["seed"]),
    (dict(backend="tpu"), ["unknown backend", "umap", "cuml"]),
    (dict(feature="median"), ["unknown feature"]),
    (dict(neighbours=5), ["unknown projection parameters", "n_neighbors"]),
])
def test_bad_parameters_are_clear_errors(params, words):
    with pytest.raises(ProjectionError) as e:
        ProjectionParams.coerce(params)
    for w in words:
        assert w in str(e.value)


def test_params_from_app_dict_and_merge_pca():
    p = ProjectionParams.coerce({"feature": "pca", "n_neighbors": 20, "min_dist": 0.3, "metric": "cosine"})
    assert p.feature == FeatureSpec("full", pca=50) and p.metric == "cosine" and p.seed == 0
    p = ProjectionParams.coerce({"feature": "mean", "pca": 8, "standardize": True})
    assert p.feature == FeatureSpec("mean", pca=8, standardize=True)
    assert ProjectionParams.from_dict(p.to_dict()) == p


# -- fit and cache -------------------------------------------------------------------------------------------

def test_fit_result_and_stored_params(fitted, store):
    _, proj = fitted
    assert proj.source == "fit" and len(proj) == N and proj.xy.shape == (N, 2)
    assert np.isfinite(proj.xy).all()
    labels = class_of(proj.sample_ids)
    assert map_accuracy(proj.xy, labels, *SPLIT) > 0.95
    assert 0.8 < proj.quality["trustworthiness"] <= 1 and 0 < proj.quality["knn_overlap"] <= 1
    table, meta = store.derived.read("projection", "demo", "mid", proj.key)
    frame = table.to_pandas()
    assert list(frame.columns[:3]) == ["sample_id", "x", "y"] and len(frame) == N
    assert meta["params"] == PARAMS.to_dict() and meta["data_version"] == store.data_version("demo", "mid")
    assert meta["source"] == "fit" and meta["step"] == 1 and meta["feature_resolved"]["kind"] == "full"


def test_cache_hit_never_recomputes(fitted, store, monkeypatch):
    projector, proj = fitted
    for module, name in ((P, "compute_knn"), (P, "load_features"), (U, "umap_layout"), (U, "place_points")):
        monkeypatch.setattr(module, name, Spy(None, fail=f"{name} called on a cache hit"))
    again = projector.project(store, "demo", "mid", 1, PARAMS.to_dict())
    assert again.source == "cache" and again.key == proj.key
    np.testing.assert_array_equal(again.xy, proj.xy)
    fresh = Projector().project(store, "demo", "mid", 1, PARAMS)  # a new process: from the store
    assert fresh.source == "cache" and fresh.quality == proj.quality
    np.testing.assert_array_equal(fresh.sample_ids, proj.sample_ids)
    np.testing.assert_allclose(fresh.xy, proj.xy)


def test_min_dist_change_warm_starts_from_the_current_map(fitted, store, monkeypatch):
    projector, proj = fitted
    monkeypatch.setattr(P, "compute_knn", Spy(None, fail="kNN recomputed for a min_dist change"))
    layout = Spy(U.umap_layout)
    monkeypatch.setattr(U, "umap_layout", layout)
    warm = projector.project(store, "demo", "mid", 1, ProjectionParams.coerce(PARAMS, min_dist=0.6))
    assert warm.source == "warm" and warm.meta["warm_from"] == proj.key
    (call,) = layout.calls
    np.testing.assert_array_equal(call["init"], proj.xy)
    assert call["n_epochs"] == P.warm_epochs(N) < 500
    labels = class_of(warm.sample_ids)
    assert map_accuracy(warm.xy, labels, *SPLIT) > 0.95
    # larger min_dist spreads points: the mean distance to the nearest point, relative to the map's size, grows
    def spacing(xy):
        from sklearn.neighbors import NearestNeighbors

        d, _ = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(xy)
        return d[:, 1].mean() / np.ptp(xy, axis=0).mean()

    assert spacing(warm.xy) > spacing(proj.xy)
    # a fresh process finds the latest map of this family in the store and warm-starts from it too
    again = Projector().project(store, "demo", "mid", 1, ProjectionParams.coerce(PARAMS, min_dist=0.3))
    assert again.source == "warm" and again.meta["warm_from"] == warm.key


def test_n_neighbors_at_or_below_cached_k_reuses_the_knn(fitted, store, monkeypatch):
    _, proj = fitted
    monkeypatch.setattr(P, "compute_knn", Spy(None, fail="kNN recomputed though a larger one is cached"))
    # a fresh projector: the kNN graph comes from the store, sliced to 5 columns
    p5 = Projector().project(store, "demo", "mid", 1, ProjectionParams.coerce(PARAMS, n_neighbors=5))
    assert p5.source == "fit" and p5.key != proj.key and np.isfinite(p5.xy).all()
    # more neighbours than cached (KNN_MIN_K = 15): computed once, then saved
    monkeypatch.undo()
    compute = Spy(P.compute_knn)
    monkeypatch.setattr(P, "compute_knn", compute)
    fake_layout = Spy(lambda X, idx, dist, params, init=None, n_epochs=None, progress=None: X[:, :2].copy())
    monkeypatch.setattr(U, "umap_layout", fake_layout)
    p20 = Projector().project(store, "demo", "mid", 1, ProjectionParams.coerce(PARAMS, n_neighbors=20))
    assert p20.source == "fit" and len(compute.calls) == 1
    Projector().project(store, "demo", "mid", 1, ProjectionParams.coerce(PARAMS, n_neighbors=18))
    assert len(compute.calls) == 1  # 18 <= 20 cached


def test_refit_recomputes(fitted, store, monkeypatch):
    projector, proj = fitted
    layout = Spy(lambda X, idx, dist, params, init=None, n_epochs=None, progress=None: X[:, :2].copy())
    monkeypatch.setattr(U, "umap_layout", layout)
    again = projector.project(store, "demo", "mid", 1, PARAMS, force=True)  # the app's spelling
    assert again.source == "fit" and len(layout.calls) == 1 and layout.calls[0].get("init") is None
    assert again.key == proj.key
    # put the real map back for the other tests of this module
    monkeypatch.undo()
    assert projector.project(store, "demo", "mid", 1, PARAMS, refit=True).source == "fit"


def test_concurrent_requests_for_one_key_compute_once(store, monkeypatch):
    import threading
    import time

    def slow_layout(X, idx, dist, params, init=None, n_epochs=None, progress=None):
        time.sleep(0.3)
        return X[:, :2].copy()

    layout = Spy(slow_layout)
    monkeypatch.setattr(U, "umap_layout", layout)
    projector = Projector()
    params = ProjectionParams.coerce(PARAMS, seed=7)
    results = []
    threads = [threading.Thread(target=lambda: results.append(projector.project(store, "demo", "enc", 0, params)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(layout.calls) == 1
    assert sorted(r.source for r in results) == ["cache", "cache", "fit"]
    assert len({r.key for r in results}) == 1


# -- appended samples ----------------------------------------------------------------------------------------

def test_appended_samples_are_placed_not_refit(tmp_path, monkeypatch):
    write_clustered_run(tmp_path, range(200))
    st = Store(tmp_path)
    first = Projector().project(st, "demo", "mid", 0, PARAMS)
    write_clustered_run(tmp_path, range(200, 260))  # 60 new samples in the same run
    layout = Spy(None, fail="refit although the new samples could be placed")
    monkeypatch.setattr(U, "umap_layout", layout)
    placed = Projector().project(st, "demo", "mid", 0, PARAMS)  # a fresh process finds the old map
    assert placed.source == "transform" and placed.key != first.key
    assert placed.meta["placed"] == 60 and placed.meta["base_key"] == first.key
    pos = {s: i for i, s in enumerate(placed.sample_ids)}
    old = np.array([pos[s] for s in first.sample_ids])
    np.testing.assert_array_equal(placed.xy[old], first.xy)  # old points do not move
    new = np.setdiff1d(np.arange(len(placed)), old)
    assert len(new) == 60 and np.isfinite(placed.xy).all()
    assert map_accuracy(placed.xy, class_of(placed.sample_ids), old, new) > 0.9
    assert st.derived.read("projection", "demo", "mid", placed.key)[1]["source"] == "transform"
    monkeypatch.undo()
    refit = Projector().project(st, "demo", "mid", 0, PARAMS, refit=True)
    assert refit.source == "fit" and refit.key == placed.key


def test_an_edits_handful_of_placed_samples_keeps_the_maps_quality_and_more_measure_it_again(tmp_path, monkeypatch):
    import pipeline.neighbors as nb

    write_clustered_run(tmp_path, range(200))
    st = Store(tmp_path)
    first = Projector().project(st, "demo", "mid", 0, PARAMS)
    measured = []
    real = nb.map_quality
    monkeypatch.setattr(nb, "map_quality", lambda *a, **k: measured.append(1) or real(*a, **k))
    write_clustered_run(tmp_path, range(200, 208))  # 8 new samples: an edit's results
    few = Projector().project(st, "demo", "mid", 0, PARAMS)
    assert few.source == "transform" and few.meta["placed"] == 8
    assert few.quality == first.quality and measured == []
    write_clustered_run(tmp_path, range(208, 260))  # 52 more: the figures are measured again
    more = Projector().project(st, "demo", "mid", 0, PARAMS)
    assert more.source == "transform" and more.meta["placed"] == 52 and measured == [1]


def test_new_samples_outnumbering_the_map_refit(tmp_path):
    write_clustered_run(tmp_path, range(30), batch_size=30)
    st = Store(tmp_path)
    params = ProjectionParams.coerce(PARAMS, n_neighbors=5)
    assert Projector().project(st, "demo", "mid", 0, params).source == "fit"
    write_clustered_run(tmp_path, range(30, 100), batch_size=70)
    assert Projector().project(st, "demo", "mid", 0, params).source == "fit"


# -- errors --------------------------------------------------------------------------------------------------

def test_request_errors_are_clear(store, fitted):
    projector, _ = fitted
    few = [f"r1-{i:08d}" for i in range(8)]
    with pytest.raises(ProjectionError, match=r"n_neighbors=10 .* has 8"):
        projector.project(store, "demo", "mid", 0, PARAMS, sample_ids=few)
    with pytest.raises(ProjectionError, match="empty"):
        projector.project(store, "demo", "mid", 0, PARAMS, sample_ids=[])
    with pytest.raises(ProjectionError, match="no samples match"):
        projector.project(store, "demo", "mid", 0, PARAMS, sample_ids=["zz-00000001"])
    with pytest.raises(ProjectionError, match="no samples match"):
        projector.project(store, "demo", "mid", 0, PARAMS, run_ids=["nope"])
    with pytest.raises(ProjectionError, match=r"unknown model 'nope'; valid: \['demo'\]"):
        projector.project(store, "nope", "mid", 0, PARAMS)
    with pytest.raises(ProjectionError, match=r"unknown layer 'deep'.*valid: \['mid', 'enc'\]"):
        projector.project(store, "demo", "deep", None, PARAMS)
    with pytest.raises(ProjectionError, match=r"step 7 not recorded.*valid steps: \[0, 1\]"):
        projector.project(store, "demo", "mid", 7, PARAMS)
    with pytest.raises(ProjectionError, match="cuML"):
        projector.project(store, "demo", "mid", 0, ProjectionParams.coerce(PARAMS, backend="cuml"))


def test_step_none_is_the_last_step(store, fitted):
    projector, proj = fitted
    assert projector.project(store, "demo", "mid", None, PARAMS).key == proj.key


# -- cuML plumbing (with stand-ins: no GPU here) ---------------------------------------------------------------

def test_cuml_backend_uses_cuml_for_knn_and_layout(store, monkeypatch):
    seen = {}

    class FakeNN:
        def __init__(self, n_neighbors, metric, output_type):
            seen["nn"] = (n_neighbors, metric, output_type)

        def fit(self, X):
            from sklearn.neighbors import NearestNeighbors

            self.nn = NearestNeighbors(n_neighbors=seen["nn"][0]).fit(X)
            return self

        def kneighbors(self, X):
            return self.nn.kneighbors(X)

    class FakeUMAP:
        def __init__(self, **kw):
            seen["umap"] = kw

        def fit_transform(self, X):
            return X[:, :2] * 2

    cuml = types.ModuleType("cuml")
    cuml.neighbors = types.SimpleNamespace(NearestNeighbors=FakeNN)
    cuml.manifold = types.SimpleNamespace(UMAP=FakeUMAP)
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cuml.neighbors", cuml.neighbors)
    monkeypatch.setitem(sys.modules, "cuml.manifold", cuml.manifold)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    params = ProjectionParams.coerce(PARAMS, backend="cuml", metric="cosine")
    proj = Projector().project(store, "demo", "mid", 0, params)
    assert proj.source == "fit" and "-cuml-" in proj.key
    assert seen["nn"] == (15, "euclidean", "numpy")  # cosine searched on unit rows
    knn_i, knn_d = seen["umap"]["precomputed_knn"]
    assert knn_i.shape == (N, 10) and seen["umap"]["metric"] == "cosine" and seen["umap"]["min_dist"] == 0.1
    assert np.all(knn_d >= 0) and np.all(knn_d <= 2)  # cosine distances
    assert Projector().project(store, "demo", "mid", 0, params).source == "cache"  # the same cache
    cupy.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(ProjectionError, match="CUDA device"):
        Projector().project(store, "demo", "mid", 0, ProjectionParams.coerce(params, seed=5))


# -- CLI and warm-up -----------------------------------------------------------------------------------------

def test_cli_precomputes_then_hits_the_cache(store, fitted, capsys):
    from pipeline.commands import project as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    argv = ["--store", str(store.root), "--model", "demo", "--layer", "mid", "--step", "1", "--feature", "full",
            "--n-neighbors", "10", "--min-dist", "0.1", "--quiet"]
    assert cmd.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert f"key: {fitted[1].key}" in out and "source: cache" in out and "trustworthiness=" in out
    with pytest.raises(SystemExit) as info:  # out of the method's range: refused by the parser
        parser.parse_args([*argv[:-5], "--n-neighbors", "999", "--quiet"])
    assert info.value.code == 2 and "--n-neighbors: must be an integer from 2 to 200" in capsys.readouterr().err
    assert cmd.run(parser.parse_args(["--store", str(store.root), "--model", "x", "--layer", "mid",
                                      "--quiet"])) == 2
    assert "unknown model 'x'" in capsys.readouterr().err


def test_warmup_compiles_the_small_paths():
    timings = P.warmup(nndescent=False)
    assert {"knn_exact", "layout", "warm_layout", "place", "quality"} <= set(timings)
    assert "knn_nndescent" not in timings


# -- every step in one map -----------------------------------------------------------------------------------

def test_all_steps_map_points_are_samples_at_steps(store, fitted):
    from pipeline import neighbors

    projector, single = fitted
    proj = projector.project(store, "demo", "mid", "all", PARAMS)
    assert proj.step == "all" and proj.key.startswith("sall-full-nn10-") and len(proj) == 2 * N
    steps = np.array([int(s.rsplit("@", 1)[1]) for s in proj.sample_ids])
    assert (np.bincount(steps) == N).all()
    samples = [s.rsplit("@", 1)[0] for s in proj.sample_ids]
    assert sorted(set(samples)) == sorted(single.sample_ids)
    # the classes stay apart across steps (both steps are clustered by class)
    labels = class_of(samples)
    every = np.arange(2 * N)
    assert map_accuracy(proj.xy, labels, every[every % 3 != 0], every[every % 3 == 0]) > 0.9
    table, meta = store.derived.read("projection", "demo", "mid", proj.key)
    frame = table.to_pandas()
    assert meta["step"] == "all" and len(frame) == 2 * N and frame["sample_id"].iloc[0] == "r1-00000000@0"
    fresh = Projector().project(store, "demo", "mid", "ALL", PARAMS)  # another process: the store's cache
    assert fresh.source == "cache" and fresh.key == proj.key and fresh.step == "all"
    # neighbours of a point are (sample, step) points, in either space
    for space in ("map", "activation"):
        ids, dist = neighbors.nearest(store, proj.features, proj.key, proj.sample_ids, proj.xy, "r1-00000004@1", 6,
                                      space=space)
        assert len(ids) == 6 and all("@" in s for s in ids) and "r1-00000004@1" not in ids
        assert dist == sorted(dist)
    ids, _ = neighbors.nearest(store, proj.features, proj.key, proj.sample_ids, proj.xy, "r1-00000004@1", 6,
                               space="activation")
    assert all(class_of([s.rsplit("@", 1)[0]])[0] == 0 for s in ids)  # class 0 like sample 4
    with pytest.raises(ProjectionError, match="'all'"):
        projector.project(store, "demo", "mid", "every", PARAMS)


def test_all_steps_reuse_knn_warm_start_and_place_appended(tmp_path, monkeypatch):
    write_clustered_run(tmp_path, range(120))
    st = Store(tmp_path)
    projector = Projector()
    first = projector.project(st, "demo", "enc", "all", PARAMS)
    monkeypatch.setattr(P, "compute_knn", Spy(None, fail="kNN recomputed for a min_dist change"))
    warm = projector.project(st, "demo", "enc", "all", ProjectionParams.coerce(PARAMS, min_dist=0.5))
    assert warm.source == "warm" and warm.meta["warm_from"] == first.key
    monkeypatch.undo()
    write_clustered_run(tmp_path, range(120, 150))  # 30 new samples: 60 new points
    monkeypatch.setattr(U, "umap_layout", Spy(None, fail="refit although the new points could be placed"))
    placed = Projector().project(st, "demo", "enc", "all", PARAMS)
    assert placed.source == "transform" and placed.meta["placed"] == 60 and len(placed) == 300
    pos = {s: i for i, s in enumerate(placed.sample_ids)}
    np.testing.assert_array_equal(placed.xy[[pos[s] for s in first.sample_ids]], first.xy)
    assert {"r1-00000149@0", "r1-00000149@1"} <= set(pos)


def test_cli_step_all(store, capsys):
    from pipeline.commands import project as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    argv = ["--store", str(store.root), "--model", "demo", "--layer", "enc", "--step", "all", "--feature", "mean",
            "--n-neighbors", "8", "--quiet"]
    assert cmd.run(parser.parse_args(argv)) == 0
    out = capsys.readouterr().out
    assert "key: sall-mean-nn8-" in out and f"samples: {2 * N:,}" in out and "step: all" in out
    with pytest.raises(SystemExit):
        parser.parse_args([*argv[:6], "--step", "every"])
    assert "'all'" in capsys.readouterr().err


# -- progress, cancel, too few samples -----------------------------------------------------------------------

def test_the_layout_reports_its_epochs_and_a_cancel_stops_it_saving_nothing(tmp_path):
    import threading

    write_clustered_run(tmp_path, range(200))
    st = Store(tmp_path)
    seen: list[tuple[float, str]] = []
    proj = Projector().project(st, "demo", "mid", 0, PARAMS, progress=lambda f, m: seen.append((f, m)))
    epochs = [(f, m) for f, m in seen if "epoch" in m]
    # umap's epoch bar refreshes every 0.25 s at most: a layout this small reports its first and last epoch
    assert epochs[0][1].endswith(f"epoch 0/{U.FIT_EPOCHS}")
    assert epochs[-1][1] == f"UMAP layout of 200 points: epoch {U.FIT_EPOCHS}/{U.FIT_EPOCHS}"
    assert all(0.45 <= f <= 0.9 for f, _ in epochs) and [f for f, _ in epochs] == sorted(f for f, _ in epochs)
    assert proj.meta["source"] == "fit"

    cancel = threading.Event()

    def cancel_mid_layout(fraction, message):
        if "epoch" in message:
            cancel.set()  # the next report raises: the layout stops between epochs

    other = ProjectionParams.coerce(PARAMS, n_neighbors=12)
    with pytest.raises(P.Cancelled):
        Projector().project(st, "demo", "mid", 0, other, progress=cancel_mid_layout, cancel=cancel)
    key = projection_key(st.data_version("demo", "mid"), "demo", "mid", 0, other)
    assert st.derived.read("projection", "demo", "mid", key) is None  # nothing half-done was kept
    assert Projector().project(st, "demo", "mid", 0, other).source == "fit"  # and it runs again when asked


def test_too_few_samples_fail_before_any_feature_is_cached(tmp_path):
    write_clustered_run(tmp_path, range(16), batch_size=16)
    st = Store(tmp_path)
    with pytest.raises(ProjectionError, match=r"n_neighbors=100 needs at least 101 samples; this selection has "
                                              r"16\. Lower n_neighbors to at most 15"):
        Projector().project(st, "demo", "mid", 0, ProjectionParams(feature="full+pca5", n_neighbors=100))
    assert not st.derived.scan()  # no PCA features left behind
    write_clustered_run(tmp_path / "tiny", range(5), batch_size=5)
    with pytest.raises(ProjectionError, match="has 5 samples, too few for UMAP .* n_neighbors is at least 5"):
        Projector().project(Store(tmp_path / "tiny"), "demo", "mid", 0, ProjectionParams(n_neighbors=5))
    pca = Projector().project(Store(tmp_path / "tiny"), "demo", "mid", 0, ProjectionParams(method="pca"))
    assert len(pca) == 5  # PCA maps what UMAP cannot
