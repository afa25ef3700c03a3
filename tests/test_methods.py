"""Projection methods as estimators (`pipeline.methods`): PCA equals a plain numpy PCA, t-SNE keeps clusters
apart and places new points with their class, and both go through the projector like UMAP: cached under
keys that name them, reopened by a fresh process, appended samples placed rather than refit."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import project as P
from pipeline.methods import METHODS, MethodError, get_method
from pipeline.methods.pca import PCA
from pipeline.methods.tsne import TSNE
from pipeline.project import ProjectionError, ProjectionParams, Projector
from store import Store
from tests.feature_fixtures import class_of, write_clustered_run


def clusters(n: int, seed: int = 0, dim: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(4, dim)) * 6
    labels = np.arange(n) % 4
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def knn_accuracy(xy_train, y_train, xy_test, y_test) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    return float((KNeighborsClassifier(5).fit(xy_train, y_train).predict(xy_test) == y_test).mean())


def test_pca_is_the_plain_numpy_pca_and_transform_projects_new_rows():
    X, _ = clusters(200)
    xy = PCA().fit_transform(X)
    Xc = X - X.mean(axis=0)
    _, _, vt = np.linalg.svd(Xc.astype(np.float64), full_matrices=False)
    ref = Xc @ vt[:2].T
    for j in range(2):  # a principal axis is defined up to its sign
        sign = np.sign(ref[:, j] @ xy[:, j])
        np.testing.assert_allclose(xy[:, j], sign * ref[:, j], rtol=1e-3, atol=1e-3)
    new, _ = clusters(30, seed=1)
    placed = PCA().attach(X, xy).transform(new)  # a fresh estimator from the stored map: the same axes
    np.testing.assert_allclose(placed, PCA().fit(X).transform(new), rtol=1e-5, atol=1e-5)


def test_tsne_keeps_clusters_apart_and_places_new_points_with_their_class():
    X, y = clusters(240)
    xy = TSNE(perplexity=20).fit_transform(X)
    assert xy.shape == (240, 2) and np.isfinite(xy).all()
    train, test = np.arange(240) % 3 != 0, np.arange(240) % 3 == 0
    assert knn_accuracy(xy[train], y[train], xy[test], y[test]) > 0.95
    new, y_new = clusters(40, seed=5)
    placed = TSNE(perplexity=20).attach(X, xy).transform(new)
    assert placed.shape == (40, 2) and knn_accuracy(xy, y, placed, y_new) > 0.9


def test_methods_declare_their_own_parameters():
    assert set(METHODS) == {"umap", "tsne", "pca"}
    assert set(get_method("umap").PARAMS) == {"n_neighbors", "min_dist"} and get_method("umap").WARM == ("min_dist",)
    assert set(get_method("tsne").PARAMS) == {"perplexity"} and not get_method("pca").PARAMS
    p = ProjectionParams(method="tsne", perplexity=12)
    assert p.perplexity == 12.0 and p.to_dict()["perplexity"] == 12.0 and "n_neighbors" not in p.to_dict()
    assert ProjectionParams.from_dict(p.to_dict()) == p
    with pytest.raises(ProjectionError, match="unknown projection parameters.*perplexity"):
        ProjectionParams(method="tsne", n_neighbors=10)
    with pytest.raises(ProjectionError, match="perplexity must be a number from 2"):
        ProjectionParams(method="tsne", perplexity=500)
    with pytest.raises(ProjectionError, match="unknown projection method 'isomap'"):
        ProjectionParams(method="isomap")
    with pytest.raises(ProjectionError, match="does not run tsne"):
        ProjectionParams(method="tsne", backend="cuml")
    with pytest.raises(MethodError):
        get_method("nope")


@pytest.mark.parametrize("method, options, tag", [("tsne", {"perplexity": 10}, "-tsne-p10-"), ("pca", {}, "-pca2d-")])
def test_tsne_and_pca_maps_are_cached_reopened_and_take_appended_samples(tmp_path, monkeypatch, method, options,
                                                                          tag):
    write_clustered_run(tmp_path, range(160))
    st = Store(tmp_path)
    params = ProjectionParams(feature="full", method=method, **options)
    first = Projector().project(st, "demo", "mid", 0, params)
    assert first.source == "fit" and tag in first.key and first.meta["params"]["method"] == method
    assert P.projection_key(first.data_version, "demo", "mid", 0, params) == first.key
    labels = class_of(first.sample_ids)
    train, test = np.arange(len(first)) % 3 != 0, np.arange(len(first)) % 3 == 0
    assert knn_accuracy(first.xy[train], labels[train], first.xy[test], labels[test]) > 0.9
    fits = []
    monkeypatch.setattr(get_method(method), "fit", lambda self, *a, **k: fits.append(1) or pytest.fail("refit"))
    again = Projector().project(st, "demo", "mid", 0, params)  # a fresh process: from the store
    assert again.source == "cache" and again.key == first.key
    np.testing.assert_array_equal(again.xy, first.xy)

    write_clustered_run(tmp_path, range(160, 200))  # 40 samples appended
    placed = Projector().project(st, "demo", "mid", 0, params)
    assert placed.source == "transform" and placed.meta["placed"] == 40 and not fits
    pos = {s: i for i, s in enumerate(placed.sample_ids)}
    old = np.array([pos[s] for s in first.sample_ids])
    np.testing.assert_array_equal(placed.xy[old], first.xy)  # old points stay where they were
    new = np.setdiff1d(np.arange(len(placed)), old)
    all_labels = class_of(placed.sample_ids)
    assert knn_accuracy(placed.xy[old], all_labels[old], placed.xy[new], all_labels[new]) > 0.85


def test_tsne_reuses_the_knn_graph_a_umap_map_cached(tmp_path, monkeypatch):
    write_clustered_run(tmp_path, range(120))
    st = Store(tmp_path)
    Projector().project(st, "demo", "mid", 0, ProjectionParams(feature="full", n_neighbors=10))  # 15 columns
    monkeypatch.setattr(P, "compute_knn", lambda *a, **k: pytest.fail("kNN recomputed"))
    proj = Projector().project(st, "demo", "mid", 0, ProjectionParams(feature="full", method="tsne", perplexity=4))
    assert proj.source == "fit" and np.isfinite(proj.xy).all()


def test_cli_method_switch(tmp_path, capsys):
    from pipeline.__main__ import main

    write_clustered_run(tmp_path, range(80))
    args = ["project", "--store", str(tmp_path), "--model", "demo", "--layer", "mid", "--step", "0", "--quiet",
            "--feature", "full"]
    assert main(args + ["--method", "tsne", "--perplexity", "8"]) == 0
    out = capsys.readouterr().out
    assert "-full-tsne-p8-euclidean-" in out and "source: fit" in out
    assert main(args + ["--method", "pca"]) == 0
    assert "-full-pca2d-" in capsys.readouterr().out
    assert main(args + ["--method", "pca", "--n-neighbors", "5"]) == 2
    assert "--n-neighbors does not apply to --method pca" in capsys.readouterr().err
    assert main(args + ["--method", "tsne", "--perplexity", "8"]) == 0  # the same request: from the cache
    assert "source: cache" in capsys.readouterr().out
