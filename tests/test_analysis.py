"""pipeline.analysis: class separation, clusters and outliers in activation space, on constructed data (pure
functions) and through small synthetic stores (cache, command line)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import analysis as A
from pipeline.__main__ import main
from store import RunWriter, Store
from tests.feature_fixtures import CLASSES, class_of, write_clustered_run


@pytest.fixture(autouse=True)
def _fresh_memo():
    from pipeline.features import FEATURE_CACHE

    A.clear_cache()
    FEATURE_CACHE.clear()
    yield
    A.clear_cache()


def blobs(sizes, dim=8, spread=0.5, scale=10.0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: (X, blob of every row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * scale
    which = np.repeat(np.arange(len(sizes)), sizes)
    return (centres[which] + rng.normal(size=(len(which), dim)) * spread).astype(np.float32), which


def write_matrix(root, X: np.ndarray, labels, run_id="m1", model="synth", prompts=None) -> None:
    """A store whose layer "mid" holds exactly the rows of X (as channel means), sample i labelled labels[i]."""
    n, dim = X.shape
    manifest = dict(run_id=run_id, model=model, family="synthetic", checkpoint="none", checkpoint_sha256="0" * 64,
                    layers=["mid"], reduce={"mid": "mean"}, settings={"steps": 1, "batch_size": n}, seed=0,
                    num_samples=n, code_version="test", device="cpu")
    w = RunWriter(root, manifest)
    samples = [dict(seed=i, class_id=None if prompts else 0, class_name=None, label=str(labels[i]),
                    category=str(labels[i]), num_steps=1,
                    **({"prompt": prompts[i], "prompt_index": i} if prompts else {})) for i in range(n)]
    acts = {"mid": [dict(step=0, timestep=None, sigma=1.0, reduce="mean", layer_shape=(dim, 2, 2), array=X)]}
    w.write_batch(list(range(n)), samples, None, acts)


@pytest.fixture(scope="module")
def clustered_store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("analysis-store")
    write_clustered_run(root, range(160), num_samples=160)
    return Store(root)


# -- class separation ----------------------------------------------------------------------------------------

def test_purity_is_one_on_separated_classes_and_near_chance_on_shuffled_labels():
    X, which = blobs([60, 60, 60, 60])
    idx, _ = A.knn_graph(X, 10)
    table, matrix, _pairs = A.separation_tables(X, [f"c{w}" for w in which], idx)
    assert table["purity"].tolist() == [1.0] * 4
    assert (table["silhouette"] > 0.8).all()
    np.testing.assert_allclose(np.diag(matrix.to_numpy()), 1.0)

    shuffled = np.random.default_rng(1).permutation(which)
    table, _, _ = A.separation_tables(X, [f"c{w}" for w in shuffled], idx)
    assert abs(table["purity"].mean() - table["chance"].mean()) < 0.08  # chance is about 0.25
    assert table["silhouette"].abs().max() < 0.15


def test_confusion_rows_sum_to_one_and_say_where_neighbours_come_from():
    X, which = blobs([40, 40, 40], spread=6.0, scale=3.0, seed=2)  # overlapping: neighbours mix
    idx, _ = A.knn_graph(X, 7)
    _, matrix, _ = A.separation_tables(X, which, idx)
    np.testing.assert_allclose(matrix.sum(axis=1).to_numpy(), 1.0)
    assert list(matrix.index) == list(matrix.columns) == ["0", "1", "2"]
    own = np.bincount(which[idx].ravel()[np.repeat(which, 7) == 0], minlength=3) / (40 * 7)
    np.testing.assert_allclose(matrix.loc["0"].to_numpy(), own)


def test_two_classes_that_share_a_cluster_are_the_most_mixed_pair():
    X, which = blobs([50, 100, 50], seed=3)  # blob 1 holds two classes, half each
    labels = np.array(["ant", "bee", "cat"], dtype=object)[which]
    labels[np.flatnonzero(which == 1)[::2]] = "dog"
    idx, _ = A.knn_graph(X, 10)
    table, _, pairs = A.separation_tables(X, labels, idx)
    assert (pairs.loc[0, "class_a"], pairs.loc[0, "class_b"]) == ("bee", "dog")
    assert 0.3 < pairs.loc[0, "mixing"] < 0.7
    assert len(pairs) == 1  # the separated classes never mix
    assert set(table["class"].tolist()[:2]) == {"bee", "dog"}  # least pure first


# -- outliers ------------------------------------------------------------------------------------------------

def test_a_planted_outlier_ranks_first():
    X, _ = blobs([80, 80], seed=4)
    X = np.vstack([X[:37], [np.full(X.shape[1], 40.0, np.float32)], X[37:]])  # row 37: far from both blobs
    idx, dist = A.knn_graph(X, 10)
    scores = A.outlier_scores(idx, dist)
    assert scores.loc[37, "rank"] == 1
    assert scores["lof"].idxmax() == scores["kdist"].idxmax() == 37
    assert scores["lof"].median() == pytest.approx(1.0, abs=0.15)
    assert sorted(scores["rank"]) == list(range(1, len(X) + 1))


def test_lof_from_the_shared_graph_matches_scikit_learn():
    from sklearn.neighbors import LocalOutlierFactor

    X = np.random.default_rng(5).normal(size=(300, 6)).astype(np.float32)
    idx, dist = A.knn_graph(X, 12)
    ours = A.local_outlier_factor(idx, dist)
    ref = -LocalOutlierFactor(n_neighbors=12).fit(X).negative_outlier_factor_
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_knn_graph_excludes_self_and_checks_k():
    X, _ = blobs([20, 20])
    X[5] = X[6]  # a duplicate row: still exactly one entry dropped
    idx, dist = A.knn_graph(X, 4)
    assert idx.shape == dist.shape == (40, 4)
    assert not (idx == np.arange(40)[:, None]).any()
    assert (np.diff(dist, axis=1) >= 0).all()
    with pytest.raises(A.AnalysisError, match="needs more than"):
        A.knn_graph(X[:4], 4)
    with pytest.raises(A.AnalysisError, match="integer from 1"):
        A.knn_graph(X, 0)


# -- clusters ------------------------------------------------------------------------------------------------

def test_hdbscan_recovers_separated_blobs_and_names_them_by_majority():
    from sklearn.metrics import adjusted_rand_score

    X, which = blobs([70, 50, 40], dim=16, seed=6)  # wider than HDBSCAN_DIMS: through PCA
    assign = A.cluster_labels(X, "hdbscan")
    assert adjusted_rand_score(which, assign) >= 0.9
    labels = np.array(["horse", "zebra", "tiger"], dtype=object)[which]
    table = A.cluster_table(X, assign, [f"s{i}" for i in range(len(X))], labels)
    named = table[table["cluster"] >= 0]
    assert named["name"].tolist() == ["horse", "zebra", "tiger"]  # largest first
    assert (named["purity"] == 1.0).all()
    for row in table.itertuples():
        members = {f"s{i}" for i in np.flatnonzero(assign == row.cluster)}
        assert len(row.medoids) == 3 and set(row.medoids) <= members
        assert row.size == len(members) and row.spread > 0


def test_kmeans_uses_the_chosen_k_and_noise_is_its_own_group():
    X, which = blobs([30, 30, 30], seed=7)
    assign = A.cluster_labels(X, "kmeans", n_clusters=3)
    assert sorted(np.unique(assign)) == [0, 1, 2]
    with pytest.raises(A.AnalysisError, match="n_clusters"):
        A.cluster_labels(X, "kmeans", n_clusters=0)
    with pytest.raises(A.AnalysisError, match="unknown clustering"):
        A.cluster_labels(X, "dbscan")
    noisy = np.where(np.arange(90) < 5, -1, assign)
    table = A.cluster_table(X, noisy, np.arange(90).astype(str), which)
    assert table.iloc[-1]["cluster"] == -1 and table.iloc[-1]["name"] == "noise" and table.iloc[-1]["size"] == 5


def test_mixed_clusters_with_prompts_are_named_by_their_words():
    X, which = blobs([20, 20], seed=8)
    prompts = [f"a photo of a red {'apple' if w == 0 else 'barn'} at dusk" for w in which]
    labels = ["fruit" if i % 2 else "building" for i in range(40)]  # no majority per cluster
    table = A.cluster_table(X, which, np.arange(40).astype(str), labels, prompts)
    assert table["words"].tolist()[0][0] == "apple" and table["name"].str.contains("barn").any()
    assert "red" not in table["words"].tolist()[0]  # in every prompt: names nothing


# -- through the store: cache and command line ---------------------------------------------------------------

def test_store_entries_on_a_clustered_run(clustered_store):
    sep = A.class_separation(clustered_store, "demo", "mid", k=5)
    assert sep.by == "label" and sep.n_samples == 160
    assert sep.table["purity"].tolist() == [1.0] * CLASSES and sep.pairs.empty
    clu = A.clusters(clustered_store, "demo", "mid")
    truth = class_of(clu.assignments["sample_id"])
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(truth, clu.assignments["cluster"]) >= 0.9
    assert set(clu.table["name"]) >= {f"{c}: c{c}" for c in range(CLASSES)}
    out = A.outliers(clustered_store, "demo", "mid", k=5)
    assert len(out) == 160 and out["rank"].tolist() == list(range(1, 161))


def test_results_come_from_the_cache_the_second_time(clustered_store, monkeypatch):
    first = (A.class_separation(clustered_store, "demo", "enc", step=0, k=6),
             A.clusters(clustered_store, "demo", "enc", step=0, method="kmeans", n_clusters=4),
             A.outliers(clustered_store, "demo", "enc", step=0, k=6))
    A.clear_cache()  # only the store's copy is left

    def fail(*a, **kw):
        raise AssertionError("recomputed")

    for name in ("knn_graph", "separation_tables", "cluster_labels", "cluster_table", "outlier_scores",
                 "load_features"):
        monkeypatch.setattr(A, name, fail)
    again = (A.class_separation(Store(clustered_store.root), "demo", "enc", step=0, k=6),
             A.clusters(clustered_store, "demo", "enc", step=0, method="kmeans", n_clusters=4),
             A.outliers(clustered_store, "demo", "enc", step=0, k=6))
    pd.testing.assert_frame_equal(first[0].table, again[0].table)
    pd.testing.assert_frame_equal(first[0].confusion, again[0].confusion)
    pd.testing.assert_frame_equal(first[1].table, again[1].table)
    pd.testing.assert_frame_equal(first[2], again[2])
    again[0].table.loc[0, "purity"] = -1.0  # callers get copies: the remembered result stays
    pd.testing.assert_frame_equal(A.class_separation(clustered_store, "demo", "enc", step=0, k=6).table,
                                  first[0].table)  # and from memory
    with pytest.raises(AssertionError, match="recomputed"):  # another parameter is another result
        A.class_separation(clustered_store, "demo", "enc", step=0, k=7)


def test_appended_samples_change_the_key(tmp_path):
    write_clustered_run(tmp_path, range(60), num_samples=120)
    store = Store(tmp_path)
    assert A.outliers(store, "demo", "mid", k=5).shape[0] == 60
    write_clustered_run(tmp_path, range(60, 120), num_samples=120)
    stale = [e for e in Store(tmp_path).derived.scan() if e.kind == "analysis"]
    assert stale and all(e.stale for e in stale)  # prune-cache removes them
    assert A.outliers(Store(tmp_path), "demo", "mid", k=5).shape[0] == 120


def test_shared_cluster_in_a_store_and_bad_requests(tmp_path):
    X, which = blobs([30, 60, 30], seed=9)
    labels = np.array(["ant", "bee", "cat"], dtype=object)[which]
    labels[np.flatnonzero(which == 1)[::2]] = "dog"
    write_matrix(tmp_path, X, labels)
    store = Store(tmp_path)
    sep = A.class_separation(store, "synth", "mid", k=8)
    assert tuple(sep.pairs.loc[0, ["class_a", "class_b"]]) == ("bee", "dog")
    with pytest.raises(A.AnalysisError, match="unknown layer"):
        A.class_separation(store, "synth", "nope")
    with pytest.raises(A.AnalysisError, match="step 3 not recorded"):
        A.outliers(store, "synth", "mid", step=3)
    with pytest.raises(A.AnalysisError, match="step -2 out of range"):
        A.outliers(store, "synth", "mid", step=-2)
    assert A.outliers(store, "synth", "mid", step=-1, k=3).shape[0] == 120
    with pytest.raises(A.AnalysisError, match="unknown model"):
        A.outliers(store, "other", "mid")
    with pytest.raises(A.AnalysisError, match="needs more than"):
        A.outliers(store, "synth", "mid", run_ids=["m1"], sample_ids=["m1-00000000", "m1-00000001", "m1-00000002"],
                   k=5)


def test_prompt_models_are_classed_by_category(tmp_path):
    X, which = blobs([25, 25], seed=10)
    prompts = [f"a {'cat' if w == 0 else 'car'} number {i}" for i, w in enumerate(which)]
    write_matrix(tmp_path, X, np.array(["animals", "vehicles"])[which], prompts=prompts)
    sep = A.class_separation(Store(tmp_path), "synth", "mid", k=5)
    assert sep.by == "category" and sorted(sep.table["class"]) == ["animals", "vehicles"]
    clu = A.clusters(Store(tmp_path), "synth", "mid", method="kmeans", n_clusters=2)
    assert sorted(clu.table["name"]) == ["animals", "vehicles"]
    assert sorted(w[0] for w in clu.table["words"]) == ["car", "cat"]


def test_cli_prints_the_tables(tmp_path, capsys):
    X, which = blobs([40, 40, 40], seed=11)
    X = np.vstack([X, np.full((1, X.shape[1]), 50.0, np.float32)])
    write_matrix(tmp_path, X, [*np.array(["ant", "bee", "cat"])[which], "odd"])
    assert main(["analyse", "--store", str(tmp_path), "--model", "synth", "--layer", "mid", "--k", "5",
                 "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "class separation" in out and "purity" in out and "silhouette" in out
    assert "most-mixed pairs" in out and "clusters (hdbscan" in out
    outliers = out.split("most unusual samples")[1].splitlines()
    assert "m1-00000120" in outliers[2]  # the planted point heads the list
    assert main(["analyse", "--store", str(tmp_path), "--model", "synth", "--layer", "mid", "--clusters",
                 "kmeans", "--n-clusters", "3"]) == 0
    assert "clusters (kmeans" in capsys.readouterr().out
    assert main(["analyse", "--store", str(tmp_path), "--model", "synth", "--layer", "nope"]) == 2
    assert "unknown layer" in capsys.readouterr().err


# -- the samples behind a confusion cell ---------------------------------------------------------------------

def test_a_confusion_cell_names_the_samples_whose_neighbours_cross():
    X, which = blobs([50, 100, 50], seed=3)  # blob 1 holds two classes, alternating
    labels = np.array(["ant", "bee", "cat"], dtype=object)[which]
    labels[np.flatnonzero(which == 1)[::2]] = "dog"
    ids = [f"s{i}" for i in range(len(X))]
    idx, _ = A.knn_graph(X, 10)
    cells = A.neighbour_classes(idx, labels, ids)
    # counts add up to k per sample, and averaging them per class gives the confusion matrix back
    assert (cells.groupby("sample_id")["count"].sum() == 10).all()
    _, matrix, _ = A.separation_tables(X, labels, idx)
    shares = cells.pivot_table(index="sample_id", columns="neighbour_class", values="count", fill_value=0) / 10
    shares["class"] = pd.Series(labels, index=ids)
    np.testing.assert_allclose(shares.groupby("class").mean().loc["bee", "dog"], matrix.loc["bee", "dog"])
    bee_dog = A.cell_samples(cells, "bee", "dog")
    expected = {ids[i] for i in range(len(X)) if labels[i] == "bee" and (labels[idx[i]] == "dog").any()}
    assert set(bee_dog) == expected and len(expected) > 40  # nearly every bee sits among dogs
    counts = [int((labels[idx[ids.index(s)]] == "dog").sum()) for s in bee_dog]
    assert counts == sorted(counts, reverse=True)  # most-crossing first
    assert A.cell_samples(cells, "ant", "cat") == []  # separated classes: an empty cell
    assert set(A.cell_samples(cells, "ant", "ant")) == {ids[i] for i in np.flatnonzero(which == 0)}


def test_the_store_entry_carries_the_cells_through_the_cache(tmp_path):
    X, which = blobs([30, 60, 30], seed=9)
    labels = np.array(["ant", "bee", "cat"], dtype=object)[which]
    labels[np.flatnonzero(which == 1)[::2]] = "dog"
    write_matrix(tmp_path, X, labels)
    sep = A.class_separation(Store(tmp_path), "synth", "mid", k=8)
    cell = sep.cell("bee", "dog")
    assert cell and all(labels[int(s.split("-")[1])] == "bee" for s in cell)
    A.clear_cache()  # from the store's copy
    assert A.class_separation(Store(tmp_path), "synth", "mid", k=8).cell("bee", "dog") == cell
