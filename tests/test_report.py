"""pipeline.report and `python -m pipeline report`: the HTML holds every section with the values the analyses
compute, the planted outlier first in its gallery and the two classes that share a cluster as the most-mixed
pair; the PNG has its legend; the command writes both files and says what is wrong with a bad request."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import analysis, compare, distribution, figures
from pipeline.__main__ import main
from pipeline.report import ReportError, render_report, write_report
from store import RunWriter, Store


@pytest.fixture(autouse=True)
def _fresh_memo():
    from pipeline.features import FEATURE_CACHE

    analysis.clear_cache()
    compare.clear_cache()
    distribution.clear_cache()
    FEATURE_CACHE.clear()
    yield


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipeline.demo import build_demo_store

    root = tmp_path_factory.mktemp("report-demo")
    build_demo_store(root, samples_per_class=4, batch_size=10, progress=False, extras=True)  # with demo-real
    return root


@pytest.fixture(scope="module")
def demo_report(demo):
    # step 3, the step most runs share (features.default_step), also the report's default
    # (test_the_default_report_is_of_the_step_most_runs_share), not the teacher's lone 17
    return render_report(Store(demo), "demo", "midblock", 3)


def test_the_default_report_is_of_the_step_most_runs_share(demo):
    assert render_report(Store(demo), "demo", "midblock").title.startswith("demo · midblock · step 3 ")


def section(page: str, name: str) -> str:
    """The HTML of one section of the report."""
    found = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert found, f"no section {name}"
    return found.group(1)


def heat(html: str) -> dict[tuple[str, str], float]:
    """The cells of the heatmaps in `html`: (row, column) -> value, from each cell's title."""
    import html as h

    cells = re.findall(r'<td class="cell"[^>]* title="([^"]*) → ([^"]*): ([-0-9.]+)"', html)
    return {(h.unescape(a), h.unescape(b)): float(v) for a, b, v in cells}


def table(html: str, cls: str) -> pd.DataFrame:
    import html as h

    found = re.search(rf'<table class="{cls}"><thead><tr>(.*?)</tr></thead><tbody>(.*?)</tbody>', html, re.S)
    head = [h.unescape(x) for x in re.findall(r"<th>(.*?)</th>", found.group(1))]
    rows = [[h.unescape(x) for x in re.findall(r"<td(?: class=\"t\")?>(.*?)</td>", r)]
            for r in re.findall(r"<tr>(.*?)</tr>", found.group(2))]
    return pd.DataFrame(rows, columns=head)


# -- the demo store ------------------------------------------------------------------------------------------

def test_every_section_holds_the_analyses_values(demo, demo_report):
    store = Store(demo)
    page = demo_report.html.decode()
    ids = store.activations("demo", "midblock", 3).sample_ids
    assert demo_report.title == f"demo · midblock · step 3 · σ 0.002 · {len(ids)} samples"
    for name in ("map", "separation", "clusters", "outliers", "cka", "runs", "manifests"):
        section(page, name)

    sep = analysis.class_separation(store, "demo", "midblock", step=3, k=10, by="label")
    cells = heat(section(page, "separation"))
    assert len(cells) == 100
    for (a, b), v in cells.items():
        assert v == pytest.approx(sep.confusion.loc[a, b], abs=6e-4)
    shown = table(section(page, "separation"), "sep")
    assert shown["class"].tolist() == sep.table["class"].tolist()
    np.testing.assert_allclose(shown["purity"].astype(float), sep.table["purity"], atol=6e-4)
    pairs = table(section(page, "separation"), "pairs")
    assert list(zip(pairs["class_a"], pairs["class_b"], strict=True)) == \
        list(zip(sep.pairs["class_a"], sep.pairs["class_b"], strict=True))

    clu = analysis.clusters(store, "demo", "midblock", step=3)
    shown = re.findall(r'<figure class="medoid" data-sample="([^"]+)">', section(page, "clusters"))
    assert shown == [m for ms in clu.table["medoids"] for m in ms]

    out = analysis.outliers(store, "demo", "midblock", step=3, k=10)
    gallery = re.findall(r'<figure class="outlier" data-sample="([^"]+)">', section(page, "outliers"))
    assert gallery == out["sample_id"].head(24).tolist()

    cka = compare.layer_similarity(store, "demo", store.layers("demo"), 3)
    cells = heat(section(page, "cka"))
    assert len(cells) == 9
    for (a, b), v in cells.items():
        assert v == pytest.approx(cka.loc[a, b], abs=6e-4)

    runs = table(section(page, "runs"), "runs").set_index("run")
    at_step = pd.Series([s.rsplit("-", 1)[0] for s in ids]).value_counts()
    assert runs["at step 3"].astype(int).to_dict() == {r: int(at_step.get(r, 0)) for r in store.runs()["run_id"]}
    assert runs.loc["demo-1step", "at step 3"] == "0"  # the 1-step run has step 0 only
    between = table(section(page, "runs"), "between")
    want = distribution.compare_runs(store, "demo", "midblock", ["demo-real", "demo-multistep"], step=3,
                                     per_class=False)
    assert set(between["reference"]) == {"demo-real"}  # the real run is the reference
    # the 1-step runs have no step 3: their outputs come in encoded at the real digits' sigma
    assert sorted(between["run"]) == ["demo-1step-encoded", "demo-multistep", "demo-student-encoded",
                                      "demo-teacher-encoded"]
    row = between.index[between["run"] == "demo-multistep"][0]
    for metric in distribution.METRICS:
        assert float(between.loc[row, metric]) == pytest.approx(want.loc[0, metric], rel=1e-3, abs=6e-4)
    assert between.loc[row, "n_a"] == "40" and between.loc[row, "n_b"] == "40"
    assert not any(a.startswith("comparison metrics") for a in demo_report.absent)
    manifests = section(page, "manifests")
    for run in store.runs().itertuples():
        assert f"<h3>{run.run_id}</h3>" in manifests and run.checkpoint_sha256 in manifests


def test_the_html_is_self_contained_with_one_plotly_and_a_thumbnail_per_point(demo, demo_report):
    import json

    page = demo_report.html.decode()
    assert page.count("<html") == 1 and page.count("Plotly.newPlot") == 1
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1  # plotly.js inlined once
    markup = re.sub(r"(<script[^>]*>).*?</script>", r"\1", page, flags=re.S)  # the page without plotly.js
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", markup)
    assert not re.search(r"<link\b|<script[^>]+src=|@import|url\(", markup)  # the browser test loads it offline
    thumbs = json.loads(re.search(r"const thumbs = (\[.*?\]);", page).group(1))
    store = Store(demo)
    ids = Store(demo).activations("demo", "midblock", 3).sample_ids
    assert len(thumbs) == len(ids) >= 40
    assert base64.b64decode(thumbs[5]) == store.thumbs([str(ids[5])])[0]


def test_the_png_is_the_map_with_a_title_and_a_legend_of_every_class(demo_report):
    img = Image.open(io.BytesIO(demo_report.png)).convert("RGB")
    assert img.size == figures.PNG_SIZE
    a = np.asarray(img)
    legend = a[:, -figures.LEGEND_WIDTH:]
    colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in figures.PALETTE[:10]}
    found = {tuple(p) for p in legend.reshape(-1, 3)}
    assert colours <= found  # a swatch of each of the ten classes
    plot = a[80:, :-figures.LEGEND_WIDTH]
    drawn = {tuple(p) for p in plot.reshape(-1, 3)} & colours
    assert drawn == colours  # and points of each
    assert (a[:45, :600] < 100).any()  # the title's dark text


def test_a_second_report_reads_every_analysis_from_the_store(demo, demo_report, monkeypatch):
    from pipeline.methods import umap as U

    def fail(*a, **k):
        pytest.fail("recomputed instead of read from the cache")

    for module, name in ((analysis, "separation_tables"), (analysis, "cluster_labels"),
                         (analysis, "outlier_scores"), (analysis, "knn_graph"), (compare, "cka_matrix"),
                         (U, "umap_layout"), (distribution, "distribution_table")):
        monkeypatch.setattr(module, name, fail)
    again = render_report(Store(demo), "demo", "midblock", 3)
    strip = lambda b: re.sub(r"<dd>\d{4}-\d\d-\d\d \d\d:\d\d UTC</dd>", "", b.decode())  # noqa: E731
    assert strip(again.html) == strip(demo_report.html) and again.png == demo_report.png


def test_runs_at_a_step_both_recorded_are_compared_by_their_own_class_separation(demo):
    store = Store(demo)
    report = render_report(store, "demo", "encoder_bottleneck", step=0)
    runs = table(section(report.html.decode(), "runs"), "runs").set_index("run")
    for run in ("demo-1step", "demo-multistep"):
        sep = analysis.class_separation(store, "demo", "encoder_bottleneck", step=0, run_ids=[run], k=10,
                                        by="label")
        want = np.average(sep.table["purity"], weights=sep.table["samples"])
        assert float(runs.loc[run, "mean purity"]) == pytest.approx(want, abs=6e-4)
    between = table(section(report.html.decode(), "runs"), "between")  # no real run at step 0: the first is the reference
    assert sorted(between[["reference", "run"]].values.tolist()) == [["demo-1step", "demo-multistep"],
                                                                    ["demo-1step", "demo-student"]]
    row = between.index[between["run"] == "demo-multistep"][0]
    want = distribution.compare_runs(store, "demo", "encoder_bottleneck", ["demo-1step", "demo-multistep"], step=0,
                                     per_class=False)
    assert float(between.loc[row, "precision"]) == pytest.approx(want.loc[0, "precision"], abs=6e-4)
    assert float(between.loc[row, "fd"]) == pytest.approx(want.loc[0, "fd"], rel=1e-3, abs=6e-4)
    assert not any(a.startswith("per-run") for a in report.absent)


def test_bad_requests_are_report_errors(demo, tmp_path):
    store = Store(demo)
    with pytest.raises(ReportError, match="unknown model 'nope'.*valid: \\['demo'\\]"):
        render_report(store, "nope", "midblock")
    with pytest.raises(ReportError, match="unknown layer 'mid' .*midblock"):
        render_report(store, "demo", "mid")
    with pytest.raises(ReportError, match=r"step 9 is not recorded .*\[0, 1, 2, 3, 17\]"):
        render_report(store, "demo", "midblock", 9)
    with pytest.raises(ReportError, match="one step"):
        render_report(store, "demo", "midblock", "all")
    with pytest.raises(ReportError, match="does not exist"):
        render_report(tmp_path / "missing", "demo", "midblock")
    with pytest.raises(ReportError, match="must end in .html"):
        write_report(store, "demo", "midblock", out=tmp_path / "r.txt")


def test_the_command_writes_the_html_and_the_png_beside_it(demo, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    out.parent.mkdir()
    out.write_text("an older report")
    assert main(["report", "--store", str(demo), "--model", "demo", "--layer", "midblock", "--step", "-1",
                 "--out", str(out)]) == 0
    said = capsys.readouterr()
    err = said.err
    assert "wrote " in said.out and "report.png" in said.out
    assert "class separation" in err and "[100%] done" in err
    assert out.read_bytes().startswith(b"<!DOCTYPE html>")
    png = Image.open(tmp_path / "sub" / "report.png")
    assert png.size == figures.PNG_SIZE and png.format == "PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.png"]  # no staging file


@pytest.mark.parametrize("argv, message", [
    (["--store", "{tmp}/missing"], "store folder '{tmp}/missing' does not exist"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--layer", "nope"], "unknown layer 'nope'"),
    (["--step", "12"], "step 12 is not recorded"),
    (["--out", "{tmp}/report.pdf"], "must end in .html"),
])
def test_the_command_says_what_is_wrong_in_one_line(demo, tmp_path, capsys, argv, message):
    args = {"--store": str(demo), "--model": "demo", "--layer": "midblock", "--out": str(tmp_path / "r.html")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        args[flag] = value.format(tmp=tmp_path)
    assert main(["report", *[x for kv in args.items() for x in kv], "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


# -- constructed stores --------------------------------------------------------------------------------------

def _tile(color, size=24) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (size, size, 3)).copy()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Four classes in 8-D: a, b and c well apart, d drawn around b's centre (b and d share a cluster), and
    one sample of class c far from everything (index 13), drawn in white."""
    root = tmp_path_factory.mktemp("report-planted")
    rng = np.random.default_rng(0)
    centres = {"a": rng.normal(size=8) * 20, "b": rng.normal(size=8) * 20, "c": rng.normal(size=8) * 20}
    centres["d"] = centres["b"]
    names = ["a", "b", "c", "d"]
    n = 80
    labels = [names[i % 4] for i in range(n)]
    X = np.stack([centres[c] for c in labels]) + rng.normal(size=(n, 8))
    X[13] = centres["c"] + 60  # the planted outlier
    colours = {"a": (200, 40, 40), "b": (40, 160, 40), "c": (40, 40, 200), "d": (200, 160, 0)}
    images = [_tile(colours[c]) for c in labels]
    images[13] = _tile((255, 255, 255))
    _write(root, "p1", X, labels, images)
    return root


def _write(root, run_id, X, labels, images) -> None:
    """A run of model "synth" whose layer "mid" holds exactly the rows of X (channel means) at step 0."""
    n = len(X)
    manifest = dict(run_id=run_id, model="synth", family="synthetic", checkpoint="none",
                    checkpoint_sha256="0" * 64, layers=["mid"], reduce={"mid": "mean"}, settings={"steps": 1},
                    seed=0, num_samples=n, code_version="test", device="cpu")
    w = RunWriter(root, manifest)
    samples = [dict(seed=i, class_id="abcd".index(c), class_name=c, label=c, category=c, num_steps=1)
               for i, c in enumerate(labels)]
    w.write_batch(list(range(n)), samples, images,
                  {"mid": [dict(step=0, timestep=None, sigma=1.0, reduce="mean", layer_shape=(X.shape[1], 2, 2),
                                array=X.astype(np.float32))]})
    w.finish()


def test_the_planted_outlier_leads_the_gallery_and_the_shared_cluster_is_the_most_mixed_pair(planted):
    store = Store(planted)
    report = render_report(store, "synth", "mid", method="pca")
    page = report.html.decode()
    gallery = re.findall(r'<figure class="outlier" data-sample="([^"]+)"><img src="data:image/webp;base64,([^"]+)"',
                         section(page, "outliers"))
    assert gallery[0][0] == "p1-00000013"
    assert base64.b64decode(gallery[0][1]) == store.thumbs(["p1-00000013"])[0]
    first = Image.open(io.BytesIO(base64.b64decode(gallery[0][1]))).convert("RGB")
    assert np.asarray(first).min() > 240  # the white tile: the planted sample's own image
    pairs = table(section(page, "separation"), "pairs")
    assert sorted(pairs.loc[0, ["class_a", "class_b"]]) == ["b", "d"]
    assert "CKA: it compares layers, and synth recorded one layer only (mid) at step 0" in section(page, "cka")
    assert "only one run of synth recorded step 0" in section(page, "runs")
    assert "comparison metrics between runs: only one run of synth recorded step 0" in report.absent
    assert sum(a.startswith(("CKA", "per-run", "comparison")) for a in report.absent) == 3


def test_a_text_to_image_store_is_reported_by_category(tmp_path_factory):
    from pipeline.generate import generate
    from tests.t2i_fixtures import CATEGORIES, PROMPTS, build, tiny_files

    root = tmp_path_factory.mktemp("report-t2i")
    adapter = build(tiny_files(tmp_path_factory), "sd15", seeds_per_prompt=5)
    generate(adapter, root, 20, ["mid", "down0"], seed=1, batch_size=10, progress=False)
    store = Store(root)
    report = render_report(store, "sd15", "mid")
    page = report.html.decode()
    sep = analysis.class_separation(store, "sd15", "mid", step=0, k=10, by="category")
    assert sep.by == "category" and sorted(sep.table["class"]) == sorted(CATEGORIES)
    assert sorted(table(section(page, "separation"), "sep")["class"]) == sorted(CATEGORIES)
    assert "colour: category" in page and all(f'"name":"{c}"' in page for c in CATEGORIES)
    assert any(p in page for p in PROMPTS)  # hover text: the prompt is the label
    assert len(heat(section(page, "cka"))) == 4  # mid and down0
    assert "base_model" in section(page, "manifests")
    img = np.asarray(Image.open(io.BytesIO(report.png)).convert("RGB"))
    colours = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in figures.PALETTE[:4]}
    assert colours <= {tuple(p) for p in img[:, -figures.LEGEND_WIDTH:].reshape(-1, 3)}


def test_a_run_too_small_to_measure_is_named_and_the_others_are_compared(planted, tmp_path):
    import shutil

    root = tmp_path / "store"
    shutil.copytree(planted, root)
    rng = np.random.default_rng(3)
    _write(root, "p2", rng.normal(size=(2, 8)), ["a", "b"], [_tile((9, 9, 9))] * 2)
    _write(root, "p3", rng.normal(size=(12, 8)) * 5, ["a", "b", "c"] * 4, [_tile((9, 9, 9))] * 12)
    store = Store(root)
    report = render_report(store, "synth", "mid", method="pca")
    runs = table(section(report.html.decode(), "runs"), "runs").set_index("run")
    assert runs["at step 0"].tolist() == ["80", "2", "12"]
    assert runs.loc["p2", "mean purity"] == "–"
    assert "class separation of run p2: it has 2 sample(s) at step 0, too few to measure" in \
        section(report.html.decode(), "runs")
    between = table(section(report.html.decode(), "runs"), "between")
    assert between[["reference", "run"]].values.tolist() == [["p1", "p3"]]
    assert "comparison metrics of run p2 against p1: run &#x27;p2&#x27; has 2 sample(s) at step 0 of &#x27;mid&#x27;" \
        in section(report.html.decode(), "runs")
    for run in ("p1", "p3"):
        sep = analysis.class_separation(store, "synth", "mid", step=0, run_ids=[run], k=10, by="label")
        want = np.average(sep.table["purity"], weights=sep.table["samples"])
        assert float(runs.loc[run, "mean purity"]) == pytest.approx(want, abs=6e-4)


def test_a_cancelled_report_stops_at_the_next_stage(demo):
    import threading

    from pipeline.project import Cancelled

    cancel, seen = threading.Event(), []

    def progress(fraction, message):
        seen.append(message)
        if message == "clusters":
            cancel.set()

    with pytest.raises(Cancelled):
        render_report(Store(demo), "demo", "midblock", progress=progress, cancel=cancel)
    assert seen[-1] == "clusters" and not any(m.startswith("outliers") for m in seen)
    cancel.set()
    with pytest.raises(Cancelled):  # set before: not even the map starts
        render_report(Store(demo), "demo", "encoder_bottleneck", step=1, cancel=cancel)
