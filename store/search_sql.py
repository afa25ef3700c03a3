"""Checking a search's WHERE clause before it runs: one condition inside a fixed SELECT template, parsed by
DuckDB's own parser in this process (on a locked-down database with no tables), with table functions, CTEs,
parameters, other tables, state-reading functions and value-building functions refused, and DuckDB's errors
explained in the user's terms (see `store.search` for the whole safety design)."""

from __future__ import annotations

import difflib
import json
import re
import threading

import duckdb

from . import schema, search_worker
from .keywords import SearchError

MAX_CLAUSE_CHARS = 4000

# Per (sample, step) columns the `samples` relation adds to the samples metadata.
_STEP_COLUMNS: dict[str, tuple[str, str]] = {
    "step": ("SMALLINT", "a sampling step of the sample, 0 .. num_steps-1 (one row per step)"),
    "timestep": ("FLOAT", "DDPM timestep of that step (NULL for EDM models or when unknown)"),
    "sigma": ("FLOAT", "noise level sigma of that step (NULL when unknown)"),
}


def search_columns() -> dict[str, tuple[str, str]]:
    """Columns of the searchable `samples` relation: name -> (DuckDB type, meaning)."""
    vocab = schema.SAMPLE_VOCAB
    return {name: (schema.DUCKDB_TYPES[vocab[name].type], vocab[name].doc) for name in vocab.table} | _STEP_COLUMNS



# The statement a WHERE clause is embedded in. The newlines keep a trailing `-- comment` from eating the `)`.
_PREFIX = "SELECT DISTINCT sample_id FROM samples WHERE (\n"
_SUFFIX = "\n)"
_USER_TABLES = {"samples"}
_ALLOWED_FROM = {"BASE_TABLE", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST"}
_FROM_NAMES = {"SHOW_REF": "DESCRIBE / SHOW / SUMMARIZE", "PIVOT": "PIVOT / UNPIVOT", "COLUMN_DATA": "a data scan",
               "DELIM_GET": "an internal scan", "CTE": "a CTE"}
# Functions that read the database's state or configuration, change state, or only waste time.
_DENIED_FUNCTIONS = {
    "getvariable", "current_setting", "current_query", "current_query_id", "current_connection_id",
    "current_transaction_id", "current_database", "current_catalog", "current_schema", "current_schemas",
    "current_user", "current_role", "session_user", "user", "in_search_path", "version", "get_block_size",
    "setseed", "setval", "nextval", "currval", "txid_current", "write_log", "sleep_ms", "pg_sleep",
    "json_serialize_sql", "json_serialize_plan", "json_deserialize_sql", "parse_duckdb_log_message",
    "obj_description", "col_description", "shobj_description",
}
_DENIED_PREFIXES = ("current_", "pg_", "has_", "inet_", "duckdb_", "pragma_", "__internal", "txid_", "json_execute")
# Functions that build a value whose size an argument sets (range(1e9), repeat(s, 1e9), lpad(s, 1e9)), that can
# double a value at every step (reduce), or that concatenate every row they see (string_agg over a cross join):
# refused by name, so that a clause cannot ask for gigabytes. The sandbox process's memory cap stops the rest.
_UNBOUNDED_FUNCTIONS = {
    **dict.fromkeys(("range", "generate_series", "equi_width_bins"), "builds a list of any length"),
    **dict.fromkeys(("unnest", "generate_subscripts"), "expands lists into rows"),
    **dict.fromkeys(("repeat", "lpad", "rpad", "list_resize", "array_resize", "to_base", "bar"),
                    "builds a value of any size"),
    **dict.fromkeys(("printf", "format"), "pads to any width"),
    **dict.fromkeys(("reduce", "list_reduce", "array_reduce"), "can double a value at every step"),
    **dict.fromkeys(("string_agg", "group_concat", "listagg", "list", "array_agg", "histogram",
                     "approx_top_k", "reservoir_quantile"),
                    "builds a value that grows with the rows or lists it is given"),
}

_PARSER: duckdb.DuckDBPyConnection | None = None
_PARSER_LOCK = threading.Lock()


def _parser_cursor():
    """A cursor of this process's parse-only database: locked down, no tables; user text is only ever an argument
    of ``json_serialize_sql`` (parsed, never run) here."""
    global _PARSER
    with _PARSER_LOCK:
        if _PARSER is None:
            con = duckdb.connect(":memory:", config={"temp_directory": "", "max_temp_directory_size": "0B",
                                                     "memory_limit": "256MB", "threads": 1})
            for statement in search_worker.LOCKDOWN:
                con.execute(statement)
            _PARSER = con
        return _PARSER.cursor()




def _strip_locations(node):
    if isinstance(node, dict):
        return {k: _strip_locations(v) for k, v in node.items() if not k.startswith("query_location")}
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


def _location(node: dict, clause: str) -> int | None:
    loc = node.get("query_location")
    if isinstance(loc, int) and len(_PREFIX) <= loc <= len(_PREFIX) + len(clause):
        return loc - len(_PREFIX)
    return None


def _walk(node, clause: str, nearest: int | None = None):
    """Refuse what a search clause must not contain (raises SearchError)."""
    if isinstance(node, list):
        for item in node:
            _walk(item, clause, nearest)
        return
    if not isinstance(node, dict):
        return
    here = _location(node, clause)
    pos = here if here is not None else nearest

    def refuse(message: str):
        raise SearchError(message, pos, clause, kind="refused")

    cls, typ = node.get("class"), node.get("type")
    if cls == "PARAMETER":
        refuse("parameters ($1, ?) are not allowed in a search")
    if cls in ("FUNCTION", "WINDOW") or typ == "FUNCTION" or "function_name" in node:
        name = str(node.get("function_name", "")).lower()
        if node.get("schema") or node.get("catalog"):
            refuse(f"qualified function names are not allowed: {name!r}")
        if name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES):
            refuse(f"the function {name}() is not allowed in a search")
        if name in _UNBOUNDED_FUNCTIONS:
            refuse(f"the function {name}() is not allowed in a search: it {_UNBOUNDED_FUNCTIONS[name]}, "
                   "which could exhaust the server's memory")
    if "cte_map" in node and node["cte_map"].get("map"):
        refuse("WITH (common table expressions) is not allowed in a search")
    if "from_table" in node or ("table_name" in node and typ == "BASE_TABLE"):
        ref = node.get("from_table", node)
        _check_table_ref(ref, clause, pos)
    for value in node.values():
        if isinstance(value, dict | list):
            _walk(value, clause, pos)


def _check_table_ref(ref, clause: str, nearest: int | None) -> None:
    if not isinstance(ref, dict):
        return
    pos = _location(ref, clause)
    pos = pos if pos is not None else nearest
    typ = ref.get("type")
    if typ == "TABLE_FUNCTION":
        fn = ref.get("function", {}).get("function_name", "?")
        raise SearchError(f"table functions such as {fn}() are not allowed: only the `samples` table can be queried",
                          pos, clause, kind="refused")
    if typ not in _ALLOWED_FROM:
        what = _FROM_NAMES.get(str(typ), str(typ).lower().replace("_", " "))
        raise SearchError(f"{what} is not allowed in a search: only the `samples` table can be queried",
                          pos, clause, kind="refused")
    if typ == "BASE_TABLE":
        name = str(ref.get("table_name", ""))
        if ref.get("at_clause"):
            raise SearchError("time travel (AT ...) is not allowed in a search", pos, clause, kind="refused")
        if ref.get("schema_name") or ref.get("catalog_name") or name.lower() not in _USER_TABLES:
            qualified = ".".join(p for p in (ref.get("catalog_name"), ref.get("schema_name"), name) if p)
            raise SearchError(f"unknown table {qualified!r}: only the `samples` table can be queried",
                              pos, clause, kind="refused")
    if typ == "JOIN":
        _check_table_ref(ref.get("left"), clause, pos)
        _check_table_ref(ref.get("right"), clause, pos)


def _statement_count(cur, statement: str) -> int:
    try:
        return len(cur.extract_statements(statement))
    except duckdb.Error:
        return 1


_LINE_RE = re.compile(r"\n*LINE (\d+): (.*)\n( *)\^")


def error_position(message: str, statement: str, clause: str) -> tuple[str, int | None]:
    """Split a DuckDB error into (message without the LINE excerpt, position inside the clause)."""
    m = _LINE_RE.search(message)
    text = message[: m.start()].strip() if m else message.strip()
    text = re.sub(r"^[A-Za-z ]*Error: ", "", text)
    if not m:
        return text, None
    line_no = int(m.group(1))
    shown = m.group(2)
    col = len(m.group(3)) - len(f"LINE {line_no}: ")
    lines = statement.split("\n")
    if not 1 <= line_no <= len(lines):
        return text, None
    line = lines[line_no - 1]
    # DuckDB may shorten a long line to a window with "..." around it: find the window in the real line.
    start = 0
    if shown.startswith("..."):
        body = shown[3:].removesuffix("...")
        found = line.find(body)
        start = found - 3 if found >= 0 else 0
    offset = sum(len(x) + 1 for x in lines[: line_no - 1]) + start + col
    return text, min(max(offset - len(_PREFIX), 0), len(clause))


def _scan_clause(clause: str) -> tuple[list[int], list[int], int | None]:
    """Where the clause's own brackets and quotes go wrong, skipping string literals, quoted names and comments:
    (positions of '(' never closed, positions of ')' with no '(', position of a quote or comment never closed)."""
    opens: list[int] = []
    extra: list[int] = []
    i, n = 0, len(clause)
    while i < n:
        c = clause[i]
        if c in "'\"":
            end = i + 1
            while True:
                end = clause.find(c, end)
                if end < 0:
                    return opens, extra, i
                if clause[end + 1:end + 2] == c:  # '' or "" inside: an escaped quote
                    end += 2
                    continue
                break
            i = end + 1
            continue
        if clause.startswith("--", i):
            nl = clause.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if clause.startswith("/*", i):
            end = clause.find("*/", i + 2)
            if end < 0:
                return opens, extra, i
            i = end + 2
            continue
        if c == "$" and (m := re.match(r"\$([A-Za-z_]\w*)?\$", clause[i:])):
            end = clause.find(m.group(0), i + len(m.group(0)))
            if end < 0:
                return opens, extra, i
            i = end + len(m.group(0))
            continue
        if c == "(":
            opens.append(i)
        elif c == ")":
            if opens:
                opens.pop()
            else:
                extra.append(i)
        i += 1
    return opens, extra, None


def _explain_syntax_error(message: str, pos: int | None, clause: str) -> tuple[str, int | None]:
    """A parser error in the user's own terms. The clause runs inside ``WHERE ( ... )``: an error at the closing
    parenthesis of that template (which the user never typed) means the clause is incomplete, has an unclosed
    '(' or quote, or closes a parenthesis it never opened."""
    opens, extra, unclosed = _scan_clause(clause)
    at_end = pos is not None and pos >= len(clause.rstrip())
    if unclosed is not None and (at_end or "unterminated" in message or _SUFFIX in message):
        what = {"'": "the quote", '"': "the double quote", "/": "the comment", "$": "the $$ string"}[clause[unclosed]]
        return f"syntax error: {what} at character {unclosed + 1} is never closed", unclosed
    if not at_end:
        return message, pos
    if extra:
        return f"syntax error: the ')' at character {extra[0] + 1} closes a parenthesis that was never opened", extra[0]
    if opens:
        return (f"syntax error at the end of the condition: the '(' at character {opens[-1] + 1} is never closed",
                len(clause))
    tail = clause.rstrip()
    tail = tail if len(tail) <= 30 else "…" + tail[-29:]
    return (f"syntax error at the end of the condition: it is incomplete (something is missing after {tail!r})",
            len(clause))


_NO_COLUMN_RE = re.compile(r'^Referenced column "((?:[^"]|"")+)" not found in FROM clause!.*', re.S)


def explain_binder_error(message: str, clause: str) -> str:
    """A name that is not a column was most likely meant as text: say how to quote it (``label = three`` ->
    ``label = 'three'``), and offer the columns it may be a typo of."""
    m = _NO_COLUMN_RE.match(message)
    if not m:
        return message
    name = m.group(1).replace('""', '"')
    columns = list(search_columns())
    if name.lower() in columns:
        return message
    quoted = "'" + name.replace("'", "''") + "'"
    text = f"to compare with the text {name}, put it in single quotes: {quoted} (double quotes name a column)"
    close = difflib.get_close_matches(name.lower(), columns, n=3, cutoff=0.75)
    if close:
        return f'there is no column "{name}": did you mean {" or ".join(close)}? Or, {text}'
    return f'there is no column "{name}": {text}'


def validate(clause: str) -> str:
    """The full statement of a WHERE clause, or `SearchError` saying what is wrong and where."""
    if not isinstance(clause, str):
        raise SearchError(f"a WHERE clause must be text, not {type(clause).__name__}", kind="syntax")
    if not clause.strip():
        raise SearchError("empty WHERE clause: type a condition, e.g. category = 'animals'", 0, clause)
    if len(clause) > MAX_CLAUSE_CHARS:
        raise SearchError(f"the WHERE clause is longer than {MAX_CLAUSE_CHARS} characters",
                          MAX_CLAUSE_CHARS, clause)
    if "\x00" in clause:
        raise SearchError("the WHERE clause contains a NUL character", clause.index("\x00"), clause)
    statement = _PREFIX + clause + _SUFFIX
    cur = _parser_cursor()
    try:
        parsed = json.loads(cur.execute("SELECT json_serialize_sql(?)", [statement]).fetchall()[0][0])
        if parsed.get("error"):
            message = parsed.get("error_message", "cannot parse the clause")
            kind = "syntax" if parsed.get("error_type") == "parser" else "refused"
            pos = parsed.get("position")
            pos = min(max(int(pos) - len(_PREFIX), 0), len(clause)) if pos not in (None, "") else None
            if (pos is not None and clause[pos:pos + 1] == ";") or (
                    kind == "refused" and _statement_count(cur, statement) > 1):
                kind, message = "refused", "only one condition is allowed: no second statement, no ';'"
            elif kind == "refused":
                message = f"not allowed in a search: {message}"
            else:
                message, pos = _explain_syntax_error(message, pos, clause)
            raise SearchError(message, pos, clause, kind=kind)
        statements = parsed.get("statements", [])
        if len(statements) != 1:
            end = clause.find(";")
            raise SearchError("only one condition is allowed: no second statement, no ';'",
                              end if end >= 0 else None, clause, kind="refused")
        extracted = cur.extract_statements(statement)
        if len(extracted) != 1 or extracted[0].type != duckdb.StatementType.SELECT:
            raise SearchError("only one SELECT condition is allowed", None, clause, kind="refused")
        if statements[0].get("named_param_map"):
            pos = clause.find("$") if "$" in clause else clause.find("?")
            raise SearchError("parameters ($1, ?) are not allowed in a search", pos if pos >= 0 else None,
                              clause, kind="refused")
        node = statements[0]["node"]
        user_where = node.get("where_clause")
        if _strip_locations({**statements[0], "node": {**node, "where_clause": None}}) != _template_shape(cur):
            raise SearchError(
                "the clause must be a condition only: it cannot close the parenthesis to add UNION, ORDER BY, "
                "LIMIT, GROUP BY or another query", None, clause, kind="refused")
    finally:
        cur.close()
    _walk(user_where, clause)
    return statement


_TEMPLATE: dict | None = None


def _template_shape(cur) -> dict:
    global _TEMPLATE
    if _TEMPLATE is None:
        parsed = json.loads(cur.execute("SELECT json_serialize_sql(?)", [_PREFIX + "TRUE" + _SUFFIX]).fetchall()[0][0])
        stmt = parsed["statements"][0]
        _TEMPLATE = _strip_locations({**stmt, "node": {**stmt["node"], "where_clause": None}})
    return _TEMPLATE


