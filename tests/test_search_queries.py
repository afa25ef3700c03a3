"""What the search finds: keywords, regex and WHERE clauses over a real store, scopes, limits, counts, step
semantics, error positions, caching by data version and concurrent use."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pytest

from store import RunWriter, Store
from store.keywords import matches, parse
from store.search import (
    MODES,
    SEARCH_COLUMNS,
    SafeSearch,
    SearchError,
    for_store,
    run_saved,
    validate_where,
)
from tests.app_fixtures import PROMPTS, build_app_store

PER_RUN = 40  # digits-a: 40 samples, digits-b: 20 (3 steps each); words-a: 48 prompts (1 step)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(build_app_store(tmp_path_factory.mktemp("q") / "store", per_run=PER_RUN))


@pytest.fixture(scope="module")
def search(store):
    s = SafeSearch(store)
    yield s
    s.close()


def test_the_issue_example_and_columns(search):
    r = search.where("prompt ILIKE '%red%' AND category = 'vehicles' AND step = 0")
    assert r.total == 6 and set(r.frame["prompt"]) == {"a red sports car on a mountain road"}
    assert "thumb" not in r.frame.columns
    assert list(r.frame.columns)[:4] == ["sample_id", "model", "run_id", "index"]
    assert set(SEARCH_COLUMNS) >= set(r.frame.columns)


def test_step_semantics(search):
    # digits runs have 3 steps (0, 1, 2), words one step: a sample matches when any of its steps does
    assert search.where("step = 2").total == 60
    assert search.where("step = 0").total == 108
    assert search.where("step = 0 AND num_steps = 1").total == 48
    # timesteps and sigmas come from the activations: digits sigmas 14.6, 2.5, 0.3; words timestep 999
    assert search.where("sigma < 1").total == 60
    assert search.where("timestep = 999").total == 48
    assert search.where("step = 1 AND sigma BETWEEN 2 AND 3").total == 60
    assert search.where("step = 5").total == 0


def test_results_are_in_store_order_and_distinct(search):
    r = search.where("model = 'digits'")
    assert r.total == 60 and r.frame["sample_id"].is_unique
    assert list(r.frame["run_id"]) == ["digits-a"] * 40 + ["digits-b"] * 20
    assert list(r.frame["index"][:3]) == [0, 1, 2]


def test_scope_limit_and_truncation(search):
    r = search.where("1=1", model="digits", run_ids=["digits-b"])
    assert r.total == 20 and set(r.frame["run_id"]) == {"digits-b"}
    r = search.keyword("cat", model="words")
    assert r.total == 6
    assert search.keyword("cat", model="digits").total == 0
    r = search.where("1=1", limit=7)
    assert len(r.frame) == 7 and r.total == 108 and r.truncated
    assert set(r.frame["model"]) == {"digits"}
    assert r.model_counts == {"digits": 60, "words": 48}  # counted over every match, not the rows shown
    assert not search.where("1=1").truncated
    r = search.where("1=1", run_ids="digits-a")  # a single run id as a string
    assert r.total == 40


def test_keywords_match_the_python_reference(search, store):
    frame = store.samples()
    for text in ("car", "red OR cat", "-animals", '"golden retriever"', "seven OR eight", "NOT (food OR zero)"):
        node = parse(text)
        want = [sid for sid, *cols in zip(frame["sample_id"], frame["prompt"], frame["label"],
                                          frame["class_name"], frame["category"], strict=True)
                if matches(node, [c if isinstance(c, str) else None for c in cols])]
        got = search.keyword(text).sample_ids
        assert got == want, text


def test_regex_mode(search):
    r = search.keyword("^a (cat|owl)", regex=True)
    assert r.mode == "regex"
    assert set(r.frame["prompt"]) == {"a cat sleeping on a windowsill"}
    assert search.keyword("^[0-9]: (one|two)$", regex=True).total == 12  # labels '1: one', '2: two'
    assert search.run("regex", "RAMEN").total == 6  # case-insensitive


def test_counts_per_category(search):
    counts = search.keyword("a").counts("category")
    assert counts.iloc[0]["count"] >= counts.iloc[-1]["count"]
    assert int(counts["count"].sum()) == search.keyword("a").total
    with pytest.raises(ValueError, match="unknown column"):
        search.keyword("a").counts("nope")
    none = search.where("model = 'digits'").counts("prompt")
    assert none.to_dict("records") == [{"prompt": "(none)", "count": 60}]


@pytest.mark.parametrize("clause, position, fragment", [
    ("bogus = 1", 0, "bogus"),
    ("category = 'food' AND nope > 2", 22, "nope"),
    ("prompt = ", 9, "syntax error"),
    ("category = 'food' AND\n  lower(prompt, 2) = 'x'", 24, "lower"),
    ("prompt = 'x' AND " * 12 + "missing_col = 1", 204, "missing_col"),  # DuckDB shortens long lines
    ("(category = 'food'", 18, "syntax error"),
    ("category = 'food'; DROP TABLE x", 17, "only one condition"),
])
def test_errors_point_into_the_clause(search, clause, position, fragment):
    with pytest.raises(SearchError) as info:
        search.where(clause)
    err = info.value
    assert fragment in err.message
    assert err.position == position, (err.position, clause[err.position or 0:])
    assert err.caret().endswith("^")


@pytest.mark.parametrize("clause, position, fragments", [
    # the clause runs inside "WHERE ( ... )": an error at that hidden ')' is reported in the user's terms
    ("class_id =", 10, ("syntax error", "incomplete", "class_id =")),
    ("category = 'food' AND", 21, ("incomplete", "AND")),
    ("(category = 'food'", 18, ("syntax error", "'(' at character 1 is never closed")),
    ("category = 'food')", 17, ("')' at character 18", "never opened")),
    ("category = 'food", 11, ("quote at character 12 is never closed",)),
    ("category = $$food", 11, ("$$ string at character 12 is never closed",)),
    ("category = 'food' /* note", 18, ("comment at character 19 is never closed",)),
])
def test_syntax_errors_name_only_what_the_user_typed(search, clause, position, fragments):
    with pytest.raises(SearchError) as info:
        search.where(clause)
    err = info.value
    assert err.kind == "syntax"
    for fragment in fragments:
        assert fragment in err.message, err.message
    assert 'near ")"' not in err.message and "end of input" not in err.message
    assert err.position == position, err.position


@pytest.mark.parametrize("clause, word", [("label = three", "three"), ('label = "three"', "three"),
                                          ("category = food AND step = 0", "food"), ("prompt = it's", None)])
def test_a_bare_word_gets_a_hint_to_quote_it(search, clause, word):
    with pytest.raises(SearchError) as info:
        search.where(clause)
    err = info.value
    if word is None:  # an unbalanced quote: a syntax error that says so
        assert "never closed" in err.message
        return
    assert err.kind == "error"
    assert f"'{word}'" in err.message and "single quotes" in err.message, err.message
    assert "Candidate bindings" not in err.message
    assert err.position == clause.index(word.strip('"')) - (1 if '"' in clause else 0)


def test_a_misspelt_column_is_suggested_and_a_real_column_gets_no_quote_hint(search):
    with pytest.raises(SearchError) as info:
        search.where("labl = '7'")
    assert "did you mean label" in info.value.message and "'labl'" in info.value.message
    with pytest.raises(SearchError) as info:  # a column of another table: not a quoting problem
        search.where("EXISTS (SELECT 1 FROM samples s WHERE s.nope = 1)")
    assert "single quotes" not in info.value.message


def test_runtime_errors_come_back_inline(search):
    with pytest.raises(SearchError) as info:
        search.where("CAST(prompt AS INTEGER) > 0")
    assert info.value.kind == "error" and "convert" in info.value.message.lower()


def test_bad_arguments(search):
    with pytest.raises(ValueError, match="keywords, sql, regex"):
        search.run("python", "1=1")
    with pytest.raises(ValueError, match="limit must be between"):
        search.where("1=1", limit=0)
    with pytest.raises(ValueError, match="timeout_s"):
        search.where("1=1", timeout_s=0)
    with pytest.raises(SearchError, match="empty WHERE"):
        search.where("   ")
    assert MODES == ("keywords", "sql", "regex")


def test_validate_where_without_a_store():
    assert "category = 'x'" in validate_where("category = 'x'")
    with pytest.raises(SearchError, match="table functions"):
        validate_where("EXISTS (SELECT * FROM read_csv('x'))")


def test_table_source_with_missing_columns():
    table = pa.table({"sample_id": ["r-00000000", "r-00000001"], "prompt": ["a red car", None],
                      "class_name": [None, "tabby cat"]})
    with SafeSearch(table) as s:
        assert s.keyword("car OR cat").sample_ids == ["r-00000000", "r-00000001"]
        assert s.where("class_name IS NULL").sample_ids == ["r-00000000"]
        assert s.where("step = 0").total == 2  # num_steps unknown: one step
    with pytest.raises(RuntimeError, match="closed"):
        s.keyword("car")


def test_search_text_skips_repeated_columns_without_changing_matches():
    table = pa.table({
        "sample_id": [f"r-{i:08d}" for i in range(4)],
        "prompt": ["a red car", None, None, "Vintage Bicycle"],
        "label": ["a red car", "207: golden retriever", "7", "Vintage Bicycle"],
        "class_name": [None, "golden retriever", "seven", None],
        "category": ["car", "dogs", "digits", "bicycle"],  # "bicycle" is inside the prompt only case-insensitively
    })
    rows = table.to_pylist()
    with SafeSearch(table) as s:
        for text in ("car", "dogs", "retriever", "seven", "207", "bicycle", "BICYCLE -vintage", '"retriever dogs"',
                     '"car car"', "digits OR dogs"):
            node = parse(text)
            want = [r["sample_id"] for r in rows
                    if matches(node, [r["prompt"], r["label"], r["class_name"], r["category"]])]
            assert s.keyword(text).sample_ids == want, text


def test_concurrent_searches_share_one_sandbox(search):
    expected = {q: search.where(q).sample_ids for q in ("category = 'food'", "step = 2", "label LIKE '7%'")}
    errors = []

    def worker(q):
        try:
            for _ in range(5):
                assert search.where(q).sample_ids == expected[q]
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(q,)) for q in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_for_store_follows_the_data_version(tmp_path):
    root = build_app_store(tmp_path / "s", per_run=20)
    store = Store(root)
    first = for_store(store)
    assert for_store(store) is first
    assert run_saved(store, "keywords", "ramen") == first.keyword("ramen").sample_ids
    manifest = dict(run_id="extra", model="words", family="synthetic-t2i", checkpoint="synthetic",
                    checkpoint_sha256="x", layers=["mid_block"], seed=9, num_samples=2,
                    reduce={"mid_block": "mean"}, settings={"steps": 1})
    with RunWriter(root, manifest) as w:
        samples = [dict(seed=i, prompt="a bowl of ramen at night", prompt_index=0, category="food",
                        label="a bowl of ramen at night", num_steps=1) for i in range(2)]
        acts = {"mid_block": [dict(step=0, timestep=999.0, sigma=14.6, reduce="mean", layer_shape=(4, 1, 1),
                                   array=np.zeros((2, 4), np.float32))]}
        w.write_batch([0, 1], samples, [np.zeros((8, 8, 3), np.uint8)] * 2, acts)
    second = for_store(store)
    assert second is not first
    ids = run_saved(store, "sql", "prompt LIKE '%ramen%'")
    assert ids[:2] == ["extra-00000000", "extra-00000001"]  # store order: run "extra" sorts before "words-a"
    assert len(ids) == len(first.keyword("ramen").sample_ids) + 2


def test_prompts_fixture_is_what_the_tests_assume():
    assert ("a red sports car on a mountain road", "vehicles") in PROMPTS and len(PROMPTS) == 8
