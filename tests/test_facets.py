"""app.facets: which samples a facet filter keeps, what a facet's bars hold, and the filters in the URL."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app import facets as F


def frame() -> pd.DataFrame:
    """12 samples: 3 classes x 2 runs, seeds 0..11, one missing width."""
    n = 12
    return pd.DataFrame({
        "sample_id": [f"s{i:02d}" for i in range(n)],
        "label": [f"{i % 3}: c{i % 3}" for i in range(n)],
        "category": [f"c{i % 3}" for i in range(n)],
        "prompt": [None] * n,
        "run_id": ["a" if i < 8 else "b" for i in range(n)],
        "seed": np.arange(n) * 10,
        "class_id": np.arange(n) % 3,
        "index": np.arange(n),
        "width": [32.0] * (n - 1) + [np.nan],
        "num_steps": [4] * n,
    })


def test_facets_are_the_columns_that_vary_in_the_page_order():
    got = [(f.column, f.kind) for f in F.facets_for(frame())]
    assert got == [("label", "category"), ("run_id", "category"), ("index", "numeric"), ("seed", "numeric"),
                   ("width", "numeric")]  # num_steps is constant, class_id repeats the class
    prompts = frame().assign(prompt="a photo")
    got = [(f.column, f.title) for f in F.facets_for(prompts)[:2]]
    assert got == [("category", "category"), ("label", "prompt")]  # prompt models: the category is the class


def test_a_clicked_bar_keeps_exactly_its_samples_and_a_second_click_widens_then_removes():
    f, ids = frame(), frame()["sample_id"]
    label = F.Facet("label", "class", "category")
    filters = F.from_selection((), label, [{"value": "1: c1"}])
    assert F.passing(ids, f, filters) == ["s01", "s04", "s07", "s10"]
    filters = F.from_selection(filters, label, [{"value": "2: c2"}])
    assert F.passing(ids, f, filters) == ["s01", "s02", "s04", "s05", "s07", "s08", "s10", "s11"]
    run = F.Facet("run_id", "run", "category")
    filters = F.from_selection(filters, run, [{"value": "b"}])  # facets combine: AND
    assert F.passing(ids, f, filters) == ["s08", "s10", "s11"]
    filters = F.toggle(F.toggle(filters, "label", "1: c1"), "label", "2: c2")
    assert [x.column for x in filters] == ["run_id"]  # the last value leaving removes the filter
    assert F.passing(ids, f, filters) == ["s08", "s09", "s10", "s11"]
    assert F.from_selection(filters, run, []) == filters  # an empty selection changes nothing


def test_a_selected_range_keeps_the_closed_interval_and_drops_missing_values():
    f, ids = frame(), frame()["sample_id"]
    seed = F.Facet("seed", "seed", "numeric")
    filters = F.from_selection((), seed, {"low": [45.0, 20]})  # a brushed interval, ends in any order
    assert F.passing(ids, f, filters) == ["s02", "s03", "s04"]
    whole = next(x for x in F.facets_for(f) if x.column == "seed")
    assert whole.integer
    brushed = F.from_selection((), whole, {"x0": [19.2, 40.7]})  # whole numbers: the whole numbers inside
    assert brushed == (F.Filter("seed", low=20.0, high=40.0),) and F.passing(ids, f, brushed) == ["s02", "s03", "s04"]
    assert F.from_selection((), whole, {"x0": [21.2, 21.7]}) == ()  # no whole number inside: nothing
    width = F.set_range((), "width", 0, 100)
    assert "s11" not in F.passing(ids, f, width) and len(F.passing(ids, f, width)) == 11
    with pytest.raises(F.FacetError, match="finite"):
        F.set_range((), "seed", float("nan"), 3)
    with pytest.raises(F.FacetError, match="no column"):
        F.passing(ids, f, (F.Filter("nope", ("x",)),))


def test_category_bars_show_the_other_filters_selection_against_the_whole():
    f = frame()
    filters = (F.Filter("run_id", ("b",)), F.Filter("label", ("0: c0",)))
    bars = F.distribution(f, F.Facet("label", "class", "category"), filters).set_index("value")
    assert bars["whole"].to_dict() == {"0: c0": 4, "1: c1": 4, "2: c2": 4}
    assert bars["selected"].to_dict() == {"0: c0": 1, "1: c1": 1, "2: c2": 2}  # run b only: its own filter skipped
    assert bars["active"].to_dict() == {"0: c0": True, "1: c1": False, "2: c2": False}
    runs = F.distribution(f, F.Facet("run_id", "run", "category"), filters).set_index("value")
    assert runs["selected"].to_dict() == {"a": 3, "b": 1}  # class 0 only


def test_a_clicked_histogram_bin_filters_to_exactly_the_bin_counted():
    f, ids = frame(), frame()["sample_id"]
    seed = F.Facet("seed", "seed", "numeric")
    bars = F.distribution(f, seed, ())
    assert bars["whole"].sum() == 12 and len(bars) <= F.MAX_BINS
    assert (bars["low"] % 1 == 0).all() and (bars["high"] % 1 == 0).all()  # whole numbers: whole-number bins
    for row in bars[bars["whole"] > 0].itertuples():
        kept = F.passing(ids, f, F.from_selection((), seed, [{"low": row.low, "high": row.high}]))
        assert len(kept) == row.whole
    index = F.distribution(f, F.Facet("index", "index", "numeric"), ())  # whole numbers: one bar each
    assert index["value"].tolist() == [str(i) for i in range(12)] and (index["whole"] == 1).all()
    picked = F.from_selection((), F.Facet("index", "index", "numeric"), [{"low": 5.0, "high": 5.0}])
    assert F.passing(ids, f, picked) == ["s05"]


def test_many_categories_are_capped_with_an_other_bar_that_filters_nothing():
    f = pd.DataFrame({"sample_id": [f"s{i}" for i in range(60)], "label": [f"p{i % 30}" for i in range(60)]})
    bars = F.distribution(f, F.Facet("label", "class", "category"), ())
    assert len(bars) == F.MAX_BARS + 1 and bars["value"].iloc[-1] == F.OTHER
    assert bars["whole"].sum() == 60
    assert F.from_selection((), F.Facet("label", "class", "category"), [{"value": F.OTHER}]) == ()


def test_filters_round_trip_through_the_url_and_bad_values_are_named():
    filters = (F.Filter("label", ("3: three", "5: five")), F.Filter("seed", low=10.0, high=20.5))
    params = F.to_params(filters)
    assert params == {"f.label": "3: three~5: five", "f.seed": "10..20.5"}
    back, problems = F.from_params({**params, "model": "demo"}, columns=["label", "seed"])
    assert back == filters and problems == []
    back, problems = F.from_params({"f.nope": "x", "f.seed": "1..2"}, columns=["seed"])
    assert back == (F.Filter("seed", low=1.0, high=2.0),) and "f.nope" in problems[0]
    assert F.from_params({"f.seed": "a..b"})[0] == (F.Filter("seed", ("a..b",)),)  # not a range: a value
    assert filters[0].text() == "label: 3: three, 5: five" and filters[1].text("seed") == "seed: 10 – 20.5"
