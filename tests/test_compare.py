"""pipeline.compare: linear CKA between layers and per-sample neighbour agreement, on synthetic stores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import compare
from pipeline.compare import CompareError
from store import RunWriter, Store
from tests import store_fixtures as sf


@pytest.fixture(autouse=True)
def _fresh_memo():
    compare.clear_cache()
    yield
    compare.clear_cache()


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- the measures -------------------------------------------------------------------------------------------

def test_cka_of_a_matrix_with_itself_is_one():
    X = _rng().normal(size=(200, 30))
    assert compare.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    rng = _rng(1)
    X = rng.normal(size=(300, 20))
    Y = X @ rng.normal(size=(20, 12)) + 0.5 * rng.normal(size=(300, 12))  # related, not identical
    base = compare.linear_cka(X, Y)
    assert 0.3 < base < 0.99
    Q, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    assert compare.linear_cka(X @ Q * 7.5, Y) == pytest.approx(base, rel=1e-9)
    assert compare.linear_cka(X, Y * 0.01 + 3.0) == pytest.approx(base, rel=1e-9)  # scale and shift
    # ... but not to a non-isotropic scaling of the columns
    assert abs(compare.linear_cka(X * np.linspace(0.1, 10, 20), Y) - base) > 1e-3


def test_cka_of_independent_random_features_is_near_zero():
    rng = _rng(2)
    X, Y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 10))
    assert compare.linear_cka(X, Y) < 0.02


def test_cka_matrix_is_symmetric_with_unit_diagonal_and_wide_matrices_agree():
    rng = _rng(3)
    mats = [rng.normal(size=(40, d)) for d in (5, 80, 40)]  # wider than tall: the n x n Gram route
    M = compare.cka_matrix(mats)
    assert np.allclose(M, M.T) and np.allclose(np.diag(M), 1.0)
    assert ((M >= 0) & (M <= 1)).all()
    Q, _ = np.linalg.qr(rng.normal(size=(80, 80)))
    assert compare.cka_matrix([mats[0], mats[1] @ Q])[0, 1] == pytest.approx(M[0, 1], rel=1e-9)


def test_cka_rejects_different_row_counts():
    with pytest.raises(CompareError, match="same samples"):
        compare.linear_cka(np.ones((5, 2)), np.ones((6, 2)))


def test_knn_overlap_is_one_for_identical_and_scaled_features_and_low_for_unrelated():
    rng = _rng(4)
    X = rng.normal(size=(300, 8))
    assert np.all(compare.knn_overlap(X, X, k=5) == 1.0)
    assert np.all(compare.knn_overlap(X, 3 * X, k=5) == 1.0)  # cosine neighbours ignore scale
    unrelated = compare.knn_overlap(X, rng.normal(size=(300, 8)), k=5)
    assert unrelated.mean() < 0.1  # chance is 5/299


def test_knn_overlap_counts_shared_neighbours_exactly():
    # points on a line: under euclidean distance the 2 nearest of 0 are {1, 2}; reversing the order of the
    # second layer keeps each point's neighbours, shuffling two points changes exactly theirs
    X = np.arange(10, dtype=float)[:, None]
    Y = X.copy()
    Y[[0, 9]] = Y[[9, 0]]
    ov = compare.knn_overlap(X, Y, k=2, metric="euclidean")
    assert ov[5] == 1.0  # neighbours {4, 6} in both
    assert ov[0] == 0.0  # X: {1, 2}; Y: 0 sits at 9, its neighbours are {8, 7}
    assert ov[1] == 0.5  # X: {0, 2}; Y: {2, 3}


def test_knn_overlap_with_duplicate_rows_excludes_self():
    X = np.vstack([np.ones((3, 4)), _rng(5).normal(size=(20, 4))])  # three identical rows first
    ov = compare.knn_overlap(X, X, k=2, metric="euclidean")
    assert np.all(ov == 1.0)


# -- from a store -------------------------------------------------------------------------------------------

def _write(root, run_id, layers, n, values):
    """A run whose activations at every step are values[layer][index] (shape (C,))."""
    m = sf.manifest(run_id, layers=list(layers), num_samples=n, reduce={"default": "mean"})
    w = RunWriter(root, m)
    idx = list(range(n))
    samples = [dict(seed=i, class_id=i % 3, class_name=f"c{i % 3}", category=f"c{i % 3}",
                    label=f"{i % 3}: c{i % 3}", num_steps=2) for i in idx]
    acts = {layer: [dict(step=s, timestep=None, sigma=sf.SIGMAS[s], reduce="mean",
                         layer_shape=(values[layer].shape[1], 2, 2), array=values[layer] * (1 + s))
                    for s in range(2)]
            for layer in layers}
    w.write_batch(idx, samples, [sf.image(i) for i in idx], acts)
    w.finish("complete")


@pytest.fixture
def store(tmp_path):
    """One model, layers: 'base' (random), 'rot' (an orthogonal transform of base, scaled), 'rand'
    (independent), 'half' (base's first 4 columns plus noise); 60 samples."""
    rng = _rng(7)
    base = rng.normal(size=(60, 6)).astype(np.float32)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    values = {"base": base, "rot": (base @ Q * 4).astype(np.float32),
              "rand": rng.normal(size=(60, 6)).astype(np.float32),
              "half": np.hstack([base[:, :4], rng.normal(size=(60, 3))]).astype(np.float32)}
    _write(tmp_path, "r1", list(values), 60, values)
    return Store(tmp_path)


def test_layer_similarity_on_a_store(store):
    sim = compare.layer_similarity(store, "demo", ["base", "rot", "rand", "half"], step=1)
    assert list(sim.index) == list(sim.columns) == ["base", "rot", "rand", "half"]
    assert np.allclose(np.diag(sim.to_numpy()), 1.0)
    assert sim.loc["base", "rot"] == pytest.approx(1.0, abs=1e-5)  # float16 storage rounds a little
    assert sim.loc["base", "rand"] < 0.35
    assert sim.loc["base", "rand"] < sim.loc["base", "half"] < sim.loc["base", "rot"]
    assert sim.attrs["n_samples"] == 60 and sim.attrs["step"] == 1
    assert sim.attrs["features"]["base"] == "mean"


def test_layer_similarity_subsamples_deterministically(store):
    a = compare.layer_similarity(store, "demo", ["base", "half", "rand"], step=0, max_samples=20, seed=1)
    compare.clear_cache()
    b = compare.layer_similarity(store, "demo", ["base", "half", "rand"], step=0, max_samples=20, seed=1)
    c = compare.layer_similarity(store, "demo", ["base", "half", "rand"], step=0, max_samples=20, seed=2)
    assert a.attrs["n_samples"] == 20 and a.attrs["n_common"] == 60
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())


def test_results_are_cached_in_the_store_under_explicit_keys(store, monkeypatch):
    first = compare.layer_similarity(store, "demo", ["base", "rand"], step=0)
    agree = compare.neighbour_agreement(store, "demo", "base", "rand", step=0, k=5)
    files = sorted(p.name for p in (store.root / "caches" / "compare" / "model=demo").glob("*.parquet"))
    assert len(files) == 2 and files[0].startswith("cka-") and files[1].startswith("knn-agreement-")
    compare.clear_cache()

    def boom(*a, **k):
        raise AssertionError("recomputed despite a cached result")

    monkeypatch.setattr(compare, "cka_matrix", boom)
    monkeypatch.setattr(compare, "knn_overlap", boom)
    again = compare.layer_similarity(store, "demo", ["base", "rand"], step=0)
    pd.testing.assert_frame_equal(again, first, check_names=False)
    assert again.attrs["n_samples"] == 60
    agree2 = compare.neighbour_agreement(store, "demo", "rand", "base", step=0, k=5)  # symmetric key
    pd.testing.assert_frame_equal(agree2, agree)
    assert agree2.attrs["mean"] == pytest.approx(agree.attrs["mean"])
    # another parameter is another key: computed
    with pytest.raises(AssertionError, match="recomputed"):
        compare.neighbour_agreement(store, "demo", "rand", "base", step=0, k=6)


def test_cache_key_follows_the_data_version(tmp_path):
    rng = _rng(8)
    values = {"enc": rng.normal(size=(30, 4)).astype(np.float32),
              "mid": rng.normal(size=(30, 4)).astype(np.float32)}
    _write(tmp_path, "r1", ["enc", "mid"], 30, values)
    st = Store(tmp_path)
    before = compare.layer_similarity(st, "demo", ["enc", "mid"], step=0)
    values2 = {"enc": values["enc"], "mid": values["enc"] * 2}  # a second run where mid = 2 * enc
    _write(tmp_path, "r2", ["enc", "mid"], 30, values2)
    after = compare.layer_similarity(st, "demo", ["enc", "mid"], step=0)
    assert after.attrs["n_samples"] == 60 and before.attrs["n_samples"] == 30
    assert after.loc["enc", "mid"] > before.loc["enc", "mid"]


def test_neighbour_agreement_of_identical_layers_is_one(store):
    agree = compare.neighbour_agreement(store, "demo", "base", "rot", step=0, k=5, metric="euclidean")
    assert list(agree.columns) == ["sample_id", "overlap"] and len(agree) == 60
    assert agree["sample_id"].iloc[0] == "r1-00000000"
    assert agree["overlap"].min() == pytest.approx(1.0)
    assert agree.attrs["mean"] == pytest.approx(1.0) and agree.attrs["chance"] == pytest.approx(5 / 59)
    rand = compare.neighbour_agreement(store, "demo", "base", "rand", step=0, k=5)
    assert rand.attrs["mean"] < 0.35


def test_unknown_layers_single_layer_and_bad_parameters_are_clear_errors(store):
    with pytest.raises(CompareError, match=r"unknown layer\(s\) \['nope'\].*valid: \['base', 'rot', 'rand', 'half'\]"):
        compare.layer_similarity(store, "demo", ["base", "nope"])
    with pytest.raises(CompareError, match="at least 2 different layers"):
        compare.layer_similarity(store, "demo", ["base"])
    with pytest.raises(CompareError, match="more than once"):
        compare.layer_similarity(store, "demo", ["base", "base"])
    with pytest.raises(CompareError, match="unknown model 'x'; valid: \\['demo'\\]"):
        compare.layer_similarity(store, "x", ["base", "rot"])
    with pytest.raises(CompareError, match=r"step 5 is not recorded.*valid: \[0, 1\]"):
        compare.layer_similarity(store, "demo", ["base", "rot"], step=5)
    with pytest.raises(CompareError, match="k must be"):
        compare.neighbour_agreement(store, "demo", "base", "rot", k=0)
    with pytest.raises(CompareError, match="unknown metric"):
        compare.neighbour_agreement(store, "demo", "base", "rot", metric="hamming")
    with pytest.raises(CompareError, match="more than once"):
        compare.neighbour_agreement(store, "demo", "base", "base")
    with pytest.raises(CompareError, match="max_samples"):
        compare.layer_similarity(store, "demo", ["base", "rot"], max_samples=1)


def test_mismatched_sample_sets(tmp_path):
    rng = _rng(9)
    vals = {"enc": rng.normal(size=(20, 4)).astype(np.float32), "mid": rng.normal(size=(20, 4)).astype(np.float32)}
    _write(tmp_path, "r1", ["enc", "mid"], 20, vals)
    _write(tmp_path, "r2", ["enc"], 20, vals)  # r2 recorded only enc
    st = Store(tmp_path)
    # by default, the samples both layers recorded
    sim = compare.layer_similarity(st, "demo", ["enc", "mid"], step=0)
    assert sim.attrs["n_samples"] == 20
    agree = compare.neighbour_agreement(st, "demo", "enc", "mid", step=0, k=3)
    assert agree["sample_id"].str.startswith("r1-").all()
    # explicit samples must all be present in every layer
    with pytest.raises(CompareError, match=r"1 of the 2 given samples have no activations of layer 'mid'"):
        compare.layer_similarity(st, "demo", ["enc", "mid"], step=0, sample_ids=["r1-00000000", "r2-00000000"])
    # a run filter leaving one layer without samples
    with pytest.raises(CompareError, match="layer 'mid'.*no samples match"):
        compare.layer_similarity(st, "demo", ["enc", "mid"], step=0, run_ids=["r2"])
    with pytest.raises(CompareError, match="share only 2 samples"):
        compare.layer_similarity(st, "demo", ["enc", "mid"], step=0, sample_ids=["r1-00000000", "r1-00000001"])


# -- reading the results (pure, on constructed frames) -------------------------------------------------------

def _cka(names, values):
    return pd.DataFrame(np.array(values, dtype=float), index=names, columns=names)


def test_least_similar_pair_is_the_lowest_off_diagonal_entry():
    cka = _cka(["a", "b", "c"], [[1.0, 0.9, 0.4],
                                 [0.9, 1.0, 0.7],
                                 [0.4, 0.7, 1.0]])
    assert compare.least_similar_pair(cka) == ("a", "c")
    # the diagonal never counts (a layer with itself), even where it is the lowest; NaN entries are skipped
    cka = _cka(["x", "y", "z"], [[np.nan, np.nan, 0.8],
                                 [np.nan, 0.1, 0.6],
                                 [0.8, 0.6, 0.1]])
    assert compare.least_similar_pair(cka) == ("y", "z")
    # equal values: the first pair in row order
    flat = _cka(["p", "q", "r"], [[1, .5, .5], [.5, 1, .5], [.5, .5, 1]])
    assert compare.least_similar_pair(flat) == ("p", "q")


def test_agreement_by_label_means_counts_and_order():
    agreement = pd.DataFrame({"sample_id": ["s0", "s1", "s2", "s3", "s4", "s5", "s6"],
                              "overlap": [0.5, 0.25, 0.75, 1.0, 0.5, 0.5, 0.875]})
    labels = pd.Series({"s0": "owl", "s1": "cat", "s2": "cat", "s3": "dog", "s4": "dog", "s5": "owl",
                        "s6": None, "other": "cat"})  # a sample outside the frame does not count
    out = compare.agreement_by_label(agreement, labels)
    assert list(out.columns) == ["label", "mean", "samples"]
    # least agreeing first; cat and owl tie at 0.5 and go by label; s6 (no label) counts under "(none)"
    assert out["label"].tolist() == ["cat", "owl", "dog", "(none)"]
    assert out["mean"].tolist() == [0.5, 0.5, 0.75, 0.875]
    assert out["samples"].tolist() == [2, 2, 2, 1]
    # a sample missing from the labels altogether also counts under "(none)"
    out = compare.agreement_by_label(agreement, labels.drop("s1"))
    assert out.set_index("label").loc["(none)", "samples"] == 2


def test_most_disagreeing_takes_one_label_in_turn_among_ties_then_store_order():
    ids = [f"s{i}" for i in range(8)]
    agreement = pd.DataFrame({"sample_id": ids, "overlap": [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.1, 0.0]})
    labels = pd.Series(["a", "a", "a", "a", "b", "b", "b", None], index=ids)
    out = compare.most_disagreeing(agreement, labels, 6)
    assert list(out.columns) == ["sample_id", "label", "overlap"]
    # overlap 0: s0 (a), s4 (b), s7 (no label) take the first turn in store order, then s1 (a), s5 (b), s2 (a)
    assert out["sample_id"].tolist() == ["s0", "s4", "s7", "s1", "s5", "s2"]
    assert out["overlap"].tolist() == [0.0] * 6
    assert out["label"].tolist()[:2] == ["a", "b"] and pd.isna(out["label"].iloc[2])
    # then the higher overlaps, lowest first
    assert compare.most_disagreeing(agreement, labels, 8)["sample_id"].tolist()[-2:] == ["s6", "s3"]
    assert len(compare.most_disagreeing(agreement, labels, 100)) == 8
    assert compare.most_disagreeing(agreement, labels, 0).empty
