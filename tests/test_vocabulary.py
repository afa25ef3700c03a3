"""One vocabulary: the samples columns are declared once (store/schema.py, with their roles) and search, exports,
the map's colour options and the app's tables derive from that declaration; metrics, the all-steps marker and
point ids have one owner each."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from store import schema
from store.schema import SampleColumn

VOCAB = schema.SAMPLE_VOCAB
STEP_COLUMNS = ("step", "timestep", "sigma")


def _samples(n: int = 6, extra: dict | None = None) -> pd.DataFrame:
    """Samples metadata in which every column the map can colour by varies (two runs, three classes)."""
    i = np.arange(n)
    frame = pd.DataFrame({
        "sample_id": [f"r{k % 2}-{k:08d}" for k in i], "model": "m", "run_id": [f"r{k % 2}" for k in i],
        "index": i, "seed": 100 + i, "class_id": i % 3, "class_name": [f"c{k % 3}" for k in i],
        "prompt": None, "prompt_index": i % 2, "category": [f"cat{k % 2}" for k in i],
        "label": [f"{k % 3}: c{k % 3}" for k in i], "num_steps": 1 + i % 2, "image_path": "images/x.parquet",
        "width": 8 + i % 2, "height": 8 + i % 2, "run_kind": [f"kind{k % 2}" for k in i],
    })
    for name in VOCAB.optional:  # a reader gives the columns that older parts lack as null
        frame[name] = None
    # the edit columns the map colours by vary too
    frame["edit_op"], frame["edit_alpha"], frame["edit_frame"] = [f"op{k % 2}" for k in i], i * 0.5, i
    for name, values in (extra or {}).items():
        frame[name] = values
    return frame


def _view(frame: pd.DataFrame):
    from app import views

    return views.make_view(store_key="s", projection_key="p", model="m", layer="mid", step=0,
                           sample_ids=frame["sample_id"], xy=np.zeros((len(frame), 2)), samples=frame,
                           quality={}, source="fit")


def _explore_options(frame: pd.DataFrame) -> dict[str, str]:
    """The Explore sidebar's colour options for these samples (a model without text embeddings)."""
    from unittest import mock

    from app import data, explore

    with mock.patch.object(data, "has_text_embeddings", return_value=False):
        return explore.color_options("store", "m", frame)


# -- the declaration ------------------------------------------------------------------------------------------

def test_every_samples_column_is_declared_once_with_a_role():
    assert len(set(VOCAB.names)) == len(VOCAB.names) and VOCAB.names[0] == "sample_id"
    assert all(c.role in schema.SAMPLE_ROLES and c.doc for c in VOCAB.columns)
    # the files hold the declared columns but the partition values, in declaration order
    assert schema.SAMPLES.names == [c.name for c in VOCAB.columns if c.stored]
    assert VOCAB.partitions == ("model", "run_id")
    # added after the first stores: previews, the provenance of edits (pipeline/edit.py) and of encoded runs
    assert schema.SAMPLE_OPTIONAL[0] == "preview_steps"
    assert all(name.startswith("edit_") or name == "source_sample_id" for name in schema.SAMPLE_OPTIONAL[1:])
    assert set(schema.SAMPLE_INPUT_FIELDS) <= set(VOCAB.table) - {"sample_id", "model", "run_id"}
    assert set(VOCAB.table) == {c.name for c in VOCAB.columns} - {"thumb", "preview_steps"}
    assert set(VOCAB.text) == {"prompt", "label", "class_name", "category", "edit_op", "edit_layer", "edit_steps",
                               "edit_change"}


def test_a_column_without_a_known_role_or_with_a_colour_it_cannot_have_is_refused():
    with pytest.raises(ValueError, match="unknown role 'score'"):
        SampleColumn("aesthetic", pa.float32(), "score", "aesthetic score")
    with pytest.raises(ValueError, match="cannot colour as numeric"):
        SampleColumn("caption", pa.string(), "text", "a caption", color="numeric")
    with pytest.raises(ValueError, match="declared twice"):
        VOCAB.with_column(SampleColumn("seed", pa.int64(), "numeric", "again"))


def test_readers_search_exports_and_colours_take_the_declared_columns():
    from app import exports, views
    from store import keywords, reader, search

    assert VOCAB.names == reader.SAMPLE_COLUMNS
    assert tuple(search.SEARCH_COLUMNS) == (*VOCAB.table, *STEP_COLUMNS)
    assert all(search.SEARCH_COLUMNS[c][1] == VOCAB[c].doc for c in VOCAB.table)
    assert VOCAB.table == search.SAMPLE_COLUMNS
    assert set(search.KEYWORD_COLUMNS) == set(keywords.DEFAULT_COLUMNS) == set(VOCAB.text)

    frame = _samples()
    view = _view(frame)
    out = exports.selection_frame(view, frame["sample_id"].tolist())
    # storage paths (image_path: a Parquet part inside the store) mean nothing outside it: not exported
    assert [c for c in out.columns if c in VOCAB.names] == [c for c in VOCAB.table if VOCAB[c].role != "path"]

    # every colour column varies here: the menu offers each of them once, under its declared title
    color_keys = {views.coloring_title(k) for k in views.coloring_keys(frame)}
    assert color_keys == {"class label / prompt"} | {VOCAB[c].title for c in VOCAB.colors if c != "label"}
    assert set(views.COLORING_TITLES) == {"label", "step", "cluster"} | {
        "run" if c == "run_id" else c for c in VOCAB.colors if c != "label"}
    # the Explore sidebar offers what the view can draw (they used to disagree)
    assert list(_explore_options(frame)) == list(views.colorings(view))


def test_a_new_declared_column_reaches_search_exports_and_colours(monkeypatch):
    from app import exports, views
    from store import search

    monkeypatch.setattr(schema, "SAMPLE_VOCAB", VOCAB.with_column(
        SampleColumn("aesthetic", pa.float32(), "numeric", "aesthetic score, 0-10", color="numeric",
                     title="aesthetic score")).with_column(
        SampleColumn("caption", pa.string(), "text", "a caption written for the image")))
    frame = _samples(extra={"aesthetic": np.linspace(1, 9, 6).astype(np.float32),
                            "caption": ["a red sunset", "a cat", None, "a dog", "sunset over sea", "a car"]})

    assert search.search_columns()["aesthetic"] == ("FLOAT", "aesthetic score, 0-10")
    assert search.search_columns()["caption"][0] == "VARCHAR"
    with search.SafeSearch(pa.Table.from_pandas(frame, preserve_index=False)) as s:
        assert s.run("sql", "aesthetic > 6").sample_ids == ["r0-00000004", "r1-00000005"]
        assert sorted(s.run("keywords", "sunset").sample_ids) == ["r0-00000000", "r0-00000004"]
        assert sorted(s.run("regex", "^a (cat|dog)$").sample_ids) == ["r1-00000001", "r1-00000003"]

    view = _view(frame)
    out = exports.selection_frame(view, frame["sample_id"].tolist())
    assert {"aesthetic", "caption"} <= set(out.columns)

    assert "aesthetic" in views.coloring_keys(frame) and "caption" not in views.coloring_keys(frame)
    coloring = views.colorings(view)["aesthetic"]
    assert coloring.kind == "numeric" and views.coloring_title("aesthetic") == "aesthetic score"
    assert "aesthetic" in _explore_options(frame)


def test_colour_options_follow_the_data():
    from app import views

    frame = _samples()
    assert views.coloring_keys(frame, all_steps=True, clusters=True)[:2] == ["label", "step"]
    assert "cluster" in views.coloring_keys(frame, clusters=True)
    one_run = frame.assign(run_id="r0", width=8)  # a constant colours nothing
    assert not {"run", "width"} & set(views.coloring_keys(one_run))
    same = frame.assign(category=frame["label"])  # the label again: not offered twice
    assert "category" not in views.coloring_keys(same)
    many = pd.concat([frame] * 500, ignore_index=True).assign(category=[f"k{i}" for i in range(3000)])
    assert "category" not in views.coloring_keys(many)  # beyond MAX_CATEGORIES_NAMED


# -- metrics, the all-steps marker, point ids -----------------------------------------------------------------

def test_metrics_all_steps_and_point_ids_have_one_owner():
    from app import views
    from pipeline import features, neighbors, project

    assert project.METRICS is neighbors.METRICS
    assert views.ALL_STEPS is features.ALL_STEPS
    points = [features.point_id("r1-00000003", 2), features.point_id("r1-00000004", 0)]
    frame = _samples()
    frame = frame.assign(sample_id=[f"r1-{i:08d}" for i in range(len(frame))])
    view = views.make_view(store_key="s", projection_key="p", model="m", layer="mid", step=views.ALL_STEPS,
                           sample_ids=points, xy=np.zeros((2, 2)), samples=frame, quality={}, source="fit")
    assert view.frame["sample_id"].tolist() == ["r1-00000003", "r1-00000004"]
    assert view.frame["step"].tolist() == [2, 0]
    one_step = _view(frame)
    assert one_step.locate(points[0]) == "r1-00000003" and one_step.locate("r1-00000003@x") is None
