"""Neighbours on the map and in activation space (checked against brute force), and map quality."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import features as F
from pipeline import neighbors as NB
from pipeline.methods import umap as U
from pipeline.neighbors import NeighborError, NeighborIndex
from pipeline.project import Projection, ProjectionParams, Projector
from store import Store
from tests.feature_fixtures import write_clustered_run


def brute(data: np.ndarray, i: int, metric: str) -> np.ndarray:
    """Reference distances from row i to every row, straight from the definitions."""
    data = data.astype(np.float64)
    q = data[i]
    if metric == "euclidean":
        return np.sqrt(((data - q) ** 2).sum(axis=1))
    if metric == "manhattan":
        return np.abs(data - q).sum(axis=1)
    if metric == "correlation":
        data = data - data.mean(axis=1, keepdims=True)
        q = data[i]
    cos = data @ q / (np.linalg.norm(data, axis=1) * np.linalg.norm(q))
    return 1.0 - cos


def reference(data, i, k, metric):
    d = brute(data, i, metric)
    d[i] = np.inf
    order = np.lexsort((np.arange(len(d)), d))[:k]
    return order, d[order]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(500, 24)).astype(np.float32)


@pytest.mark.parametrize("metric", NB.METRICS)
def test_activation_space_matches_brute_force(data, metric):
    index = NeighborIndex(data, "activation", metric)
    for i in (0, 17, 499):
        idx, dist = index.query(i, 7)
        ref_idx, ref_d = reference(data, i, 7, metric)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_d, rtol=1e-4, atol=1e-5)
        assert i not in idx
        others = [3, 250, 400]
        np.testing.assert_allclose(index.distances(i, others), brute(data, i, metric)[others], rtol=1e-4,
                                   atol=1e-5)


def test_map_space_matches_brute_force(data):
    xy = data[:, :2]
    index = NeighborIndex(xy, "map")
    for i in (1, 42):
        idx, dist = index.query(i, 10)
        ref_idx, ref_d = reference(xy, i, 10, "euclidean")
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(dist, ref_d, rtol=1e-5)
    idx, _ = NeighborIndex(xy[:5], "map").query(0, 50)  # k larger than the rest: all of them
    assert sorted(idx) == [1, 2, 3, 4]


def test_bad_requests_are_clear(data):
    with pytest.raises(NeighborError, match="unknown neighbour space"):
        NeighborIndex(data, "latent")
    with pytest.raises(NeighborError, match="unknown metric"):
        NeighborIndex(data, "activation", "hamming")
    index = NeighborIndex(data[:, :2], "map")
    with pytest.raises(NeighborError, match="k must be"):
        index.query(0, 0)
    with pytest.raises(NeighborError, match="out of range"):
        index.query(500, 3)


def test_knn_table_with_a_projection_and_with_arrays(data):
    ids = np.array([f"r-{i:08d}" for i in range(len(data))])
    xy = data[:, :2].copy()
    proj = Projection(sample_ids=ids, xy=xy, params=ProjectionParams(metric="cosine"), key="k-test", quality={},
                      source="fit")
    table = NB.knn_table(proj, data, "r-00000003", 5)
    assert list(table.columns) == ["sample_id", "index", "distance", "rank"]
    assert list(table["rank"]) == [1, 2, 3, 4, 5] and table["distance"].is_monotonic_increasing
    assert list(table["index"]) == list(reference(xy, 3, 5, "euclidean")[0])
    act = NB.knn_table(proj, data, 3, 5, space="activation")  # the projection's metric: cosine
    assert list(act["sample_id"]) == list(ids[reference(data, 3, 5, "cosine")[0]])
    plain = NB.knn_table(xy, None, 3, 5, sample_ids=ids)
    assert list(plain["sample_id"]) == list(table["sample_id"])
    with pytest.raises(NeighborError, match="need the feature matrix"):
        NB.knn_table(xy, None, 3, 5, space="activation")
    with pytest.raises(NeighborError, match="not in this projection"):
        NB.knn_table(proj, data, "r-99999999", 5)


# -- through the store (what the app calls) --------------------------------------------------------------------

def fake_layout(X, idx, dist, params, init=None, n_epochs=None, progress=None):
    """A fast deterministic 'map' (first two principal directions) so these tests need no UMAP fit."""
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return (Xc @ vt[:2].T).astype(np.float32) * (2.0 if params.min_dist > 0.5 else 1.0)


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    root = tmp_path_factory.mktemp("neighbors-store")
    write_clustered_run(root, range(150))
    st = Store(root)
    mp = pytest.MonkeyPatch()
    mp.setattr(U, "umap_layout", fake_layout)
    proj = Projector().project(st, "demo", "mid", 0, ProjectionParams(feature="full", n_neighbors=8,
                                                                       metric="correlation"))
    yield st, proj, mp
    mp.undo()


def near(st, proj, sid, k, **kw):
    return NB.nearest(st, proj.features, proj.key, proj.sample_ids, proj.xy, sid, k, **kw)


def test_store_neighbors_in_both_spaces(projected, monkeypatch):
    st, proj, _ = projected
    sid = proj.sample_ids[10]
    ids, dists = near(st, proj, sid, 6, space="map")
    ref_idx, ref_d = reference(proj.xy, 10, 6, "euclidean")
    assert ids == list(proj.sample_ids[ref_idx]) and sid not in ids
    np.testing.assert_allclose(dists, ref_d, rtol=1e-5)
    F.FEATURE_CACHE.clear()  # as in a fresh process: the features are rebuilt from the store
    _, X = F.build_features(st, "demo", "mid", 0, "full")
    F.FEATURE_CACHE.clear()
    # no bounce: the projection is never read back, the features come from the activations in one call
    monkeypatch.setattr(type(st.derived), "read", lambda *a, **k: pytest.fail("re-read a cached result"))
    ids, dists = near(st, proj, sid, 6, space="activation")  # the projection's metric
    ref_idx, ref_d = reference(X, 10, 6, "correlation")
    assert ids == list(proj.sample_ids[ref_idx])
    np.testing.assert_allclose(dists, ref_d, rtol=1e-3, atol=1e-5)
    ids_e, _ = near(st, proj, sid, 6, space="activation", metric="euclidean")
    assert ids_e == list(proj.sample_ids[reference(X, 10, 6, "euclidean")[0]])
    d = NB.distances(st, proj.features, proj.key, proj.sample_ids, proj.xy, sid,
                     [proj.sample_ids[3], "zz-00000000", proj.sample_ids[7]], space="map")
    np.testing.assert_allclose([d[0], d[2]], brute(proj.xy, 10, "euclidean")[[3, 7]], rtol=1e-5)
    assert np.isnan(d[1])
    with pytest.raises(NeighborError, match="not in this map"):
        near(st, proj, "zz-00000000", 3)
    with pytest.raises(NeighborError, match="need to know the map's features"):
        NB.nearest(st, None, proj.key, proj.sample_ids, proj.xy, sid, 3, space="activation")
    with pytest.raises(NeighborError, match="unknown neighbour space"):
        near(st, proj, sid, 3, space="screen")


def test_activation_neighbours_of_a_filtered_map_stay_in_its_rows(projected):
    st, proj, _ = projected
    subset = list(proj.sample_ids[::3])
    small = Projector().project(st, "demo", "mid", 0, proj.params, sample_ids=subset)
    F.FEATURE_CACHE.clear()
    ids, _ = near(st, small, subset[0], 10, space="activation")
    assert set(ids) <= set(subset) and len(ids) == 10


def test_a_refit_refreshes_the_cached_index(projected):
    st, proj, mp = projected
    sid = proj.sample_ids[0]
    _, before = near(st, proj, sid, 3, space="map")
    mp.setattr(U, "umap_layout", lambda *a, **k: fake_layout(*a, **k) * 3)
    again = Projector().project(st, "demo", "mid", 0, proj.params, refit=True)
    assert again.key == proj.key
    _, after = near(st, again, sid, 3, space="map")
    np.testing.assert_allclose(after, np.array(before) * 3, rtol=1e-4)
    mp.setattr(U, "umap_layout", fake_layout)


# -- map quality ---------------------------------------------------------------------------------------------

def test_map_quality_perfect_and_scrambled_maps():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 2)).astype(np.float32)
    perfect = NB.map_quality(X, X.copy(), k=10, sample=300)
    assert perfect["trustworthiness"] == 1.0 and perfect["knn_overlap"] == 1.0 and perfect["sample"] == 300
    scrambled = NB.map_quality(X, X[rng.permutation(600)], k=10, sample=300)
    assert scrambled["knn_overlap"] < 0.1 and scrambled["trustworthiness"] < 0.7
    # the projection's own kNN graph gives the same answer as the exact search
    from pipeline.neighbors import exact_knn

    idx, _ = exact_knn(X, X, 16)
    noisy = X + rng.normal(size=X.shape).astype(np.float32) * 0.1
    assert NB.map_quality(X, noisy, knn_indices=idx) == NB.map_quality(X, noisy)
    assert NB.map_quality(X[:3], X[:3])["trustworthiness"] is None  # too few points to say
