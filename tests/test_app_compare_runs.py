"""AppTest: the Compare runs page on a small store with a generated run, a real run and two checkpoint runs.
The metrics table is `compare_runs`'s, a chosen class filters the map to exactly that class, the checkpoint slider
switches the runs of the map and the table, the link lines join samples of one seed and class (never a real image),
and the CSV download holds the table."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import app_fixtures as fx

PAGE = "app_pages/compare_runs.py"
MODEL, LAYER = "digits", "midblock"
PER_RUN = 60  # 6 samples per class: more than k = 5, so every class has manifold metrics
DIGITS = fx.DIGITS


def _run(root, run_id, sigmas, *, kind=None, checkpoint_step=None, shift=0.0, spread=0.5, tag_step=None, seed=1):
    """A run of the digits model: class c's activations around a fixed centre (+ `shift`), seeds 500 + i for
    every run (so runs pair up by seed and class), digit tiles as images."""
    from store import RunWriter

    settings = {"steps": len(sigmas), "sigmas": list(sigmas), "resolution": 16}
    if kind:
        settings["kind"] = kind
    if checkpoint_step is not None:
        settings["checkpoint_step"] = checkpoint_step
    manifest = dict(run_id=run_id, model=MODEL, family="synthetic", checkpoint=f"synthetic-{run_id}",
                    checkpoint_sha256=f"synthetic-{run_id}", layers=[LAYER], seed=seed, num_samples=PER_RUN,
                    reduce={LAYER: "mean"}, settings=settings)
    rng = np.random.default_rng(seed)
    labels = np.arange(PER_RUN) % 10
    centres = np.random.default_rng(0).normal(0, 3.0, size=(10, 16))
    samples = [dict(seed=500 + i, class_id=int(c), class_name=DIGITS[c], category=DIGITS[c],
                    label=f"{c}: {DIGITS[c]}", num_steps=len(sigmas)) for i, c in enumerate(labels)]
    images = [fx._tile(int(c), 16, rng) for c in labels]
    steps = [tag_step] if tag_step is not None else list(range(len(sigmas)))
    acts = {LAYER: [dict(step=int(s), timestep=None, sigma=float(sig), reduce="mean", layer_shape=(16, 4, 4),
                         array=(centres[labels] + shift + rng.normal(0, spread, (PER_RUN, 16))).astype(np.float32))
                    for s, sig in zip(steps, sigmas, strict=True)]}
    with RunWriter(root, manifest) as w:
        w.write_batch(np.arange(PER_RUN), samples, images, acts)


def build_compare_store(root: str | Path) -> Path:
    """A generated 2-step run, real digits tagged at its last step (1), and two 1-step checkpoint runs (step 0)
    of training steps 100 and 200: the runs sit at different steps, the checkpoints drift towards the data."""
    root = Path(root)
    _run(root, "gen", (8.0, 0.5), seed=1)
    _run(root, "real", (0.5,), kind="real", tag_step=1, spread=0.8, seed=2)
    _run(root, "ck-200", (8.0,), checkpoint_step=200, shift=0.5, seed=3)
    _run(root, "ck-100", (8.0,), checkpoint_step=100, shift=2.0, spread=0.3, seed=4)
    return root


@pytest.fixture(scope="module")
def compare_store(tmp_path_factory) -> Path:
    return build_compare_store(tmp_path_factory.mktemp("compare_runs") / "store")


@pytest.fixture
def env(compare_store, monkeypatch, tmp_path):
    with fx.app_pointed_at(compare_store, monkeypatch, tmp_path) as fake:
        yield fake


def _open(query: dict | None = None):
    """A session on the page (Explore runs first, as the default page; the page's query is put back before the
    switch: it reads the URL on its first run). PCA maps: instant and deterministic."""
    return _settle(fx.open_page(PAGE, {"crmeth": "pca", **(query or {})}, timeout=120))


def _settle(at, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline and not at.exception and any("computing…" in str(c.value) for c in at.caption):
        time.sleep(0.2)
        at.run()
    assert not at.exception, at.exception
    return at


def _map_ids(at) -> list[str]:
    return fx.static_json(fx.map_data(at)["points_url"])["ids"]


def _metrics(at) -> pd.DataFrame:
    for el in at.dataframe:
        if "precision" in el.value.columns:
            return el.value
    raise AssertionError("no metrics table")


def _runs_table(at) -> pd.DataFrame:
    for el in at.dataframe:
        if "measured at step" in el.value.columns:
            return el.value
    raise AssertionError("no runs table")


def _chart_data(chart) -> pd.DataFrame:
    """The (first) dataset of a Vega-Lite chart element, as a frame."""
    import pyarrow as pa

    data = chart.proto.datasets[0].data.data
    return pa.ipc.open_stream(data).read_all().to_pandas()


def test_page_shows_the_runs_steps_the_joint_map_and_compare_runs_table(env, compare_store):
    from app import navigation
    from pipeline import distribution
    from store import Store

    assert "Compare runs" in [p.title for p in navigation.available()]
    at = _open()
    assert at.multiselect(key="cr_runs").value == ["real", "gen", "ck-100", "ck-200"]  # real first
    runs = _runs_table(at).set_index("run")
    # one checkpoint at a time: the first one beside the fixed runs; each run at its own last step, with σ
    assert list(runs.index) == ["real", "gen", "ck-100"]
    assert runs["measured at step"].to_dict() == {"real": 1, "gen": 1, "ck-100": 0}
    assert runs["σ"].to_dict() == pytest.approx({"real": 0.5, "gen": 0.5, "ck-100": 8.0})
    assert "different steps" in fx.page_text(at)
    # the joint map: every sample of the three runs, each once (at its run's step), coloured by run
    ids = _map_ids(at)
    assert len(ids) == 3 * PER_RUN and {i.rsplit("-", 1)[0] for i in ids} == {"real", "gen", "ck-100"}
    colors = fx.static_json(fx.map_data(at)["color_url"])
    assert colors["title"] == "run" and colors["names"] == ["real", "gen", "ck-100"]  # the runs on the map
    # the table is compare_runs' own
    expected = distribution.compare_runs(Store(compare_store), MODEL, LAYER, ["real", "gen", "ck-100"])
    pd.testing.assert_frame_equal(_metrics(at).reset_index(drop=True), expected, check_dtype=False,
                                  check_like=True)
    assert set(expected["class"]) == {"all", *(f"{c}: {DIGITS[c]}" for c in range(10))}


def test_link_lines_join_one_seed_and_class_across_runs_never_real_images(env):
    at = _open()
    links = fx.map_data(at)["links"]
    assert len(links) == PER_RUN  # every generated sample with its checkpoint twin
    for link in links:
        gen, ck = link["ids"]
        assert gen.startswith("gen-") and ck.startswith("ck-100-") and gen[-8:] == ck[-8:]
    at.toggle(key="cr_links").set_value(False).run()
    assert not fx.map_data(at)["links"]


def test_choosing_a_class_filters_the_map_to_exactly_that_class(env, compare_store):
    from store import Store

    at = _open()
    before = _map_ids(at)
    at.selectbox(key="cr_class_pick").set_value("3: three").run()
    _settle(at)
    after = _map_ids(at)
    labels = Store(compare_store).samples(model=MODEL).set_index("sample_id")["label"]
    assert set(after) == {s for s in before if labels[s] == "3: three"}
    assert len(after) == 3 * (PER_RUN // 10)
    assert all(len(link["ids"]) == 2 and set(link["ids"]) <= set(after) for link in fx.map_data(at)["links"])
    assert at.query_params.get("crc") in ("3: three", ["3: three"])
    at.selectbox(key="cr_class_pick").set_value("all").run()
    assert sorted(_map_ids(at)) == sorted(before)


def test_the_checkpoint_slider_switches_the_map_and_the_metrics(env, compare_store):
    from pipeline import distribution
    from store import Store

    at = _open()
    # the overall metrics of each checkpoint against the real digits, by training step, beside the slider
    charts = [_chart_data(c) for c in at.get("vega_lite_chart")]
    fd = next(t for t in charts if "fd" in t.columns and "checkpoint_step" in t.columns)
    plan_fd = [distribution.compare_runs(Store(compare_store), MODEL, LAYER, ["real", r]).query("`class` == 'all'")
               ["fd"].item() for r in ("ck-100", "ck-200")]
    assert fd["checkpoint_step"].tolist() == [100, 200] and fd["fd"].tolist() == pytest.approx(plan_fd)
    slider = at.select_slider(key="cr_ckpt")
    assert list(slider.options) == ["step 100 · ck-100", "step 200 · ck-200"]
    first = _metrics(at)
    slider.set_value("ck-200").run()
    _settle(at)
    ids = _map_ids(at)
    assert {i.rsplit("-", 1)[0] for i in ids} == {"real", "gen", "ck-200"}
    table = _metrics(at)
    assert set(table["run_b"]) == {"gen", "ck-200"}
    expected = distribution.compare_runs(Store(compare_store), MODEL, LAYER, ["real", "gen", "ck-200"])
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False, check_like=True)
    # the later checkpoint is nearer the real digits: a smaller Fréchet distance than the earlier one
    fd = lambda t, run: t.loc[(t["run_b"] == run) & (t["class"] == "all"), "fd"].item()  # noqa: E731
    assert fd(table, "ck-200") < fd(first, "ck-100")
    # all checkpoints at once
    at.toggle(key="cr_over").set_value(False).run()
    _settle(at)
    assert {i.rsplit("-", 1)[0] for i in _map_ids(at)} == {"real", "gen", "ck-100", "ck-200"}


def test_csv_export_holds_the_table(env, monkeypatch):
    from pipeline import distribution
    from tests.app_fixtures import record_downloads

    captured = record_downloads(monkeypatch)
    at = _open()
    table = _metrics(at)
    csv, name = captured["Metrics (CSV)"]
    got = pd.read_csv(io.BytesIO(csv))
    assert name == "compare-runs-digits-midblock-3runs-metrics.csv"
    assert list(got.columns) == list(distribution.COLUMNS)  # compare_runs' own columns, in its order
    pd.testing.assert_frame_equal(got, table.reset_index(drop=True), check_dtype=False, check_like=True)
    png, png_name = captured["Map (PNG)"]
    assert png_name.endswith(".png") and png()[:4] == b"\x89PNG"
    html, _ = captured["Map (HTML)"]
    text = html().decode()
    assert "plotly" in text and "same seed and class" in text and "hover-thumb" in text


def test_a_shared_link_reopens_the_page_and_bad_values_fall_back(env):
    at = _open({"crr": "gen~ck-100~nope", "crc": "5: five", "crs": "bogus", "crk": "x"})
    assert at.multiselect(key="cr_runs").value == ["gen", "ck-100"]
    assert at.selectbox(key="cr_step").value == "last" and at.slider(key="cr_k").value == 5
    ids = _map_ids(at)
    assert len(ids) == 2 * (PER_RUN // 10) and all(i.rsplit("-", 1)[0] in ("gen", "ck-100") for i in ids)
    at.multiselect(key="cr_runs").set_value(["gen"]).run()
    assert "Choose two or more runs" in fx.page_text(at)


def test_a_shared_step_measures_every_run_there(env, compare_store):
    from pipeline import distribution
    from store import Store

    at = _open({"crr": "gen~ck-100~ck-200", "crot": "0"})
    step = at.selectbox(key="cr_step")
    assert list(step.options) == ["each run's last step", "step 0 of every run (σ 8)"]
    step.set_value("0").run()
    _settle(at)
    runs = _runs_table(at).set_index("run")
    assert runs["measured at step"].tolist() == [0, 0, 0] and runs["σ"].tolist() == pytest.approx([8.0] * 3)
    assert "every run at step 0" in fx.page_text(at)
    assert len(_map_ids(at)) == 3 * PER_RUN
    expected = distribution.compare_runs(Store(compare_store), MODEL, LAYER, ["gen", "ck-100", "ck-200"], step=0)
    pd.testing.assert_frame_equal(_metrics(at).reset_index(drop=True), expected, check_dtype=False, check_like=True)
    assert set(expected["step_a"]) == {0}
