"""Feature matrices for projections: specs, defaults, means from stored maps, filters, PCA cache."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import features as F
from pipeline.features import FeatureError, FeatureSpec
from store import Store
from tests.feature_fixtures import STEPS, clustered_vector, write_clustered_run


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("features-store")
    write_clustered_run(root, range(120))
    write_clustered_run(root, range(40), run_id="r2")
    return Store(root)


@pytest.fixture(autouse=True)
def _fresh_cache():
    F.FEATURE_CACHE.clear()
    yield
    F.FEATURE_CACHE.clear()


# -- specs ---------------------------------------------------------------------------------------------------

def test_spec_parse_names_dicts_and_ids():
    assert FeatureSpec.parse(None) == FeatureSpec(kind="auto")
    assert FeatureSpec.parse("mean") == FeatureSpec(kind="mean")
    assert FeatureSpec.parse("pca") == FeatureSpec(kind="full", pca=F.DEFAULT_PCA)
    spec = FeatureSpec.parse("mean+std+pca20")
    assert spec == FeatureSpec(kind="mean", pca=20, standardize=True)
    assert spec.id == "mean+std+pca20"
    assert FeatureSpec.parse(spec.id) == spec
    assert FeatureSpec.parse({"kind": "full", "pca": 8}).id == "full+pca8"


@pytest.mark.parametrize("bad, words", [
    ("median", ["unknown feature", "mean", "full"]),
    ("mean+log", ["unknown feature modifier", "+std"]),
    ({"kind": "mean", "pcs": 3}, ["unknown feature fields", "pca"]),
    ({"kind": "full", "pca": 1}, ["between 2 and"]),
    ({"kind": "full", "pca": "many"}, ["integer"]),
])
def test_spec_errors_say_what_is_valid(bad, words):
    with pytest.raises(FeatureError) as e:
        FeatureSpec.parse(bad)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("shape, expected", [
    ((64,), FeatureSpec("mean")),  # stored channel means: used as they are
    ((768,), FeatureSpec("mean", pca=50)),  # wide: PCA
    ((8, 2, 2), FeatureSpec("full")),  # 32 values: the whole map
    ((32, 4, 4), FeatureSpec("full", pca=50)),  # 512 values: whole map, then PCA
    ((128, 8, 8), FeatureSpec("mean")),  # 8192 values: channel means (128)
    ((768, 8, 8), FeatureSpec("mean", pca=50)),  # channel means still wide: PCA
])
def test_default_spec_by_layer_size(shape, expected):
    assert F.default_spec(shape) == expected
    assert F.resolve_spec(FeatureSpec(), shape) == expected
    assert F.resolve_spec(FeatureSpec("auto", standardize=True), shape).standardize


# -- numeric core --------------------------------------------------------------------------------------------

def test_channel_means_from_stored_maps():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(5, 3, 4, 4)).astype(np.float32)
    flat = maps.reshape(5, -1)
    np.testing.assert_allclose(F.channel_means(flat, (3, 4, 4)), maps.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    means = maps.mean(axis=(2, 3))
    assert F.channel_means(means, (3,)) is means  # stored means are already means
    with pytest.raises(FeatureError, match="shape"):
        F.channel_means(flat, (3, 2, 2))


def test_standardize_and_pca():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 6)).astype(np.float32) * [1, 2, 3, 4, 5, 6] + 7
    X[:, 5] = 3.0  # constant column
    Z = F.standardize(X)
    np.testing.assert_allclose(Z[:, :5].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(Z[:, :5].std(axis=0), 1, atol=1e-4)
    assert np.all(Z[:, 5] == 0)
    P = F.to_features(X, (6,), FeatureSpec("full", pca=3))
    assert P.shape == (50, 3) and P.dtype == np.float32
    # more components than dimensions: an exact rotation, distances kept
    R = F.to_features(X, (6,), FeatureSpec("full", pca=10))
    assert R.shape == (50, 6)
    d = lambda A: np.linalg.norm(A[:, None] - A[None], axis=2)  # noqa: E731
    np.testing.assert_allclose(d(R), d(X), rtol=1e-3, atol=1e-3)


# -- from the store ------------------------------------------------------------------------------------------

def test_build_features_mean_of_a_stored_map(store):
    ids, X = F.build_features(store, "demo", "mid", 1, "mean")
    acts = store.activations("demo", "mid", 1)
    assert list(ids) == list(acts.sample_ids)
    assert list(ids[:2]) == ["r1-00000000", "r1-00000001"] and ids[-1] == "r2-00000039"
    expected = acts.matrix.reshape(len(ids), 8, 4).mean(axis=2)
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-5)
    ids_full, X_full = F.build_features(store, "demo", "mid", 1, "full")
    assert X_full.shape == (160, 32)
    _, X_enc = F.build_features(store, "demo", "enc", 0, "mean")
    assert X_enc.shape == (160, 16)  # stored means stay as they are


def test_build_features_filters(store):
    ids, X = F.build_features(store, "demo", "mid", 0, "full", run_ids=["r2"])
    assert len(ids) == 40 and all(s.startswith("r2-") for s in ids)
    want = ["r1-00000005", "r2-00000003", "r1-00000002"]
    ids, X = F.build_features(store, "demo", "mid", 0, "full", sample_ids=want)
    assert list(ids) == ["r1-00000002", "r1-00000005", "r2-00000003"]  # the store's order
    np.testing.assert_allclose(X[1], clustered_vector("mid", 5, 0).ravel(), rtol=1e-2, atol=1e-2)  # float16
    with pytest.raises(FeatureError, match="empty"):
        F.build_features(store, "demo", "mid", 0, "full", sample_ids=[])
    with pytest.raises(FeatureError, match="no samples match"):
        F.build_features(store, "demo", "mid", 0, "full", sample_ids=["nope-00000001"])


def test_pca_features_are_cached_in_the_store(store, monkeypatch):
    spec = FeatureSpec("full", pca=5)
    f1 = F.load_features(store, "demo", "mid", 0, spec)
    assert f1.X.shape == (160, 5)
    F.FEATURE_CACHE.clear()

    def no_pca(*a, **k):
        raise AssertionError("PCA recomputed despite the stored artifact")

    monkeypatch.setattr(F, "pca", no_pca)
    f2 = F.load_features(store, "demo", "mid", 0, spec)
    np.testing.assert_array_equal(f1.X, f2.X)
    assert f2.key == f1.key
    assert F.load_features(store, "demo", "mid", 0, spec) is f2  # then from memory


def test_features_key_changes_with_every_input():
    filt = F.filter_description(None, None)
    base = F.features_key("v1", "demo", "mid", 0, FeatureSpec("mean"), filt)
    assert base == F.features_key("v1", "demo", "mid", 0, FeatureSpec("mean"), F.filter_description())
    others = [
        F.features_key("v2", "demo", "mid", 0, FeatureSpec("mean"), filt),
        F.features_key("v1", "other", "mid", 0, FeatureSpec("mean"), filt),
        F.features_key("v1", "demo", "enc", 0, FeatureSpec("mean"), filt),
        F.features_key("v1", "demo", "mid", 1, FeatureSpec("mean"), filt),
        F.features_key("v1", "demo", "mid", 0, FeatureSpec("mean", standardize=True), filt),
        F.features_key("v1", "demo", "mid", 0, FeatureSpec("mean"), F.filter_description(["r1"])),
        F.features_key("v1", "demo", "mid", 0, FeatureSpec("mean"), F.filter_description(None, ["a"])),
    ]
    assert len({base, *others}) == 8
    # a filter is a set: order and duplicates do not matter
    assert F.filter_description(["b", "a", "a"], ["y", "x"]) == F.filter_description(["a", "b"], ["x", "y"])
    assert F.filter_id(F.filter_description()) == "all"


# -- every step in one matrix ----------------------------------------------------------------------------------

def test_point_ids_and_steps_parse():
    assert F.point_id("r1-00000007", 3) == "r1-00000007@3"
    assert F.split_point_id("r1-00000007@3") == ("r1-00000007", 3)
    assert F.split_point_id("r1-00000007") == ("r1-00000007", None)
    assert F.split_point_id("run@x-00000001") == ("run@x-00000001", None)  # no step after the last @
    assert [F.parse_step(v) for v in (None, 2, -1, "3", " ALL ", "all")] == [None, 2, -1, 3, "all", "all"]
    for bad in ("every", 1.5, True, "2.0"):
        with pytest.raises(FeatureError, match="'all'"):
            F.parse_step(bad)


def test_all_steps_stack_every_step_as_points(store):
    f = F.load_features(store, "demo", "mid", "all", "full", run_ids=["r2"])
    assert f.step == "all" and f.X.shape == (2 * 40, 32) and f.key.startswith("sall-full-")
    assert list(f.sample_ids[:2]) == ["r2-00000000@0", "r2-00000001@0"]
    assert f.sample_ids[40] == "r2-00000000@1" and f.sample_ids[-1] == "r2-00000039@1"
    for step in range(STEPS):  # the rows of each step are that step's matrix, in the store's order
        ids, X = F.build_features(store, "demo", "mid", step, "full", run_ids=["r2"])
        rows = slice(step * 40, (step + 1) * 40)
        assert [F.split_point_id(p) for p in f.sample_ids[rows]] == [(s, step) for s in ids]
        np.testing.assert_array_equal(f.X[rows], X)
    # a sample filter keeps every step of those samples; PCA is fitted on all points together
    g = F.load_features(store, "demo", "mid", "all", FeatureSpec("full", pca=4),
                        sample_ids=["r1-00000002", "r1-00000009"])
    assert list(g.sample_ids) == ["r1-00000002@0", "r1-00000009@0", "r1-00000002@1", "r1-00000009@1"]
    assert g.X.shape == (4, 4)
    assert F.features_key("v", "demo", "mid", "all", FeatureSpec("mean"), {}) != \
        F.features_key("v", "demo", "mid", 0, FeatureSpec("mean"), {})
