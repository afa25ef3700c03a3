"""AppTest: the Search page — keywords, regex and SQL modes, inline errors with a caret, scope, pages of the
grid, counts, export, the URL, and "Show on map" handing the result set to Explore."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.app_fixtures import app_env, app_store, app_test  # noqa: F401  (pytest fixtures)

SEARCH = "app_pages/search.py"
pytestmark = pytest.mark.usefixtures("app_env")  # the synthetic store, static files in tmp, fake projector


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [w.value for w in at.warning] + [e.value for e in at.error] + [c.value for c in at.code]
    return "\n".join(str(p) for p in parts)


def _search(at, text, mode="keywords"):
    at.radio(key="search.mode").set_value(mode).run()
    widget = at.text_area(key="search.text_sql") if mode == "sql" else at.text_input(key=f"search.text_{mode}")
    widget.set_value(text)
    at.button[[b.label for b in at.button].index("Search")].click().run()
    assert not at.exception, at.exception
    return at


def _grid_captions(at) -> list[str]:
    return [c.value for c in at.caption if "seed" in c.value]


def test_keyword_search_shows_grid_counts_and_url():
    at = app_test(SEARCH)
    assert not at.exception
    _search(at, '"golden retriever" OR cat')
    text = _texts(at)
    assert "**12 matching samples** in all models" in text
    captions = _grid_captions(at)
    assert len(captions) == 12
    assert any("golden retriever playing in snow" in c and "animals · seed" in c for c in captions)
    assert len(at.get("image")) == 12
    counts = next(d.value for d in at.dataframe if "category" in d.value.columns)
    assert counts.to_dict("records") == [{"category": "animals", "count": 12}]
    assert at.query_params["sq"] == '"golden retriever" OR cat' and at.query_params["sm"] == "keywords"


def test_sql_search_with_steps_and_pages():
    at = app_test(SEARCH)
    _search(at, "step = 2 AND class_name IN ('seven', 'eight')", mode="sql")
    assert "**36 matching samples**" in _texts(at)  # (120 + 60) / 10 per digit, two digits
    assert len(_grid_captions(at)) == 24  # first page
    page = at.number_input(key="search.page")
    page.set_value(2).run()
    assert not at.exception
    assert len(_grid_captions(at)) == 12


def test_errors_show_inline_with_a_caret():
    at = app_test(SEARCH)
    _search(at, "category = 'food' AND nope > 2", mode="sql")
    assert any("Error" in e.value and "nope" in e.value for e in at.error)
    assert any(c.value.endswith("^") and "nope > 2" in c.value for c in at.code)
    _search(at, "1=1; DROP TABLE sample_rows", mode="sql")
    assert any("Not allowed" in e.value and "only one condition" in e.value for e in at.error)
    _search(at, "EXISTS (SELECT * FROM read_csv('/etc/passwd'))", mode="sql")
    assert any("table functions" in e.value for e in at.error)
    _search(at, '(red OR "blue', mode="keywords")
    assert any("Syntax error" in e.value and "unclosed quote" in e.value for e in at.error)
    _search(at, "(?=a)b", mode="regex")
    assert any("RE2" in e.value for e in at.error)
    _search(at, "   ", mode="keywords")
    assert any("Type something" in w.value for w in at.warning)


def test_scope_by_model_and_run_and_row_limit():
    at = app_test(SEARCH)
    at.selectbox(key="search.model").set_value("digits").run()
    at.multiselect(key="search.runs").set_value(["digits-b"]).run()
    _search(at, "nine OR eight")
    assert "**12 matching samples** in digits, runs digits-b" in _texts(at)
    at.selectbox(key="search.model").set_value("(all models)").run()
    at.selectbox(key="search.limit").set_value(100).run()
    _search(at, "1=1", mode="sql")
    text = _texts(at)
    assert "**228 matching samples**" in text and "showing the first 100 (row limit)" in text
    # several models in the results: the map needs one
    assert at.selectbox(key="search.map_model").options == ["digits", "words"]


def test_regex_mode_and_no_match():
    at = app_test(SEARCH)
    _search(at, "^an? (cat|owl)", mode="regex")
    assert "**12 matching samples**" in _texts(at)
    _search(at, "zebra")
    assert "No sample matches" in _texts(at)


def test_export_downloads_the_result_set(monkeypatch):
    from tests.app_fixtures import record_downloads

    captured = record_downloads(monkeypatch)
    at = app_test(SEARCH)
    _search(at, "ramen")
    assert {b.label for b in at.get("download_button")} >= {"CSV", "Parquet"}
    csv, csv_name = captured["CSV"]
    frame = pd.read_csv(io.BytesIO(csv))
    assert csv_name == "search-keywords-6.csv"
    assert len(frame) == 6 and set(frame["prompt"]) == {"a bowl of ramen with chopsticks"}
    parquet, parquet_name = captured["Parquet"]
    table = pq.read_table(io.BytesIO(parquet))
    assert parquet_name.endswith(".parquet")
    assert table.num_rows == 6 and "thumb" not in table.column_names
    assert table.column("sample_id").to_pylist() == frame["sample_id"].tolist()


def test_url_reruns_a_shared_search():
    from streamlit.testing.v1 import AppTest

    from tests.app_fixtures import ENTRY

    # a link that opens the Search page directly (its first run is this page, as in a browser)
    at = AppTest.from_file(ENTRY, default_timeout=60)
    at.query_params.update({"sq": "class_name = 'three'", "sm": "sql", "smodel": "digits"})
    at.switch_page(SEARCH).run()
    assert not at.exception
    assert at.radio(key="search.mode").value == "sql"
    assert at.selectbox(key="search.model").value == "digits"
    assert "**18 matching samples** in digits" in _texts(at)


def test_show_on_map_highlights_the_matches_on_explore():
    from app import state

    at = app_test(SEARCH)
    at.selectbox(key="search.model").set_value("words").run()
    _search(at, "vehicles")
    show = next(b for b in at.button if b.label == "Show on map")
    show.click().run()
    assert not at.exception, at.exception
    ids = at.session_state[state.HIGHLIGHT]
    assert len(ids) == 18 and all(i.startswith("words-a-") for i in ids)
    assert at.session_state[state.VIEW].model == "words"
    assert state.highlight_ids_from_query(at.session_state["dmd.hl_param"]) == ids  # what the URL carries
    assert "18 highlighted" in _texts(at) or "Highlighting 18 samples" in _texts(at)


def test_empty_store_shows_how_to_build_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    at = app_test(SEARCH)
    at.text_input(key="dmd_store_input").set_value(str(empty)).run()
    assert not at.exception
    assert "holds no samples yet" in _texts(at)
    assert "python -m pipeline demo" in _texts(at)


def test_the_page_searches_through_the_app_data_layer(monkeypatch):
    """The page reaches store.search only through app.data: replacing app.data's functions changes what it shows."""
    from pathlib import Path

    from app import data
    from app.data import SearchError

    source = (Path(data.__file__).parent / SEARCH).read_text()
    assert "from store" not in source and "import store" not in source

    calls, real_search, real_ids = [], data.search, data.search_ids

    def recording(path, mode, text, model=None, runs=(), limit=None, timeout_s=data.SEARCH_TIMEOUT_S):
        calls.append((mode, text, model, tuple(runs), limit))
        if text == "canned":
            raise SearchError("a canned refusal", 3, text, kind="refused")
        return real_search(path, mode, text, model, runs, limit=limit, timeout_s=timeout_s)

    id_calls = []

    def recording_ids(path, mode, text, model=None, runs=(), timeout_s=data.SEARCH_TIMEOUT_S):
        id_calls.append((mode, text, model, tuple(runs)))
        return real_ids(path, mode, text, model, runs, timeout_s=timeout_s)[:5]

    monkeypatch.setattr(data, "search", recording)
    monkeypatch.setattr(data, "search_ids", recording_ids)
    at = app_test(SEARCH)
    at.selectbox(key="search.model").set_value("words").run()
    _search(at, "canned")
    assert calls == [("keywords", "canned", "words", (), 10_000)]
    assert any("Not allowed" in e.value and "a canned refusal" in e.value for e in at.error)
    assert any(c.value == "canned\n   ^" for c in at.code)
    _search(at, "vehicles")
    assert calls[-1] == ("keywords", "vehicles", "words", (), 10_000)
    assert "**18 matching samples** in words" in _texts(at)
    next(b for b in at.button if b.label == "Show on map").click().run()
    assert not at.exception, at.exception
    from app import state

    assert id_calls == [("keywords", "vehicles", "words", ())]
    assert len(at.session_state[state.HIGHLIGHT]) == 5  # what app.data.search_ids gave


def test_data_search_turns_every_failure_into_a_search_error(monkeypatch):
    import os

    from app import data
    from app.data import SearchError
    from store import search as store_search

    store_path = os.environ["DMD2VIZ_STORE"]  # app_env points the app at the synthetic store

    with pytest.raises(SearchError) as bad_mode:
        data.search(store_path, "nope", "cat")
    assert bad_mode.value.kind == "error" and "unknown search mode" in bad_mode.value.message
    result = data.search(store_path, "sql", "class_name = 'three'", model="digits", limit=100)
    assert result.total == 18 and len(result.frame) == 18
    assert data.search_ids(store_path, "sql", "class_name = 'three'", model="digits") == result.sample_ids
    assert list(data.search_modes()) == list(store_search.MODES)
    assert data.search_columns() == dict(store_search.SEARCH_COLUMNS)

    def broken(store):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_search, "for_store", broken)
    with pytest.raises(SearchError) as failed:
        data.search(store_path, "keywords", "cat")
    assert failed.value.kind == "error" and "RuntimeError: disk on fire" in failed.value.message
