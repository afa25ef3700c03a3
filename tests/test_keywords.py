"""The keyword grammar: parsing, precedence, quotes, unicode, errors with positions, and SQL that agrees with
the Python reference semantics on real DuckDB."""

from __future__ import annotations

import random

import duckdb
import pytest

from store.keywords import (
    MAX_DEPTH,
    MAX_QUERY_CHARS,
    MAX_REGEX_CHARS,
    And,
    Not,
    Or,
    Regex,
    SearchError,
    Term,
    matches,
    parse,
    terms,
    to_sql,
)


def t(text, phrase=False):
    return Term(text, phrase=phrase)


def strip(node):
    """The AST without positions, for compact comparisons."""
    if isinstance(node, Term):
        return Term(node.text, node.phrase)
    if isinstance(node, Not):
        return Not(strip(node.child))
    if isinstance(node, And | Or):
        return type(node)(tuple(strip(c) for c in node.children))
    return node


# -- structure ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("car", t("car")),
    ("red car", And((t("red"), t("car")))),
    ("red AND car", And((t("red"), t("car")))),
    ("red OR car", Or((t("red"), t("car")))),
    ("NOT red", Not(t("red"))),
    ("-red", Not(t("red"))),
    ("-red car", And((Not(t("red")), t("car")))),
    ("a OR b c", Or((t("a"), And((t("b"), t("c")))))),          # AND binds tighter than OR
    ("a b OR c", Or((And((t("a"), t("b"))), t("c")))),
    ("NOT a OR b", Or((Not(t("a")), t("b")))),                   # NOT binds tighter than OR
    ("NOT a b", And((Not(t("a")), t("b")))),                     # ... and than AND
    ("(a OR b) c", And((Or((t("a"), t("b"))), t("c")))),
    ("NOT (a OR b)", Not(Or((t("a"), t("b"))))),
    ("-(a OR b)", Not(Or((t("a"), t("b"))))),
    ("NOT NOT a", Not(Not(t("a")))),
    ("((a))", t("a")),
    ('"red car"', t("red car", True)),
    ('-"red car"', Not(t("red car", True))),
    ('"a AND b"', t("a AND b", True)),                           # operators inside quotes are words
    ('"OR"', t("OR", True)),
    ("and or not", And((t("and"), t("or"), t("not")))),         # lower-case operator words are terms
    ("t-shirt", t("t-shirt")),                                   # a hyphen inside a word is a character
    ("50%_off", t("50%_off")),
    ("\u201cred car\u201d", t("red car", True)),                 # curly quotes
    ('"say \\"hi\\""', t('say "hi"', True)),                     # escaped quote inside a phrase
    ('"back\\\\slash"', t("back\\slash", True)),
    ('"red\ncar"', t("red car", True)),                         # a line break in a phrase reads as a space
    ("a\tOR\nb", Or((t("a"), t("b")))),                          # any whitespace separates
])
def test_structure(text, expected):
    assert strip(parse(text)) == expected


def test_term_positions_point_into_the_text():
    node = parse('red  "blue car" -sky')
    assert [c.position if isinstance(c, Term) else c.child.position for c in node.children] == [0, 5, 17]


def test_unicode_terms_and_nfc_normalisation():
    decomposed = "cafe\u0301"  # e + combining acute
    node = parse(decomposed)
    assert node.text == "caf\u00e9"  # composed
    assert matches(node, "Un CAF\u00c9 à Paris")
    assert matches(parse("ДОМ"), "красный дом у реки")  # Cyrillic case folding
    assert matches(parse("東京 夜"), "東京の夜景")
    assert matches(parse('"🚗 red"'), "a 🚗 RED car")
    assert not matches(parse("straße"), "a long STRASSE")  # substring, not full case folding


def test_terms_lists_positive_terms_only():
    assert terms(parse('red "blue car" -sky NOT (x OR y) OR z')) == ["red", "blue car", "z"]


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, position, fragment", [
    ("", 0, "empty query"),
    ("   ", 0, "empty query"),
    ('"red car', 0, "unclosed quote"),
    ('red "car', 4, "unclosed quote"),
    ("red car\u201d", 7, "closing quote"),
    ('""', 0, "empty phrase"),
    ("(red car", 0, "unbalanced '('"),
    ("((a) b", 0, "unbalanced '('"),
    ("red car)", 7, "unbalanced ')'"),
    (")", 0, "unbalanced ')'"),
    ("()", 0, "empty parentheses"),
    ("red AND", 4, "dangling AND"),
    ("red OR", 4, "dangling OR"),
    ("NOT", 0, "dangling NOT"),
    ("a OR OR b", 2, "dangling OR"),
    ("a AND OR b", 2, "dangling AND"),
    ("(a OR) b", 3, "dangling OR"),
    ("OR a", 0, "needs a term before it"),
    ("AND a", 0, "needs a term before it"),
    ("- a", 0, "'-' must be followed"),
    ("a -", 2, "'-' must be followed"),
    ("(a -)", 3, "'-' must be followed"),
    ("a\x00b", 1, "NUL"),
])
def test_errors_carry_positions(text, position, fragment):
    with pytest.raises(SearchError) as info:
        parse(text)
    err = info.value
    assert fragment in err.message
    assert err.position == position
    assert err.text == text
    assert err.kind == "syntax"


def test_caret_renders_under_the_problem():
    with pytest.raises(SearchError) as info:
        parse("red OR (blue")
    assert info.value.caret() == "red OR (blue\n       ^"
    assert "at character 8" in str(info.value)


def test_length_and_depth_limits():
    with pytest.raises(SearchError, match="longer than"):
        parse("a " * MAX_QUERY_CHARS)
    with pytest.raises(SearchError, match="nested more than"):
        parse("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(SearchError, match="nested more than"):
        parse("NOT " * (MAX_DEPTH + 1) + "a")
    assert strip(parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)) == t("a")


def test_regex_mode_validates_with_python_re():
    assert parse("red.*car", regex=True) == Regex("red.*car")
    assert parse("(a|b) OR c", regex=True) == Regex("(a|b) OR c")  # no grammar in regex mode
    with pytest.raises(SearchError, match="missing \\)") as info:
        parse("(abc", regex=True)
    assert info.value.position == 0  # the '(' that is never closed
    with pytest.raises(SearchError, match="longer than"):
        parse("a" * (MAX_REGEX_CHARS + 1), regex=True)
    with pytest.raises(SearchError, match="empty regular expression"):
        parse("", regex=True)


def test_non_text_query_is_refused():
    with pytest.raises(SearchError, match="must be text"):
        parse(42)


# -- SQL ------------------------------------------------------------------------------------------------------


def test_sql_has_only_placeholders_never_user_text():
    hostile = "x'; DROP TABLE t; --comment OR 1=1"
    for node in (parse(hostile), parse('"' + hostile + '"'), Term(hostile)):
        sql, params = to_sql(node, columns=("prompt",))
        assert "DROP" not in sql and "1=1" not in sql and "'x" not in sql
        assert sql.count("?") == len(params)
    sql, params = to_sql(parse("a OR (b -c)"), columns=("prompt", "label"))
    assert params == ["a", "a", "b", "b", "c", "c"]
    assert sql.count("?") == 6


def test_to_sql_rejects_bad_column_names():
    with pytest.raises(ValueError, match="plain identifiers"):
        to_sql(parse("a"), columns=('prompt"; DROP TABLE x; --',))
    with pytest.raises(ValueError, match="at least one column"):
        to_sql(parse("a"), columns=())


ROWS = [
    ("a red car on a road", "vehicles", None),
    ("a blue car", "vehicles", "car"),
    ("Red Sky at night", "scenes", None),
    ("CAFÉ interior, 50% off", "places", None),
    ("the t-shirt and jeans", "clothes", None),
    (None, "animals", "golden retriever"),
    ("a cat OR a dog", "animals", None),
    ('say "hi"', "misc", None),
    ("красный дом", "places", None),
    ("", None, None),
]


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE t (id INTEGER, prompt VARCHAR, category VARCHAR, class_name VARCHAR)")
    c.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", [(i, *r) for i, r in enumerate(ROWS)])
    yield c
    c.close()


def sql_ids(con, node, cols=("prompt", "category", "class_name")):
    sql, params = to_sql(node, cols)
    cur = con.cursor()
    return sorted(r[0] for r in cur.execute(f"SELECT id FROM t WHERE {sql}", params).fetchall())


def py_ids(node):
    return sorted(i for i, r in enumerate(ROWS) if matches(node, list(r)))


@pytest.mark.parametrize("text, expected", [
    ("car", [0, 1]),
    ("red", [0, 2]),
    ("RED car", [0]),
    ("red OR blue", [0, 1, 2]),
    ("car -blue", [0]),
    ("NOT car", [2, 3, 4, 5, 6, 7, 8, 9]),
    ('"red car"', [0]),
    ('"car on"', [0]),
    ("café", [3]),
    ('"50%"', [3]),            # LIKE wildcards are plain characters
    ("_", []),                  # ... and "_" is not "any character"
    ("t-shirt", [4]),
    ('"cat OR a dog"', [6]),
    ('"say \\"hi\\""', [7]),
    ("ДОМ", [8]),
    ("retriever animals", [5]),  # terms may match different columns
    ('"vehicles car"', []),      # but a phrase never spans two columns
    ("(red OR blue) -sky", [0, 1]),
])
def test_sql_matches_python_reference(con, text, expected):
    node = parse(text)
    assert sql_ids(con, node) == expected
    assert py_ids(node) == expected


def test_regex_sql_is_case_insensitive(con):
    assert sql_ids(con, parse("^a (red|blue) car", regex=True)) == [0, 1]
    assert sql_ids(con, parse("R.D", regex=True)) == [0, 2]


def test_lowered_column_path(con):
    cur = con.cursor()
    cur.execute("CREATE TEMP TABLE low AS SELECT id, lower(nfc_normalize(concat_ws(chr(10), prompt, category, "
                "class_name))) AS _text FROM t")
    for text in ("car", "red OR blue", '"red car"', "café -interior", '"vehicles car"', "ДОМ"):
        sql, params = to_sql(parse(text), ("_text",), lowered=True)
        got = sorted(r[0] for r in cur.execute(f"SELECT id FROM low WHERE {sql}", params).fetchall())
        assert got == py_ids(parse(text)), text


def test_random_queries_agree_with_reference(con):
    words = ["red", "car", "blue", "sky", "cat", "a", "café", "дом", "night", '"a red"', "t-shirt"]
    rng = random.Random(7)

    def gen(depth=0):
        r = rng.random()
        if depth > 3 or r < 0.4:
            return rng.choice(words)
        if r < 0.55:
            return "-" + gen(depth + 1) if rng.random() < 0.5 else "NOT " + gen(depth + 1)
        op = rng.choice([" AND ", " OR ", " "])
        return f"({gen(depth + 1)}{op}{gen(depth + 1)})"

    for _ in range(150):
        text = gen()
        node = parse(text)
        assert sql_ids(con, node) == py_ids(node), text
