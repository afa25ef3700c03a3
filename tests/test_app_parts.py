"""The app's pure parts: URL state, click rules, view files, colourings, thumbnails export, downloads."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from app import exports, state, static_files, views
from app.state import Selection, ViewSettings
from tests import app_fixtures as fx

app_store = fx.app_store  # pytest fixture


# ------------------------------------------------------------------------------------------- URL state


def test_view_round_trips_through_the_url():
    view = ViewSettings(model="digits", runs=("a", "b"), layer="midblock", step=2, feature="pca", n_neighbors=40,
                        min_dist=0.3, metric="cosine", color_by="seed", classes=("3: three", "7: seven"),
                        keyword='dog OR "red car"', filter_mode="project", k=12, space="activation",
                        n_clusters=5, point_size=7.5)
    params = state.view_to_params(view)
    assert params["cls"] == "3: three~7: seven" and params["runs"] == "a~b"
    assert state.view_from_params(params) == view


def test_url_leaves_defaults_out_and_clamps_user_input():
    assert state.view_to_params(ViewSettings()) == {}
    v = state.view_from_params({"nn": "1", "md": "7", "k": "99", "metric": "chebyshev", "feat": "x", "step": "x",
                                "space": "moon", "fm": "?", "ps": "0"})
    assert (v.n_neighbors, v.min_dist, v.k, v.metric, v.feature, v.step, v.space, v.filter_mode) == \
        (5, 1.0, 20, "euclidean", "auto", None, "activation", "highlight")
    assert v.point_size == 1.0


def test_neighbours_default_to_activation_space_and_map_space_stays_an_option():
    assert ViewSettings().space == "activation" and state.SPACES == ("activation", "map")
    assert "space" not in state.view_to_params(ViewSettings())  # the default is left out of links
    assert state.view_from_params({"space": "map"}).space == "map"
    assert state.view_to_params(ViewSettings(space="map")) == {"space": "map"}


def test_parse_view_names_every_value_it_replaces():
    view, fixes = state.parse_view({"nn": "9999", "md": "abc", "k": "-3", "feat": "x", "step": "x", "space": "moon",
                                    "metric": "cosine", "layer": "nope"})
    found = {f.param: (f.value, f.used) for f in fixes}
    assert found == {"nn": ("9999", "`100`"), "md": ("abc", "`0.1`"), "k": ("-3", "`1`"), "feat": ("x", "`auto`"),
                     "step": ("x", "the default"), "space": ("moon", "`activation`")}
    assert view.metric == "cosine" and view.layer == "nope"  # valid here; the store judges layers (Explore)
    assert "`nn=9999` (out of range): used `100`" in [f.text() for f in fixes]
    assert state.parse_view({"nn": "30", "k": "7"})[1] == []


def test_highlight_param_uses_ids_or_a_token():
    short = ["r-00000001", "r-00000002"]
    assert state.highlight_param(short) == "r-00000001~r-00000002"
    assert state.highlight_ids_from_query("r-00000001~r-00000002") == short
    many = [f"r-{i:08d}" for i in range(100)]
    token = state.highlight_param(many)
    assert token.startswith("s:") and state.highlight_ids_from_query(token) == many
    assert state.highlight_ids_from_query("s:unknown") == []
    assert state.highlight_ids_from_query("") is None


# ------------------------------------------------------------------------------------------ clicks


def test_click_rules():
    sel, what = state.apply_click(Selection(), "a", [])
    assert (sel.selected, what) == ("a", "selected")
    sel, what = state.apply_click(sel, "b", ["b", "c"])
    assert what == "removed knn" and sel.knn_removed == ["b"] and sel.manual == []
    sel, what = state.apply_click(sel, "b", ["b", "c"])  # removed kNN clicked again: becomes manual
    assert what == "added manual" and sel.manual == ["b"]
    sel, what = state.apply_click(sel, "z", ["b", "c"])
    assert what == "added manual" and sel.manual == ["b", "z"]
    sel, what = state.apply_click(sel, "z", ["b", "c"])
    assert what == "removed manual" and sel.manual == ["b"]
    same, what = state.apply_click(sel, "a", ["b", "c"])
    assert what == "none" and same == sel


# ------------------------------------------------------------------------------------------ views


def _view(n=6, labels=None, run_ids=None) -> views.View:
    ids = [f"r-{i:08d}" for i in range(n)]
    labels = labels or [f"{i % 3}: c{i % 3}" for i in range(n)]
    frame = pd.DataFrame({
        "sample_id": ids, "model": "m", "run_id": run_ids or ["r"] * n, "index": range(n),
        "seed": [10**15 + i for i in range(n)], "class_id": [i % 3 for i in range(n)],
        "class_name": [f"c{i % 3}" for i in range(n)], "prompt": None, "prompt_index": None,
        "category": [f"c{i % 3}" for i in range(n)], "label": labels, "num_steps": 1, "width": 32,
        "height": 32, "image_path": None,
    })
    xy = np.stack([np.arange(n, dtype=np.float32), np.arange(n, dtype=np.float32) ** 2], axis=1)
    return views.make_view(store_key="s", projection_key="p", model="m", layer="L", step=1, sample_ids=ids[::-1],
                           xy=xy[::-1], samples=frame, quality={}, source="fit",
                           step_info={"step": 1, "sigma": 0.5, "timestep": None})


def test_view_rows_follow_the_projection_order():
    v = _view()
    assert v.sample_ids[0] == "r-00000005" and v.frame["sample_id"].iloc[0] == "r-00000005"
    assert v.position["r-00000000"] == 5 and v.rows(["r-00000000", "nope"]) == [5]


def test_hover_fields_are_dictionary_coded_and_keep_big_seeds_exact():
    v = _view()
    meta = views.hover_fields(v)
    title = meta["title"]
    assert [title["values"][c] for c in title["codes"]][:2] == ["2: c2", "1: c1"]
    seeds = next(f for f in meta["fields"] if f["name"] == "seed")["values"]
    assert seeds[0] == str(10**15 + 5)  # strings: JSON numbers would round above 2**53
    assert not any(f["name"] == "category" for f in meta["fields"])  # "2: c2" already names it
    assert ["sigma", "0.5"] in meta["common"] and not any(c[0] == "timestep" for c in meta["common"])


def test_color_payloads():
    v = _view(n=9)
    options = views.colorings(v)
    assert set(options) >= {"label", "seed", "index"} and "run" not in options
    cat = views.color_payload(options["label"])
    assert cat["names"] == ["0: c0", "1: c1", "2: c2"] and cat["counts"] == [3, 3, 3]
    assert len(set(cat["colors"])) == 3 and len(cat["codes"]) == 9
    assert cat["ordered"]  # the classes' own order: the legend keeps it
    assert not views.color_payload(views.Coloring("x", "x", "category", v.frame["label"]))["ordered"]
    num = views.color_payload(options["index"])
    assert num["kind"] == "numeric" and (num["min"], num["max"]) == (0.0, 8.0)
    many = views.palette(300)
    assert len(set(many)) == 300 and all(c.startswith("#") and len(c) == 7 for c in many)


def test_labels_sort_naturally():
    v = _view(n=12, labels=[f"{i}: c" for i in range(12)])
    names = views.color_payload(views.Coloring("x", "x", "category", v.frame["label"]))["names"]
    assert names[:3] == ["0: c", "1: c", "2: c"] and names[-1] == "11: c"


def test_view_files_are_written_once(tmp_path, monkeypatch):
    monkeypatch.setattr(static_files, "STATIC_DIR", tmp_path)
    v = _view()
    views.write_view_files(v)
    points = tmp_path / "views" / "s" / v.points_file
    data = json.loads(points.read_text())
    assert data["ids"] == v.sample_ids.tolist() and data["y"][0] == 25.0
    stamp = points.stat().st_mtime_ns
    views.write_view_files(v)
    assert points.stat().st_mtime_ns == stamp
    assert not list((tmp_path / "views" / "s").glob("*.tmp"))


def test_prune_keeps_the_newest_view_files(tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(static_files, "STATIC_DIR", tmp_path)
    folder = tmp_path / "views" / "s"
    folder.mkdir(parents=True)
    for i in range(10):
        p = folder / f"{i}.json"
        p.write_text("{}")
        os.utime(p, (i, i))
    assert static_files.prune_views("s", keep=4) == 6
    assert sorted(p.name for p in folder.iterdir()) == ["6.json", "7.json", "8.json", "9.json"]


# -------------------------------------------------------------------------------------- thumbnails


def test_thumbnail_names_are_url_safe():
    assert static_files.thumb_name("run-00000001") == "run-00000001"
    odd = static_files.thumb_name("a b/ü")
    assert odd.startswith("b64-") and "/" not in odd and " " not in odd


def test_thumb_export_writes_each_thumbnail_once(tmp_path, monkeypatch, app_store):
    from store import Store

    monkeypatch.setattr(static_files, "STATIC_DIR", tmp_path)
    store = Store(app_store)
    calls = []

    def fetch(ids):
        calls.append(list(ids))
        return store.thumbs(ids)

    exporter = static_files.ThumbExport("k", fetch)
    ids = [f"digits-a-{i:08d}" for i in range(25)]
    assert exporter.request(ids, wait=True) == 25
    files = sorted((tmp_path / "thumbs" / "k").glob("*.webp"))
    assert len(files) == 25 and files[0].read_bytes()[:4] == b"RIFF"
    assert exporter.request(ids, wait=True) == 0 and len(calls) == 1
    assert exporter.request([*ids, "digits-a-00000030"], wait=True) == 1 and calls[-1] == ["digits-a-00000030"]


def test_static_urls_follow_the_base_url_path(monkeypatch):
    import streamlit as st

    monkeypatch.setattr(st, "get_option", lambda name: "/viz/" if name == "server.baseUrlPath" else None)
    assert static_files.static_url("views/a.json") == "/viz/app/static/views/a.json"
    monkeypatch.setattr(st, "get_option", lambda name: "")
    assert static_files.thumb_base_url("k") == "/app/static/thumbs/k/"


def test_plotly_bundle_is_copied_from_the_plotly_package(tmp_path, monkeypatch):
    import plotly

    monkeypatch.setattr(static_files, "STATIC_DIR", tmp_path)
    url = static_files.plotly_js_url()
    copied = tmp_path / "vendor" / url.rsplit("/", 1)[1]
    assert copied.stat().st_size > 1_000_000
    assert copied.read_bytes()[-200:] == (
        __import__("pathlib").Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()[-200:]


# ---------------------------------------------------------------------------------------- exports


def test_selection_exports(app_store):
    from store import Store

    store = Store(app_store)
    frame = store.samples(model="digits")
    ids = frame["sample_id"].tolist()
    xy = np.random.default_rng(0).normal(size=(len(ids), 2))
    v = views.make_view(store_key="s", projection_key="p", model="digits", layer="midblock", step=2,
                        sample_ids=ids, xy=xy, samples=frame, quality={}, source="fit",
                        step_info={"step": 2, "sigma": 0.3, "timestep": None})
    chosen = [ids[5], ids[1], ids[40]]
    csv = pd.read_csv(io.BytesIO(exports.selection_csv(v, chosen)))
    assert csv["sample_id"].tolist() == chosen and csv["layer"].iloc[0] == "midblock"
    assert csv["x"].iloc[0] == pytest.approx(xy[5, 0]) and (csv["sigma"] == 0.3).all()
    pq = pd.read_parquet(io.BytesIO(exports.selection_parquet(v, chosen)))
    assert pq["sample_id"].tolist() == chosen
    with zipfile.ZipFile(io.BytesIO(exports.images_zip(store, v, chosen))) as zf:
        names = zf.namelist()
        assert sorted(names) == sorted([f"images/{s}.png" for s in chosen] + ["metadata.csv"])
        assert pd.read_csv(zf.open("metadata.csv"))["image_file"].tolist() == [f"images/{s}.png" for s in chosen]
        assert zf.read(f"images/{chosen[0]}.png")[:4] == b"\x89PNG"
    html = exports.map_html(v, views.colorings(v)["label"]).decode()
    assert html.count("<html") == 1 and "Plotly.newPlot" in html and "0: zero" in html
    assert len(html) > 3_000_000  # plotly.js is inlined: the file opens offline
    assert "hover-thumb" not in html  # no store given: no thumbnails
    with pytest.raises(ValueError, match="at most"):
        exports.images_zip(store, v, ["x"] * (exports.MAX_ZIP_IMAGES + 1))


def test_map_html_inlines_each_points_thumbnail_up_to_a_limit(app_store, monkeypatch):
    import base64
    import json
    import re

    from store import Store

    store = Store(app_store)
    frame = store.samples(model="digits")
    ids = frame["sample_id"].tolist()
    v = views.make_view(store_key="s", projection_key="p", model="digits", layer="midblock", step=2,
                        sample_ids=ids, xy=np.random.default_rng(0).normal(size=(len(ids), 2)), samples=frame,
                        quality={}, source="fit", step_info={"step": 2, "sigma": 0.3, "timestep": None})
    coloring = views.colorings(v)["label"]
    fig = exports.map_figure(v, coloring)
    rows = np.concatenate([np.asarray(t.customdata) for t in fig.data])
    assert sorted(rows.tolist()) == list(range(len(ids)))  # every point knows its row in the view
    first = fig.data[0]
    assert [v.frame["label"].iloc[int(r)] for r in first.customdata[:3]] == [first.name] * 3

    html = exports.map_html(v, coloring, store).decode()
    thumbs = json.loads(re.search(r"const thumbs = (\[.*?\]);", html).group(1))
    assert len(thumbs) == len(ids) and "hover-thumb" in html
    assert base64.b64decode(thumbs[7]) == store.thumbs([ids[7]])[0]
    assert base64.b64decode(thumbs[7])[:4] == b"RIFF"  # WebP

    monkeypatch.setattr(exports, "MAX_HTML_THUMBS", len(ids) - 1)
    html = exports.map_html(v, coloring, store).decode()
    assert "hover-thumb" not in html and f"maps of up to {len(ids) - 1:,} points" in html


def test_selection_exports_of_an_all_steps_view_carry_each_points_step(app_store):
    from store import Store

    store = Store(app_store)
    frame = store.samples(model="digits")
    ids = frame["sample_id"].tolist()[:4]
    points = [f"{s}@{k}" for s in ids for k in (0, 1, 2)]
    steps = pd.DataFrame({"step": [0, 1, 2], "sigma": [14.6, 2.5, 0.3], "timestep": [None] * 3})
    v = views.make_view(store_key="s", projection_key="p", model="digits", layer="midblock", step="all",
                        sample_ids=points, xy=np.zeros((len(points), 2)), samples=frame, quality={},
                        source="fit", steps=steps)
    out = exports.selection_frame(v, [points[4], points[0]])  # sample 1 at step 1, sample 0 at step 0
    assert out["sample_id"].tolist() == [ids[1], ids[0]]
    assert out["step"].tolist() == [1, 0] and out["sigma"].tolist() == [2.5, 14.6]
    cols = [c for c in out.columns if c not in exports.EXPORT_COLUMNS]
    assert cols[:5] == ["sample_id", "layer", "step", "sigma", "timestep"]


def _export_view(store):
    frame = store.samples(model="digits")
    ids = frame["sample_id"].tolist()
    xy = np.random.default_rng(0).normal(size=(len(ids), 2))
    v = views.make_view(store_key="s", projection_key="p", model="digits", layer="midblock", step=2,
                        sample_ids=ids, xy=xy, samples=frame, quality={}, source="fit",
                        step_info={"step": 2, "sigma": 0.3, "timestep": None})
    return v, ids


def test_a_neighbourhood_export_has_each_rows_role_rank_distance_and_space(app_store):
    """Issue 12, item 14: the selection export said nothing of what each row is to the selected sample."""
    from store import Store

    store = Store(app_store)
    v, ids = _export_view(store)
    chosen = exports.neighbourhood_set(ids[0], [ids[3], ids[7]], [0.5, 1.25], [ids[9]], [0.75],
                                       space="activation", metric="cosine")
    for raw in (exports.selection_csv(v, chosen), exports.selection_parquet(v, chosen)):
        out = pd.read_csv(io.BytesIO(raw)) if raw[:4] != b"PAR1" else pd.read_parquet(io.BytesIO(raw))
        assert out["sample_id"].tolist() == [ids[0], ids[3], ids[9], ids[7]]  # ranked by distance
        assert out["role"].tolist() == ["selected", "kNN", "manual", "kNN"]
        assert out["rank"].tolist() == [0, 1, 2, 3]
        assert out["distance"].tolist() == [0.0, 0.5, 0.75, 1.25]
        assert set(out["neighbour_space"]) == {"activation"} and set(out["distance_metric"]) == {"cosine"}
        assert "image_path" not in out.columns  # a Parquet part inside the store, not an image
    in_map = exports.selection_frame(v, exports.neighbourhood_set(ids[0], [ids[1]], [0.1], [], [], space="map",
                                                                  metric="cosine"))
    assert set(in_map["neighbour_space"]) == {"map"} and set(in_map["distance_metric"]) == {"euclidean"}
    lasso = exports.selection_frame(v, exports.plain_set([ids[2], ids[4]], "lasso"))
    assert lasso["role"].tolist() == ["lasso", "lasso"] and lasso["rank"].isna().all()
    assert lasso["distance"].isna().all() and lasso["neighbour_space"].isna().all()


def test_the_zip_metadata_names_each_image_file_in_the_zip(app_store):
    from store import Store

    store = Store(app_store)
    v, ids = _export_view(store)
    chosen = exports.neighbourhood_set(ids[0], [ids[3]], [0.5], [ids[9]], [0.75], space="activation",
                                       metric="euclidean")
    with zipfile.ZipFile(io.BytesIO(exports.images_zip(store, v, chosen))) as zf:
        meta = pd.read_csv(zf.open("metadata.csv"))
        assert meta["role"].tolist() == ["selected", "kNN", "manual"]
        for sid, name in zip(meta["sample_id"], meta["image_file"], strict=True):
            assert name in zf.namelist() and zf.read(name) == store.images([sid])[0]
        assert "image_path" not in meta.columns
    assert exports.image_name("run/a b-00000001") == "images/run_a_b-00000001.png"  # always a plain file name


def test_the_map_title_names_the_view_for_the_png(app_store):
    from store import Store

    v, _ = _export_view(Store(app_store))
    assert exports.map_title(v) == f"digits · midblock · step 2 · σ 0.3 · {len(v):,} samples"
    assert exports.map_title(v, "class label / prompt").endswith(" · colour: class label / prompt")
