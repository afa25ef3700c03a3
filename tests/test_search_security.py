"""Hostile input to the SQL and keyword search: each is refused or stopped cleanly with a message, nothing outside
the sandbox is read, and every file of the store (and of the working directory) is unchanged afterwards."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from store import Store
from store.search import MAX_CLAUSE_CHARS, SafeSearch, SearchError, for_store
from tests.app_fixtures import build_app_store

SECRET = "TOPSECRET-7f3a9c"
REFUSED = {"refused", "syntax"}  # stopped before anything ran
ERROR = {"error"}  # DuckDB itself refused while binding or running


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("security")
    store_root = build_app_store(base / "store", per_run=40)
    outside = base / "outside"
    outside.mkdir()
    (outside / "passwords.csv").write_text(f"user,password\nroot,{SECRET}\n")
    (outside / "secret.txt").write_text(SECRET)
    store = Store(store_root)
    search = SafeSearch(store)
    before = tree_hashes(base)
    yield dict(base=base, root=store_root, outside=outside, store=store, search=search, before=before)
    search.close()


def cases(env):
    secret_csv = env["outside"] / "passwords.csv"
    secret_txt = env["outside"] / "secret.txt"
    own_part = next(Path(env["root"]).rglob("part-*.parquet"))
    new_file = env["base"] / "written.csv"
    return [
        # reading files outside (and inside) the store through table functions
        (REFUSED, f"sample_id IN (SELECT * FROM read_csv('{secret_csv}'))"),
        (REFUSED, f"EXISTS (SELECT * FROM read_csv_auto('{secret_csv}'))"),
        (REFUSED, f"prompt = (SELECT content FROM read_text('{secret_txt}'))"),
        (REFUSED, f"EXISTS (SELECT * FROM read_blob('{secret_txt}'))"),
        (REFUSED, f"EXISTS (SELECT * FROM read_parquet('{own_part}'))"),
        (REFUSED, f"EXISTS (SELECT * FROM read_json_auto('{secret_txt}'))"),
        (REFUSED, f"EXISTS (SELECT * FROM glob('{env['outside']}/*'))"),
        (REFUSED, f"EXISTS (SELECT * FROM '{secret_csv}')"),  # replacement scan by file name
        (REFUSED, f"EXISTS (FROM read_csv('{secret_csv}'))"),  # FROM-first syntax
        (REFUSED, f"EXISTS (SELECT * FROM samples s JOIN read_csv('{secret_csv}') r ON true)"),
        (REFUSED, f"EXISTS (SELECT prompt FROM samples UNION SELECT password FROM read_csv('{secret_csv}'))"),
        (ERROR, f"sample_id IN (SELECT unnest(glob('{env['outside']}/*')))"),  # table function used as a scalar
        # writing, attaching, extensions, configuration
        (REFUSED, f"1=1); COPY (SELECT * FROM samples) TO '{new_file}'; SELECT (1"),
        (REFUSED, f"1=1; COPY (SELECT 1) TO '{new_file}'"),
        (REFUSED, f"1=1; ATTACH '{env['base'] / 'x.db'}' AS x"),
        (REFUSED, f"1=1; EXPORT DATABASE '{env['base'] / 'dump'}'"),
        (REFUSED, "1=1; INSTALL httpfs"),
        (REFUSED, "1=1; LOAD httpfs"),
        (REFUSED, "1=1; SET enable_external_access = true"),
        (REFUSED, "1=1; RESET lock_configuration"),
        (REFUSED, "1=1; PRAGMA enable_profiling"),
        (REFUSED, "1=1; CALL pragma_version()"),
        (REFUSED, "1=1; CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 'x')"),
        # stacked statements and comments hiding a second one
        (REFUSED, "1=1; DROP TABLE sample_rows"),
        (REFUSED, "1=1 /* innocent */; DELETE FROM sample_rows"),
        (REFUSED, "1=1 -- a comment\n); DROP TABLE sample_rows; SELECT (1"),
        (REFUSED, "1=1) UNION ALL SELECT sample_id FROM samples WHERE (1=1"),
        (REFUSED, "1=1) ORDER BY (1"),
        (REFUSED, "1=1 UNION SELECT 1"),
        # catalog, state and configuration
        (REFUSED, "current_setting('enable_external_access') = 'false'"),
        (REFUSED, "getvariable('x') IS NULL"),
        (REFUSED, "list_transform([1], x -> current_setting('threads')) IS NOT NULL"),  # inside a lambda
        (REFUSED, "EXISTS (SELECT 1 FROM samples, LATERAL (SELECT version()) t)"),
        (REFUSED, "sample_id IN (SELECT name FROM duckdb_settings())"),
        (REFUSED, "EXISTS (SELECT * FROM information_schema.tables)"),
        (REFUSED, "EXISTS (SELECT * FROM sample_rows)"),  # the sandbox's own tables
        (REFUSED, "EXISTS (SELECT * FROM samples AT (VERSION => 1))"),
        (REFUSED, "EXISTS (DESCRIBE samples)"),
        (REFUSED, "EXISTS (PIVOT samples ON category USING count(*))"),
        (REFUSED, "setseed(0.5) IS NULL"),
        (REFUSED, "nextval('seq') > 0"),
        (REFUSED, "sleep_ms(100000) IS NULL"),
        (REFUSED, "json_serialize_plan('SELECT * FROM duckdb_settings()') IS NOT NULL"),
        (REFUSED, "main.lower(prompt) = 'x'"),
        (REFUSED, "$1 = 1"),
        (REFUSED, "sample_id IN (WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) "
                  "SELECT n::VARCHAR FROM t)"),
        (REFUSED, "(SELECT count(*) FROM range(1000000000000)) > 0"),
        (REFUSED, "prompt = 'a\x00b'"),
        (REFUSED, "1=1 OR " * (MAX_CLAUSE_CHARS // 7 + 1) + "1=1"),
        (ERROR, "getenv('HOME') IS NOT NULL"),
        # resource exhaustion: stopped by DuckDB's limits with a message
        (ERROR, "length(repeat(prompt, 1000000000)) > 0"),
        (ERROR, "list_sum(range(100000000000)) > 0"),
        # string-literal tricks are only strings: harmless searches
        ({"ok"}, "prompt = 'x''); DROP TABLE sample_rows; --'"),
        ({"ok"}, "prompt = $$'); DROP TABLE sample_rows; --$$"),
        ({"ok"}, "1=1) OR (1=1"),
        # RE2 is linear: a catastrophic pattern on a long string returns at once
        ({"ok"}, "regexp_matches(repeat('a', 200000) || '!', '(a+)+$')"),
    ]


def check_outcome(search, expected, clause):
    t0 = time.perf_counter()
    try:
        result = search.where(clause, timeout_s=2.0)
    except SearchError as exc:
        outcome, text = exc.kind, f"{exc.message} {exc.caret()}"
        assert exc.message.strip(), clause
        assert exc.text == clause
        assert exc.position is None or 0 <= exc.position <= len(clause)
    else:
        outcome = "ok"
        text = result.frame.to_csv()
    elapsed = time.perf_counter() - t0
    assert outcome in expected, f"{clause!r}: got {outcome}: {text[:300]}"
    assert SECRET not in text
    assert elapsed < 2.0, f"{clause!r} took {elapsed:.2f}s"


def test_hostile_where_clauses(env, monkeypatch):
    monkeypatch.chdir(env["base"])  # a stray relative write (e.g. a '.tmp' spill folder) would show up here
    hostile = cases(env)
    assert len(hostile) >= 30
    failures = []
    for expected, clause in hostile:
        try:
            check_outcome(env["search"], expected, clause)
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
    # nothing written, moved or changed anywhere under the test folder (store and outside files included)
    assert tree_hashes(env["base"]) == env["before"]
    # the sandbox still works and is still locked
    assert env["search"].where("1=1").total == env["search"].num_samples
    locked = env["search"]._con.execute(
        "SELECT current_setting('enable_external_access'), current_setting('lock_configuration')").fetchall()
    assert locked == [(False, True)]


def test_long_cross_join_is_stopped_by_the_time_limit(env):
    # 228^5 row combinations, and the condition needs every one of them
    clause = ("(SELECT count(*) FROM samples a, samples b, samples c, samples d, samples e "
              "WHERE (a.seed + b.seed + c.seed + d.seed + e.seed) % 1000003 = 17) > 0")
    t0 = time.perf_counter()
    with pytest.raises(SearchError) as info:
        env["search"].where(clause, timeout_s=0.5)
    elapsed = time.perf_counter() - t0
    assert info.value.kind == "timeout"
    assert "0.5 s" in info.value.message
    assert elapsed < 2.5
    assert env["search"].where("category = 'animals'").total > 0  # the connection is usable afterwards


def test_hostile_keyword_and_regex_input(env):
    search = env["search"]
    # keyword text is only ever a bound value: these are plain (non-matching) words
    for text in ("x'; DROP TABLE sample_rows; --x", '"\'); ATTACH \'/tmp/x.db\'; --"', "%' OR '1'='1", "$1 ? \\",
                 f"\"read_csv('{env['outside'] / 'passwords.csv'}')\""):
        assert search.keyword(text).total == 0, text
    # ... and broken grammar is refused with a position
    with pytest.raises(SearchError, match="unbalanced") as info:
        search.keyword("x'); DROP TABLE sample_rows; --x")
    assert info.value.position == 2
    t0 = time.perf_counter()
    assert search.keyword("(a+)+$", regex=True).total == 0
    assert search.keyword("(x+x+)+y", regex=True).total == 0
    assert time.perf_counter() - t0 < 1.0
    for pattern, fragment in (("a" * 501, "longer than"), ("(?=a)b", "RE2"), ("(a)\\1", "RE2"), ("[", "invalid"),
                              ("((((a{1000}){1000}){1000}){1000})", "(?i)re2|too (large|big)|repetition")):
        with pytest.raises(SearchError, match=fragment):
            search.keyword(pattern, regex=True)
    assert tree_hashes(env["base"]) == env["before"]


def test_store_files_unchanged_through_for_store_and_run_saved(env):
    from store.search import run_saved

    ids = run_saved(env["store"], "sql", "category = 'food'")
    assert ids and all(i.startswith("words-a-") for i in ids)
    assert for_store(env["store"]) is for_store(env["store"])  # cached per data version
    with pytest.raises(SearchError):
        run_saved(env["store"], "sql", "1=1; DROP TABLE sample_rows")
    assert tree_hashes(env["base"]) == env["before"]
