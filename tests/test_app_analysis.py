"""AppTest: the Analysis page (class separation, clusters, outliers, linked facets), on the synthetic app store
and on a tiny text-to-image store, with the fast stand-in projection engine of the other app tests."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests import app_fixtures as fx

app_store = fx.app_store  # pytest fixtures
app_env = fx.app_env

ANALYSIS = "app_pages/analysis.py"


def _open(query: dict | None = None, settle: bool = True):
    """A session on the Analysis page. AppTest runs the default page (Explore) first, which draws its map (the
    page then finds it)."""
    at = fx.open_page(ANALYSIS, query, query_on_entry=True)
    return _settle(at) if settle else at


def _settle(at, timeout: float = 120):
    """Rerun until no analysis job is running (their first short wait may end before they do)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not at.exception and any(
            w in str(c.value) for c in at.caption for w in ("computing…", "building…")):
        time.sleep(0.2)
        at.run()
    assert not at.exception, at.exception
    return at


_MARK = {"ana_sep_table": "silhouette", "ana_pairs": "mixing", "ana_clusters": "medoid 1"}


def _table(at, key: str):
    """A table of the page, known by a column of its own."""
    for el in at.dataframe:
        if _MARK[key] in el.value.columns:
            return el.value
    raise AssertionError(f"no table {key}")


def test_page_is_listed_and_renders_the_three_analyses(app_env, app_store):
    from app import navigation
    from pipeline import analysis
    from store import Store

    assert "Analysis" in [p.title for p in navigation.available()]
    at = _open()
    texts = fx.page_text(at)
    assert "digits · midblock · step 2" in texts
    sep = analysis.class_separation(Store(app_store), "digits", "midblock", 2, k=10)
    table = _table(at, "ana_sep_table")
    assert sorted(table["class"]) == sorted(f"{c}: {n}" for c, n in enumerate(fx.DIGITS))
    assert table["purity"].round(6).tolist() == sep.table["purity"].round(6).tolist()
    pairs = _table(at, "ana_pairs")
    assert (pairs["class_a"].tolist(), pairs["class_b"].tolist()) == (sep.pairs["class_a"].tolist(),
                                                                      sep.pairs["class_b"].tolist())
    clusters = _table(at, "ana_clusters")
    assert clusters["size"].sum() == 180 and {"name", "majority", "purity", "spread", "medoid 1"} <= set(clusters)
    assert clusters["medoid 1"].str.startswith("data:image/webp;base64,").all()
    assert "HDBSCAN on 180 samples" in texts
    # the outlier gallery: the 12 highest ranks, each linking to Explore with the same view and its sample
    out = analysis.outliers(Store(app_store), "digits", "midblock", 2, k=10)
    links = [m.value for m in at.markdown if "open in Explore" in str(m.value)]
    assert len(links) == 12
    for rank, text in enumerate(links[:3], start=1):
        href = text.split("](", 1)[1].rstrip(")")
        target = urlsplit(href)
        q = dict(parse_qsl(target.query))
        assert target.path == "explore"
        assert q == {"model": "digits", "layer": "midblock", "step": "2",
                     "sel": out.loc[out["rank"] == rank, "sample_id"].iloc[0]}
    # a link opens Explore with that sample selected
    from streamlit.testing.v1 import AppTest

    from app import state

    href = links[0].split("](", 1)[1].rstrip(")")
    explore = AppTest.from_file(fx.ENTRY, default_timeout=60)
    for k, v in parse_qsl(urlsplit(href).query):
        explore.query_params[k] = v
    explore.run()
    assert not explore.exception
    assert explore.session_state[state.SELECTED] == out.loc[out["rank"] == 1, "sample_id"].iloc[0]
    assert any("Neighbours" in str(m.value) for m in explore.markdown)  # its selection panel
    # the map is Explore's (one projection, not refitted) and colours by class
    m = fx.map_data(at)
    assert m["revision"] and len(fx.static_json(m["points_url"])["ids"]) == 180
    assert fx.static_json(m["color_url"])["title"] == "class"
    assert app_env.calls and all(not c["force"] for c in app_env.calls)
    assert len({(c["layer"], c["step"], repr(sorted(c["params"].items()))) for c in app_env.calls}) == 1


def test_a_facet_filter_from_the_url_narrows_the_map_and_the_analyses_to_exactly_its_samples(app_env, app_store):
    from store import Store

    samples = Store(app_store).samples(model="digits")
    at = _open({"model": "digits", "layer": "midblock", "step": "2", "f.run_id": "digits-b",
                "f.label": "3: three~5: five", "f.nope": "x"})
    assert "Filters not used (no such facet here): `nope`" in fx.page_text(at)  # said, then left out
    expected = set(samples.loc[samples["run_id"].eq("digits-b") & samples["label"].isin(["3: three", "5: five"]),
                               "sample_id"])
    assert len(expected) == 12
    m = fx.map_data(at)
    assert set(fx.static_json(m["points_url"])["ids"]) == expected  # the map is filtered
    assert "12 of 180 points" in fx.page_text(at)
    assert _table(at, "ana_sep_table")["samples"].sum() == 12  # the analyses measure the same samples
    q = dict(at.query_params)
    assert q["f.run_id"] == "digits-b" and q["f.label"] == "3: three~5: five" and "f.nope" not in q
    # the active filters are shown and removable: removing the label filter widens to the whole run
    chip = next(b for b in at.button if b.key == "rm_filter_label")
    chip.click().run()
    _settle(at)
    assert set(fx.static_json(fx.map_data(at)["points_url"])["ids"]) == set(samples.loc[samples["run_id"] == "digits-b",
                                                                          "sample_id"])
    assert "f.label" not in dict(at.query_params) and dict(at.query_params)["f.run_id"] == "digits-b"


def test_a_clicked_facet_filters_the_map_to_exactly_those_samples(app_env, app_store):
    """The chart's click handler (what a click on a bar sends) through the page: the map keeps exactly the
    samples of the clicked value, and the filter lands in the URL."""
    from app import analysis_view as av
    from app import facets
    from store import Store

    at = _open()
    # a click on the bar "digits-a" of the run facet, as Vega-Lite reports it to the chart's callback
    filters = facets.from_selection(at.session_state[av.FILTERS], facets.Facet("run_id", "run", "category"),
                                    [{"value": "digits-a"}])
    at.session_state[av.FILTERS] = filters
    at.run()
    _settle(at)
    samples = Store(app_store).samples(model="digits")
    ids = set(fx.static_json(fx.map_data(at)["points_url"])["ids"])
    assert ids == set(samples.loc[samples["run_id"] == "digits-a", "sample_id"]) and len(ids) == 120
    assert dict(at.query_params)["f.run_id"] == "digits-a"


def test_a_chosen_pair_highlights_its_samples_and_colours_follow_the_choice(app_env, app_store):
    from pipeline import analysis
    from store import Store

    at = _open()
    sep = analysis.class_separation(Store(app_store), "digits", "midblock", 2, k=10)
    pair = (sep.pairs.loc[0, "class_a"], sep.pairs.loc[0, "class_b"])
    at.selectbox(key="ana_pair").set_value(pair).run()
    _settle(at)
    m = fx.map_data(at)
    assert m["highlight"] and set(m["highlight"]) == set(sep.cell(*pair))
    assert dict(at.query_params)["cell"] == "~".join(pair)
    assert "samples with neighbours in" in fx.page_text(at)
    at.radio(key="ana_color").set_value("cluster").run()
    _settle(at)
    payload = fx.static_json(fx.map_data(at)["color_url"])
    assert payload["kind"] == "category" and payload["title"] == "cluster"
    at.radio(key="ana_color").set_value("lof").run()
    _settle(at)
    payload = fx.static_json(fx.map_data(at)["color_url"])
    assert payload["kind"] == "numeric" and payload["max"] > 1.0  # LOF: above 1 for the most unusual
    assert dict(at.query_params)["acol"] == "lof"


def test_kmeans_uses_the_chosen_k_and_a_chosen_cluster_is_highlighted(app_env, app_store):
    from pipeline import analysis
    from store import Store

    at = _open()
    at.radio(key="ana_method").set_value("kmeans").run()
    at.slider(key="ana_nc").set_value(4).run()
    _settle(at)
    assert len(_table(at, "ana_clusters")) == 4
    assert "k-means on 180 samples" in fx.page_text(at)
    assert dict(at.query_params)["cm"] == "kmeans" and dict(at.query_params)["ck"] == "4"
    at.selectbox(key="ana_cluster_pick").set_value(1).run()
    _settle(at)
    clu = analysis.clusters(Store(app_store), "digits", "midblock", 2, method="kmeans", n_clusters=4)
    members = set(clu.assignments.loc[clu.assignments["cluster"] == 1, "sample_id"])
    assert set(fx.map_data(at)["highlight"]) == members and dict(at.query_params)["clu"] == "1"


def test_explore_settings_carry_over_to_the_analysis_page(app_env):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(fx.ENTRY, default_timeout=60)
    for k, v in {"model": "digits", "layer": "encoder_bottleneck", "step": "1", "runs": "digits-b"}.items():
        at.query_params[k] = v
    at.run()  # Explore, opened from a link
    at.switch_page(ANALYSIS).run()  # then the menu: no query of its own
    _settle(at)
    assert "digits · encoder_bottleneck · step 1" in fx.page_text(at)
    assert at.multiselect(key="ana_runs").value == ["digits-b"]
    assert len(fx.static_json(fx.map_data(at)["points_url"])["ids"]) == 60  # Explore's map of run b, found, not refitted
    assert _table(at, "ana_sep_table")["samples"].sum() == 60


def test_without_a_map_the_page_says_so_and_computes_it_when_asked(app_env):
    """A layer Explore has not drawn: the tables come anyway, the map waits for the button; the choice is
    Explore's too."""
    from app import state

    at = _open()
    at.selectbox(key="ana_layer").set_value("encoder_bottleneck").run()
    _settle(at)
    assert at.session_state[state.VIEW].layer == "encoder_bottleneck"  # shared with Explore
    assert not at.get("bidi_component")
    assert "has no map of these settings yet" in fx.page_text(at)
    assert len(_table(at, "ana_sep_table")) == 10
    n_fits = len(app_env.calls)
    next(b for b in at.button if b.key == "compute_map").click().run()
    _settle(at)
    assert len(fx.static_json(fx.map_data(at)["points_url"])["ids"]) == 180
    assert len(app_env.calls) == n_fits + 1 and app_env.calls[-1]["layer"] == "encoder_bottleneck"
    at.switch_page("app_pages/explore.py").run()  # Explore opens on the layer chosen here
    assert at.selectbox(key="w_layer").value == "encoder_bottleneck"


def test_the_prompt_model_is_analysed_by_category(app_env):
    at = _open({"model": "words"})
    table = _table(at, "ana_sep_table")
    assert sorted(table["class"]) == ["animals", "food", "vehicles"]
    assert "classes by **category**" in fx.page_text(at)
    assert "words" in _table(at, "ana_clusters").columns  # prompt words name clusters


def test_the_report_button_builds_the_report_as_a_job_and_offers_both_files(app_env, app_store):
    from app import analysis_view as av
    from app import data, state

    at = _open({"model": "digits", "layer": "midblock", "step": "2", "method": "pca"})  # PCA: no UMAP fit here
    assert not at.get("download_button")
    next(b for b in at.button if b.key == "make_report").click().run()
    _settle(at)
    labels = [el.proto.label for el in at.get("download_button")]
    assert labels == ["HTML", "PNG"]
    job = data.jobs().find(av.report_key(str(app_store), at.session_state[state.VIEW]))
    assert job is not None and not job.error
    assert job.result.html.lstrip().lower().startswith(b"<!doctype html") and b"midblock" in job.result.html
    assert job.result.png.startswith(b"\x89PNG")


# ------------------------------------------------------------------------------ a tiny text-to-image store

@pytest.fixture(scope="module")
def t2i_store(tmp_path_factory):
    from pipeline.generate import generate
    from tests.t2i_fixtures import build, tiny_files

    files = tiny_files(tmp_path_factory)
    root = tmp_path_factory.mktemp("t2i-analysis") / "store"
    generate(build(files, "sd15"), root, 16, ["mid"], seed=1, batch_size=8, progress=False)
    return root


def test_a_tiny_text_to_image_store(t2i_store, monkeypatch, tmp_path):
    from store import Store

    model = Store(t2i_store).models()[0]
    with fx.app_pointed_at(t2i_store, monkeypatch, tmp_path):
        at = _open({"model": model})
        table = _table(at, "ana_sep_table")
        assert sorted(table["class"]) == ["animals", "architecture", "food", "vehicles"]
        assert table["samples"].sum() == 16
        assert len(_table(at, "ana_clusters")) >= 1
        assert len([m for m in at.markdown if "open in Explore" in str(m.value)]) == 12
        assert len(fx.static_json(fx.map_data(at)["points_url"])["ids"]) == 16


def test_a_cancelled_analysis_stays_cancelled_until_asked_again(app_env, monkeypatch):
    import threading

    from app import data
    from pipeline import analysis

    real, release = analysis.class_separation, threading.Event()

    def slow(*args, progress=None, **kwargs):  # works in steps, reporting progress, until released
        while not release.wait(0.05):
            progress(0.1, "slow")  # the page's progress callback stops a cancelled job here
        return real(*args, progress=progress, **kwargs)

    monkeypatch.setattr(analysis, "class_separation", slow)
    monkeypatch.setattr(data, "JOB_WAIT_S", 0.2)
    at = _open(settle=False)
    keys = data.jobs().jobs.keys()  # (an LRU: keys() is a list, it does not iterate)
    knn_key = next(k for k in keys if k[0] == "analysis-knn")
    cancel = [b for b in at.button if b.key == f"cancel_{abs(hash(knn_key))}"]
    assert cancel, "the running analysis shows a Cancel button"
    started = len(data.jobs().jobs)
    cancel[0].click().run()
    deadline = time.time() + 20
    while "Class separation: cancelled." not in fx.page_text(at) and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    assert "Class separation: cancelled." in fx.page_text(at)
    keys = data.jobs().jobs.keys()
    knn = [data.jobs().find(k) for k in keys if k[0] == "analysis-knn"]
    assert knn and all(j.error == "cancelled" and not j.running for j in knn)  # the worker stopped
    at.run()
    assert "Class separation: cancelled." in fx.page_text(at) and len(data.jobs().jobs) == started  # not restarted
    release.set()
    next(b for b in at.button if b.key.startswith("resume_")).click().run()
    _settle(at)
    assert len(_table(at, "ana_sep_table")) == 10


def test_a_map_of_every_step_has_a_step_facet_and_links_to_points(app_env):
    from app import analysis_view as av
    from app import facets

    at = _open({"model": "digits", "layer": "midblock", "step": "all"})
    assert len(fx.static_json(fx.map_data(at)["points_url"])["ids"]) == 540  # 180 samples x 3 steps
    assert "540 points (samples × steps)" in fx.page_text(at)
    at.session_state[av.FILTERS] = facets.from_selection((), facets.Facet("step", "step", "category"),
                                                         [{"value": "1"}])
    at.run()
    _settle(at)
    ids = fx.static_json(fx.map_data(at)["points_url"])["ids"]
    assert len(ids) == 180 and all(i.endswith("@1") for i in ids)
    assert dict(at.query_params)["f.step"] == "1"
    link = next(str(m.value) for m in at.markdown if "open in Explore" in str(m.value))
    assert "step=all" in link and "%40" in link  # a point of the map of every step: '<sample>@<step>'
