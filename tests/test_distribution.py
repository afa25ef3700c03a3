"""pipeline.distribution and `python -m pipeline compare-runs`: the metrics mean what they say (two halves of
real digits match, a run of other classes is not covered, a collapsed set is precise without recall), they
equal a plain numpy computation on fixed arrays, and the command prints the cached table of two runs of a
store with one-line errors for bad requests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import distribution as D
from pipeline.__main__ import main
from store import Store


@pytest.fixture(autouse=True)
def _fresh_memo():
    from pipeline.features import FEATURE_CACHE

    D.clear_cache()
    FEATURE_CACHE.clear()
    yield


# -- reference computations, written out plainly -------------------------------------------------------------

def plain_prdc(A, B, k):
    dAA = np.linalg.norm(A[:, None] - A[None], axis=2)
    dBB = np.linalg.norm(B[:, None] - B[None], axis=2)
    np.fill_diagonal(dAA, np.inf)
    np.fill_diagonal(dBB, np.inf)
    ra, rb = np.sort(dAA, axis=1)[:, k - 1], np.sort(dBB, axis=1)[:, k - 1]
    dBA = np.linalg.norm(B[:, None] - A[None], axis=2)  # (b, a)
    inside = dBA <= ra[None, :]
    return {"precision": inside.any(axis=1).mean(), "recall": (dBA <= rb[:, None]).any(axis=0).mean(),
            "density": inside.sum() / (k * len(B)), "coverage": (dBA.min(axis=0) <= ra).mean()}


def plain_fd(A, B):
    mu = A.mean(axis=0) - B.mean(axis=0)
    Sa, Sb = np.cov(A, rowvar=False), np.cov(B, rowvar=False)
    ev = np.linalg.eigvals(Sa @ Sb)  # tr sqrt(Sa Sb): the eigenvalues of Sa Sb are real and >= 0
    return float(mu @ mu + np.trace(Sa) + np.trace(Sb) - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


def plain_diversity(X):
    d = np.linalg.norm(X[:, None] - X[None], axis=2)
    return d.sum() / (len(X) * (len(X) - 1))


def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.astype(np.float64), y


def clusters(n_per_class, classes, dims=16, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(10, dims)) * 10
    y = np.repeat(np.asarray(classes), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dims)) * spread, y


# -- what the numbers mean -----------------------------------------------------------------------------------

def test_two_halves_of_real_digits_match_and_their_fd_is_small_beside_the_fd_between_classes():
    X, y = digits()
    order = np.random.default_rng(0).permutation(len(X))
    a, b = order[: len(X) // 2], order[len(X) // 2:]
    m = D.manifold_metrics(X[a], X[b], k=5)
    assert m["precision"] >= 0.9 and m["recall"] >= 0.9
    assert 0.8 <= m["density"] <= 1.2 and m["coverage"] >= 0.9
    halves = D.frechet_distance(X[a], X[b])
    between = [D.frechet_distance(X[y == i], X[y == j]) for i in range(10) for j in range(i + 1, 10)]
    assert halves < 0.05 * min(between)
    table = D.distribution_table(X[a], X[b], y[a], y[b], k=5)
    assert table["class"].tolist() == ["all", *[str(i) for i in range(10)]]
    per_class = table.iloc[1:]
    assert (per_class["fd"] < 0.2 * min(between)).all()
    assert per_class["n_a"].sum() == len(a) and per_class["n_b"].sum() == len(b)


def test_a_run_of_other_classes_is_not_covered():
    A, ya = clusters(60, [0, 1, 2, 3, 4])
    B, yb = clusters(60, [5, 6, 7, 8, 9], seed=1)
    m = D.manifold_metrics(A, B, k=5)
    assert m["coverage"] <= 0.01 and m["precision"] <= 0.01 and m["recall"] <= 0.01
    same = D.manifold_metrics(A, clusters(60, [0, 1, 2, 3, 4], seed=2)[0], k=5)
    assert same["coverage"] >= 0.9
    table = D.distribution_table(A, B, ya, yb, k=5).set_index("class")
    assert table.loc["all", "coverage"] <= 0.01
    assert table.loc["0", "n_b"] == 0 and np.isnan(table.loc["0", "coverage"]) and np.isnan(table.loc["0", "fd"])
    assert table.loc["7", "n_a"] == 0 and np.isnan(table.loc["7", "diversity_a"])


def test_a_collapsed_set_is_precise_but_recalls_nothing():
    X, y = digits()
    order = np.random.default_rng(0).permutation(len(X))
    a, b = order[: len(X) // 2], order[len(X) // 2:]
    threes = X[b][y[b] == 3]
    typical = threes[np.argmin(np.linalg.norm(threes - X[a][y[a] == 3].mean(axis=0), axis=1))]
    collapsed = np.repeat(typical[None], 300, axis=0)
    m = D.manifold_metrics(X[a], collapsed, k=5)
    assert m["precision"] >= 0.9
    assert m["recall"] <= 0.01 and m["coverage"] <= 0.05
    table = D.distribution_table(X[a], collapsed, y[a], np.full(300, 3), k=5).set_index("class")
    assert table.loc["3", "diversity_b"] == pytest.approx(0, abs=1e-3)
    assert table.loc["3", "diversity_a"] > 10


@pytest.mark.parametrize("dims", [6, 30, 40])  # 30, 40: more dimensions than the samples of a set
def test_on_fixed_arrays_the_values_equal_a_plain_numpy_computation(dims):
    rng = np.random.default_rng(dims)
    A = rng.normal(size=(35, dims))
    B = rng.normal(size=(28, dims)) * 1.3 + 0.4
    for k in (1, 3, 5):
        got, want = D.manifold_metrics(A, B, k=k), plain_prdc(A, B, k)
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-12), (k, name)
    assert D.frechet_distance(A, B) == pytest.approx(plain_fd(A, B), rel=1e-6)
    assert D.frechet_distance(A, A) == pytest.approx(0, abs=1e-8)
    assert D.mean_pairwise_distance(A) == pytest.approx(plain_diversity(A), rel=1e-5)
    dAA = np.linalg.norm(A[:, None] - A[None], axis=2)
    np.fill_diagonal(dAA, np.inf)
    np.testing.assert_allclose(D.knn_radii(A, 3), np.sort(dAA, axis=1)[:, 2], rtol=1e-5)

    ya, yb = np.arange(35) % 2, np.arange(28) % 2
    table = D.distribution_table(A, B, ya, yb, k=3).set_index("class")
    for c in (0, 1):
        row = table.loc[str(c)]
        want = plain_prdc(A[ya == c], B[yb == c], 3)
        assert [row[m] for m in want] == pytest.approx(list(want.values()), abs=1e-12)
        assert row["diversity_a"] == pytest.approx(plain_diversity(A[ya == c]), rel=1e-5)
        assert row["diversity_b"] == pytest.approx(plain_diversity(B[yb == c]), rel=1e-5)
    assert table.loc["all", "diversity_a"] == pytest.approx(
        np.mean([plain_diversity(A[ya == c]) for c in (0, 1)]), rel=1e-5)
    assert table.loc["all", "precision"] == pytest.approx(plain_prdc(A, B, 3)["precision"], abs=1e-12)


def test_too_few_samples_for_k_is_a_clear_error():
    A = np.zeros((5, 3))
    with pytest.raises(D.DistributionError, match="has 5 sample.*k=5 needs more than 5"):
        D.manifold_metrics(A, A + 1, k=5)
    with pytest.raises(D.DistributionError, match="two or more samples"):
        D.frechet_distance(A[:1], A)


# -- from the store and the command line ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Runs r1 (samples 0-79) and r2 (80-159) of model demo: the same four clustered classes, two steps; r3 a run
    of another model; r4 a run of demo with 4 samples only."""
    from tests.feature_fixtures import write_clustered_run

    root = tmp_path_factory.mktemp("distribution")
    write_clustered_run(root, range(80), run_id="r1", num_samples=80)
    write_clustered_run(root, range(80, 160), run_id="r2", num_samples=80)
    write_clustered_run(root, range(40), run_id="r3", model="other", num_samples=40)
    write_clustered_run(root, range(4), run_id="r4", num_samples=4)
    _one_step_run(root, range(200, 260), "r5")
    return root


def _one_step_run(root, indices, run_id):
    """A run of model demo that recorded step 0 only (like a 1-step student beside a 2-step run)."""
    from store import RunWriter
    from tests.feature_fixtures import CLASSES, LAYERS, clustered_vector

    manifest = dict(run_id=run_id, model="demo", family="edm", checkpoint="local:/tmp/ckpt.pkl",
                    checkpoint_sha256="cd" * 32, layers=list(LAYERS), reduce={"mid": "full", "enc": "mean"},
                    settings={"steps": 1}, seed=3, num_samples=len(indices), code_version="test", device="cpu")
    w = RunWriter(root, manifest)
    idx = list(indices)
    samples = [dict(seed=100 + i, class_id=i % CLASSES, class_name=f"c{i % CLASSES}", category=f"c{i % CLASSES}",
                    label=f"{i % CLASSES}: c{i % CLASSES}", num_steps=1) for i in idx]
    acts = {layer: [dict(step=0, timestep=None, sigma=80.0, reduce=red, layer_shape=lshape,
                         array=np.stack([clustered_vector(layer, i, 1) for i in idx]))]
            for layer, (lshape, red, _) in LAYERS.items()}
    w.write_batch(idx, samples, None, acts)
    w.finish()


def test_runs_of_different_step_counts_are_compared_at_their_own_last_step_or_a_shared_one(two_runs):
    from pipeline.features import load_features

    store = Store(two_runs)

    def features(run, step):
        return load_features(store, "demo", "enc", step, "mean", run_ids=[run]).X.astype(np.float64)

    last = D.compare_runs(store, "demo", "enc", ["r1", "r5"], per_class=False)
    assert (last.loc[0, "step_a"], last.loc[0, "step_b"]) == (1, 0)
    assert last.loc[0, "fd"] == pytest.approx(plain_fd(features("r1", 1), features("r5", 0)), rel=1e-4)
    first = D.compare_runs(store, "demo", "enc", ["r1", "r5"], step=0, per_class=False)
    assert (first.loc[0, "step_a"], first.loc[0, "step_b"]) == (0, 0)
    assert first.loc[0, "fd"] == pytest.approx(plain_fd(features("r1", 0), features("r5", 0)), rel=1e-4)
    assert first.loc[0, "fd"] != pytest.approx(last.loc[0, "fd"], rel=1e-3)
    with pytest.raises(D.DistributionError, match=r"run 'r5': step 1 not recorded for demo/enc; valid steps: \[0\]"):
        D.compare_runs(store, "demo", "enc", ["r1", "r5"], step=1)


def test_compare_runs_measures_the_runs_in_one_feature_space(two_runs):
    from pipeline.features import FeatureSpec, load_features

    store = Store(two_runs)
    table = D.compare_runs(store, "demo", "enc", ["r1", "r2"], step=1)
    assert list(table.columns) == D.COLUMNS
    assert table["class"].tolist() == ["all", "0: c0", "1: c1", "2: c2", "3: c3"]
    assert (table["step_a"] == 1).all() and (table["step_b"] == 1).all()
    assert (table["n_a"].iloc[1:] == 20).all() and table.loc[0, "n_a"] == 80
    a = load_features(store, "demo", "enc", 1, FeatureSpec("mean"), run_ids=["r1"]).X
    b = load_features(store, "demo", "enc", 1, FeatureSpec("mean"), run_ids=["r2"]).X
    want = plain_prdc(a.astype(np.float64), b.astype(np.float64), 5)
    assert [table.loc[0, m] for m in want] == pytest.approx(list(want.values()), abs=1e-9)
    assert table.loc[0, "fd"] == pytest.approx(plain_fd(a.astype(np.float64), b.astype(np.float64)), rel=1e-4)
    assert table.loc[0, "precision"] >= 0.9 and table.loc[0, "recall"] >= 0.9
    last = D.compare_runs(store, "demo", "enc", "r1,r2", per_class=False)  # default: each run's last step
    assert last["class"].tolist() == ["all"] and last.loc[0, "step_a"] == 1
    assert last.loc[0, "precision"] == table.loc[0, "precision"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(runs=["r1", "nope"]), "unknown run 'nope'; runs of model 'demo': ['r1', 'r2', 'r4', 'r5']"),
    (dict(runs=["r1", "r3"]), "run 'r3' is of model 'other', not 'demo'"),
    (dict(runs=["r1"]), "need two or more runs"),
    (dict(runs=["r1", "r1"]), "given more than once"),
    (dict(layer="nope"), "unknown layer 'nope' of model 'demo'; valid: ['mid', 'enc']"),
    (dict(step=5), "run 'r1': step 5 not recorded"),
    (dict(step="soon"), "step must be a step number or 'last'"),
    (dict(runs=["r1", "r4"]), "run 'r4' has 4 sample.*k=5 needs more than 5"),
    (dict(k=0), "k must be an integer from 1 to 100"),
    (dict(model="nobody"), "unknown model 'nobody'"),
])
def test_bad_requests_are_distribution_errors(two_runs, kwargs, message):
    args = dict(model="demo", layer="enc", runs=["r1", "r2"]) | kwargs
    with pytest.raises(D.DistributionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        D.compare_runs(Store(two_runs), **args)


def test_the_command_prints_the_table_and_reads_it_from_the_store_the_second_time(two_runs, capsys, monkeypatch):
    argv = ["compare-runs", "--store", str(two_runs), "--model", "demo", "--layer", "mid", "--runs", "r1,r2",
            "--per-class", "--k", "4"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    want = D.compare_runs(Store(two_runs), "demo", "mid", ["r1", "r2"], k=4)
    lines = first.splitlines()
    assert "r1 at step 1, r2 at step 1; k=4" in lines[0]
    rows = [line.split() for line in lines if line.startswith("r1 ")]
    assert len(rows) == len(want) == 5
    assert [float(r[-9]) for r in rows] == pytest.approx(want["precision"].tolist(), abs=6e-4)
    assert [float(r[-5]) for r in rows] == pytest.approx(want["fd"].tolist(), rel=1e-3)
    cached = Store(two_runs).derived.scan()
    assert any(e.kind == "distribution" and not e.stale for e in cached)

    def fail(*a, **kw):
        raise AssertionError("recomputed instead of read from the store")

    D.clear_cache()
    monkeypatch.setattr(D, "distribution_table", fail)
    assert main(argv) == 0
    again = capsys.readouterr().out
    strip = lambda text: [x for x in text.splitlines()[1:]]  # noqa: E731 - the first line has the time
    assert strip(again) == strip(first)


@pytest.mark.parametrize("extra, message", [
    (["--runs", "r1,nope"], "error: unknown run 'nope'"),
    (["--runs", "r1,r3"], "error: run 'r3' is of model 'other', not 'demo'"),
    (["--runs", "r1,r2", "--step", "7"], "error: run 'r1': step 7 not recorded for demo/enc; valid steps: [0, 1]"),
    (["--runs", "r1,r4"], "error: run 'r4' has 4 sample(s) at step 1 of 'enc': k=5 needs more than 5"),
])
def test_the_command_says_what_is_wrong_in_one_line(two_runs, capsys, extra, message):
    assert main(["compare-runs", "--store", str(two_runs), "--model", "demo", "--layer", "enc", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err


def test_compare_runs_table_is_a_frame_the_page_can_use(two_runs):
    table = D.compare_runs(Store(two_runs), "demo", "mid", ["r1", "r2"], step="last", per_class=True)
    assert isinstance(table, pd.DataFrame)
    assert table[["precision", "recall", "density", "coverage", "fd"]].notna().all().all()
