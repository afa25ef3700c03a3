"""Safe search over the samples of a store: keywords, regular expressions and SQL WHERE clauses.

Safety comes from construction, not from filtering strings:

* Every query runs in a private in-memory DuckDB database (the *sandbox*) that holds only a copy of the samples
  metadata (no thumbnails, no activations) and a small table of step timesteps. It is opened with spilling to
  disk disabled and a memory limit, and before any user text runs it is locked down:
  ``enable_external_access=false`` (no files, no network, no ATTACH/COPY/INSTALL/LOAD),
  extensions can neither be installed nor auto-loaded, and ``lock_configuration=true`` so nothing typed can
  undo any of it. The store's own files are never opened by the sandbox, so they cannot change.
* Keyword and regex searches are compiled by ``store.keywords`` into SQL with ``?`` parameters: the user's text is
  only ever a bound value.
* A WHERE clause is embedded as ``SELECT DISTINCT sample_id FROM samples WHERE (<clause>)``. DuckDB's own parser
  (``json_serialize_sql``) must see exactly one SELECT whose every part but the WHERE clause equals that template,
  so the clause cannot close the parenthesis and add a UNION, a second statement, a LIMIT or anything else.
  Inside the clause, table functions (``read_csv``, ``range``, ``glob``...), CTEs, parameters, tables other
  than ``samples`` and functions that read or change state (``current_setting``, ``getvariable``, ``setseed``,
  ``nextval``, ``sleep_ms``...) are refused before anything runs.
* A timer thread interrupts a query that outruns the time limit; results are capped at a row limit.

Errors come back as ``SearchError`` with the position of the problem inside the user's text, so a page can draw a
caret under it.

The searchable relation ``samples`` has one row per (sample, sampling step): a sample matches when any of its
rows does. Its columns are listed in ``SEARCH_COLUMNS``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import keywords, schema
from .keywords import SearchError
from .lru import LRU

__all__ = [
    "SafeSearch",
    "SearchResult",
    "SearchError",
    "SEARCH_COLUMNS",
    "MODES",
    "for_store",
    "run_saved",
    "validate_where",
]

MODES = ("keywords", "sql", "regex")
MODE_LABELS = {"keywords": "Keywords", "sql": "SQL WHERE", "regex": "Regex"}

# Per (sample, step) columns the `samples` relation adds to the samples metadata.
_STEP_COLUMNS: dict[str, tuple[str, str]] = {
    "step": ("SMALLINT", "a sampling step of the sample, 0 .. num_steps-1 (one row per step)"),
    "timestep": ("FLOAT", "DDPM timestep of that step (NULL for EDM models or when unknown)"),
    "sigma": ("FLOAT", "noise level sigma of that step (NULL when unknown)"),
}


def _sample_types() -> dict[str, pa.DataType]:
    """The samples columns the sandbox holds (store/schema.py's plain values: no thumbnail, no lists)."""
    vocab = schema.SAMPLE_VOCAB
    return {name: vocab[name].type for name in vocab.table}


def search_columns() -> dict[str, tuple[str, str]]:
    """Columns of the searchable `samples` relation: name -> (DuckDB type, meaning)."""
    vocab = schema.SAMPLE_VOCAB
    return {name: (schema.DUCKDB_TYPES[vocab[name].type], vocab[name].doc) for name in vocab.table} | _STEP_COLUMNS


SEARCH_COLUMNS = search_columns()
# Columns loaded from the store (every plain value of `samples`, with the model and run partitions).
SAMPLE_COLUMNS = tuple(_sample_types())
KEYWORD_COLUMNS = schema.SAMPLE_VOCAB.text

# Integer columns stay integers in pandas even with NULLs (class_id is NULL for prompt models).
_NULLABLE_INTS = {pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 1_000_000
DEFAULT_TIMEOUT_S = 2.0
MAX_TIMEOUT_S = 60.0
MAX_CLAUSE_CHARS = 4000

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

_LOCKDOWN = (
    "SET GLOBAL enable_external_access = false",
    "SET GLOBAL allow_community_extensions = false",
    "SET GLOBAL autoload_known_extensions = false",
    "SET GLOBAL autoinstall_known_extensions = false",
    "SET GLOBAL allow_extension_repositories = 'forbidden'",
    "SET GLOBAL allow_persistent_secrets = false",
    "SET GLOBAL lock_configuration = true",
)
_LOCKED_SETTINGS = {
    "enable_external_access": "false",
    "autoload_known_extensions": "false",
    "autoinstall_known_extensions": "false",
    "allow_community_extensions": "false",
    "lock_configuration": "true",
}


@dataclass
class SearchResult:
    """What a search found, in scope: ``frame`` holds at most ``limit`` samples (no thumbnails) ordered by
    (model, run_id, index); ``total`` counts every match."""

    mode: str
    text: str
    frame: pd.DataFrame
    total: int
    elapsed_s: float
    limit: int
    model_counts: dict[str, int] = field(default_factory=dict)  # every match, beyond the row limit

    @property
    def truncated(self) -> bool:
        return self.total > len(self.frame)

    @property
    def sample_ids(self) -> list[str]:
        return self.frame["sample_id"].tolist()

    def counts(self, by: str = "category") -> pd.DataFrame:
        """Matches per value of ``by`` among the returned rows (NULL shown as '(none)'), largest first."""
        if by not in self.frame.columns:
            raise ValueError(f"unknown column {by!r}; choose one of {sorted(self.frame.columns)}")
        col = self.frame[by].astype("object").where(self.frame[by].notna(), "(none)")
        out = col.value_counts().rename_axis(by).reset_index(name="count")
        return out.sort_values(["count", by], ascending=[False, True], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------- loading


def _empty_samples() -> pa.Table:
    return pa.table({c: pa.array([], t) for c, t in _sample_types().items()})


def _conform(table: pa.Table) -> pa.Table:
    """The samples columns we search, in order and with the documented types; missing ones become NULL."""
    cols = {}
    for name, typ in _sample_types().items():
        if name in table.column_names:
            col = table.column(name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(col.type.value_type)
            cols[name] = col.cast(typ)
        else:
            cols[name] = pa.nulls(table.num_rows, typ)
    return pa.table(cols)


def _load_store(store) -> tuple[pa.Table, pa.Table | None]:
    """The samples metadata (no thumbnails) and the (model, step, timestep, sigma) table of a `Store`."""
    table = store.samples_arrow()  # every column but the thumbnail, with the model partition
    table = _conform(table.drop_columns(["thumb"]) if "thumb" in table.column_names else table)
    steps = []
    for model in sorted(set(table.column("model").drop_null().to_pylist())):
        frame = store.steps(model)  # empty for a model without activations: its steps keep NULL timesteps
        if len(frame):
            steps.append(pd.DataFrame({"model": model, "step": frame["step"].astype("int16"),
                                       "timestep": frame["timestep"].astype("float32"),
                                       "sigma": frame["sigma"].astype("float32")}))
    step_table = pa.Table.from_pandas(pd.concat(steps, ignore_index=True), preserve_index=False) if steps else None
    return table, step_table


# ---------------------------------------------------------------------------------------------------- sandbox


# When a keyword-searched column is worth adding to `_text` (SQL over the other columns): a column whose text
# already lies inside another one is left out. Other text columns are added whole.
_TEXT_REDUNDANT = {
    "label": "label IS DISTINCT FROM prompt",
    "class_name": "NOT coalesce(contains(label, class_name), false)",
    "category": "NOT (coalesce(contains(prompt, category), false) OR coalesce(contains(label, category), false))",
}


def _open_sandbox(samples: pa.Table, steps: pa.Table | None, memory_limit: str, threads: int | None):
    config = {"temp_directory": "", "max_temp_directory_size": "0B", "memory_limit": memory_limit}
    if threads:
        config["threads"] = int(threads)
    con = duckdb.connect(":memory:", config=config)
    try:
        con.register("_samples_in", samples)
        # `_text`: the keyword-searched columns, NFC-normalised and lower-cased once, joined by a newline (which
        # no keyword term can contain) so that a phrase never matches across two columns. A column whose text
        # already lies inside another one is left out (the label of a prompt sample is its prompt; the label
        # "207: golden retriever" holds the class name): the same matches, half the bytes to scan.
        text = ", ".join(f'CASE WHEN {_TEXT_REDUNDANT[c]} THEN "{c}" END' if c in _TEXT_REDUNDANT else f'"{c}"'
                         for c in schema.SAMPLE_VOCAB.text)
        con.execute(f"CREATE TABLE sample_rows AS SELECT *, lower(nfc_normalize(concat_ws(chr(10), {text}))) AS _text "
                    "FROM _samples_in")
        con.unregister("_samples_in")
        con.execute("CREATE TABLE step_info (model VARCHAR, step SMALLINT, timestep FLOAT, sigma FLOAT)")
        if steps is not None and steps.num_rows:
            con.register("_steps_in", steps)
            con.execute(
                "INSERT INTO step_info SELECT DISTINCT ON (model, step) model, step, timestep, sigma "
                "FROM _steps_in ORDER BY model, step"
            )
            con.unregister("_steps_in")
        cols = ", ".join(f's."{c}"' for c in _sample_types())  # not _text nor _ord
        con.execute(
            f"CREATE VIEW samples AS SELECT {cols}, u.step::SMALLINT AS step, i.timestep, i.sigma "
            "FROM sample_rows s CROSS JOIN LATERAL "
            "(SELECT unnest(range(greatest(coalesce(s.num_steps, 1), 1)::BIGINT)) AS step) u "
            "LEFT JOIN step_info i ON i.model = s.model AND i.step = u.step"
        )
        for statement in _LOCKDOWN:
            con.execute(statement)
        got = dict(con.execute(
            "SELECT name, lower(value) FROM duckdb_settings() WHERE name IN ("
            + ", ".join("?" for _ in _LOCKED_SETTINGS) + ")", list(_LOCKED_SETTINGS)).fetchall())
        if got != _LOCKED_SETTINGS:
            raise RuntimeError(f"search sandbox is not locked down: {got}")
    except BaseException:
        con.close()
        raise
    return con


# ---------------------------------------------------------------------------------------------------- checks


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
    if cls == "FUNCTION" or typ == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if node.get("schema") or node.get("catalog"):
            refuse(f"qualified function names are not allowed: {name!r}")
        if name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES):
            refuse(f"the function {name}() is not allowed in a search")
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


def _error_position(message: str, statement: str, clause: str) -> tuple[str, int | None]:
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


# ---------------------------------------------------------------------------------------------------- search


class SafeSearch:
    """Keyword, regex and SQL WHERE search over the samples of one store (or of an Arrow table).

    Build it once per data version (``for_store`` caches one); it is safe to share between threads: every search
    uses its own cursor.
    """

    def __init__(self, source, steps: pa.Table | None = None, *, memory_limit: str = "1GB",
                 threads: int | None = None):
        if isinstance(source, pa.Table):
            samples = _conform(source)
            self.root = None
        else:
            samples, loaded_steps = _load_store(source)
            steps = steps if steps is not None else loaded_steps
            self.root = Path(source.root)
        # store order, and the position in it (`_ord`) that the sandbox keeps beside each row
        samples = samples.sort_by([("model", "ascending"), ("run_id", "ascending"), ("index", "ascending")])
        self._rows = samples
        models = samples.column("model").combine_chunks().dictionary_encode()
        self._model_names = models.dictionary.to_pylist()
        self._model_codes = pc.fill_null(models.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        samples = samples.append_column("_ord", pa.array(np.arange(samples.num_rows, dtype=np.int64)))
        self.num_samples = samples.num_rows
        self.models = sorted(set(samples.column("model").drop_null().to_pylist()))
        self._con = _open_sandbox(samples, steps, memory_limit, threads)
        self._lock = threading.Lock()
        # closes the connection when this object is collected or at interpreter exit, whichever comes first
        self._finalizer = weakref.finalize(self, self._con.close)

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._finalizer()
                self._con = None

    def __enter__(self) -> SafeSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _cursor(self):
        with self._lock:
            if self._con is None:
                raise RuntimeError("this SafeSearch is closed")
            return self._con.cursor()

    # -- public API -----------------------------------------------------------------------------------------

    def run(self, mode: str, text: str, model: str | None = None, run_ids=None, limit: int = DEFAULT_LIMIT,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> SearchResult:
        """Dispatch on ``mode`` (one of ``MODES``)."""
        if mode == "keywords":
            return self.keyword(text, model, run_ids, regex=False, limit=limit, timeout_s=timeout_s)
        if mode == "regex":
            return self.keyword(text, model, run_ids, regex=True, limit=limit, timeout_s=timeout_s)
        if mode == "sql":
            return self.where(text, model, run_ids, limit=limit, timeout_s=timeout_s)
        raise ValueError(f"unknown search mode {mode!r}; choose one of {', '.join(MODES)}")

    def keyword(self, text: str, model: str | None = None, run_ids=None, regex: bool = False,
                limit: int = DEFAULT_LIMIT, timeout_s: float = DEFAULT_TIMEOUT_S) -> SearchResult:
        """Samples whose prompt, label, class name or category match a keyword query (or one regex)."""
        limit, timeout_s = _check_limits(limit, timeout_s)
        t0 = time.perf_counter()
        node = keywords.parse(text, regex=regex)
        if regex:
            predicate, params = keywords.to_sql(node, schema.SAMPLE_VOCAB.text)
        else:
            predicate, params = keywords.to_sql(node, ("_text",), lowered=True)
        cur = self._cursor()
        try:
            if regex:
                self._check_re2(cur, node.pattern, text)
            with _deadline(cur, timeout_s) as timer:
                try:
                    frame, total, per_model = self._fetch(cur, predicate, params, model, run_ids, limit)
                except duckdb.InterruptException:
                    raise _timeout_error(text, timeout_s, timer) from None
                except duckdb.Error as exc:
                    raise SearchError(_error_position(str(exc), "", text)[0], None, text, kind="error") from None
        finally:
            cur.close()
        return SearchResult("regex" if regex else "keywords", text, frame, total, time.perf_counter() - t0, limit,
                            per_model)

    def where(self, clause: str, model: str | None = None, run_ids=None, limit: int = DEFAULT_LIMIT,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> SearchResult:
        """Samples matching a SQL WHERE clause over ``samples`` (see ``SEARCH_COLUMNS``)."""
        limit, timeout_s = _check_limits(limit, timeout_s)
        t0 = time.perf_counter()
        cur = self._cursor()
        try:
            statement = self._validate(cur, clause)
            with _deadline(cur, timeout_s) as timer:
                try:
                    # execute() (not sql()) so that binder errors keep their LINE/caret excerpt
                    ids = cur.execute(statement).fetchnumpy()["sample_id"]
                    cur.register("_hits", pa.table({"sample_id": pa.array(ids, pa.string())}))
                    frame, total, per_model = self._fetch(
                        cur, "sample_id IN (SELECT sample_id FROM _hits)", [], model, run_ids, limit)
                except duckdb.InterruptException:
                    raise _timeout_error(clause, timeout_s, timer) from None
                except duckdb.Error as exc:
                    message, pos = _error_position(str(exc), statement, clause)
                    raise SearchError(message, pos, clause, kind="error") from None
        finally:
            cur.close()
        return SearchResult("sql", clause, frame, total, time.perf_counter() - t0, limit, per_model)

    def validate(self, clause: str) -> str:
        """The full statement a WHERE clause would run as, or a SearchError saying why it is refused."""
        cur = self._cursor()
        try:
            return self._validate(cur, clause)
        finally:
            cur.close()

    # -- internals ------------------------------------------------------------------------------------------

    def _validate(self, cur, clause: str) -> str:
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
        if _strip_locations({**statements[0], "node": {**node, "where_clause": None}}) != self._template_shape(cur):
            raise SearchError(
                "the clause must be a condition only: it cannot close the parenthesis to add UNION, ORDER BY, "
                "LIMIT, GROUP BY or another query", None, clause, kind="refused")
        _walk(user_where, clause)
        return statement

    def _template_shape(self, cur) -> dict:
        if not hasattr(self, "_template"):
            parsed = json.loads(cur.execute("SELECT json_serialize_sql(?)", [_PREFIX + "TRUE" + _SUFFIX]).fetchall()[0][0])
            stmt = parsed["statements"][0]
            self._template = _strip_locations({**stmt, "node": {**stmt["node"], "where_clause": None}})
        return self._template

    @staticmethod
    def _check_re2(cur, pattern: str, text: str) -> None:
        """Python's `re` accepted the pattern; RE2 (DuckDB) rejects some of it (look-arounds, backreferences)."""
        try:
            cur.execute("SELECT regexp_matches('', ?, 'i')", [pattern]).fetchall()
        except duckdb.Error as exc:
            message = _error_position(str(exc), "", text)[0]
            raise SearchError(f"{message} (DuckDB uses RE2: no look-arounds or backreferences)", None, text,
                              kind="syntax") from None

    def _fetch(self, cur, predicate: str, params: list, model, run_ids, limit: int):
        """Rows matching ``predicate`` in scope: the first ``limit`` in store order, how many there are, and how
        many per model.

        DuckDB returns only the store-order positions of the matches (one integer each); the rows themselves
        come from the Arrow copy by position. That is one scan, with no window or sort over all matches.
        """
        where = [f"({predicate})"]
        args = list(params)
        if model is not None:
            where.append("model = ?")
            args.append(str(model))
        if run_ids is not None:
            ids = [run_ids] if isinstance(run_ids, str) else [str(r) for r in run_ids]
            where.append("list_contains(?::VARCHAR[], run_id)")
            args.append(ids)
        sql = f"SELECT _ord FROM sample_rows WHERE {' AND '.join(where)}"
        ords = cur.sql(sql, params=args).to_arrow_table().column("_ord").to_numpy()
        ords = np.sort(ords.astype(np.int64, copy=False))
        frame = self._rows.take(pa.array(ords[:limit])).to_pandas(types_mapper=_NULLABLE_INTS.get)
        codes = self._model_codes[ords]
        per_model = np.bincount(codes[codes >= 0], minlength=len(self._model_names))
        model_counts = {m: int(c) for m, c in zip(self._model_names, per_model, strict=True) if c}
        return frame, int(len(ords)), model_counts


def _check_limits(limit, timeout_s) -> tuple[int, float]:
    try:
        limit = int(limit)
        timeout_s = float(timeout_s)
    except (TypeError, ValueError):
        raise ValueError(f"limit must be an integer and timeout_s a number, got {limit!r}, {timeout_s!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT:,}, got {limit}")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}] seconds, got {timeout_s}")
    return limit, timeout_s


class _deadline:
    """Interrupt the cursor's running query after ``seconds`` (from a timer thread)."""

    def __init__(self, cur, seconds: float):
        self.fired = False
        self._cur = cur

        def fire():
            self.fired = True
            cur.interrupt()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True

    def __enter__(self) -> _deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _timeout_error(text: str, timeout_s: float, timer: _deadline) -> SearchError:
    reason = f"stopped after {timeout_s:g} s: the search took too long" if timer.fired else "the search was interrupted"
    return SearchError(f"{reason}; narrow the condition (avoid cross joins and huge subqueries)", None, text,
                       kind="timeout")


# ---------------------------------------------------------------------------------------------------- caching

# not closed on eviction: a caller may still hold it; its finalizer closes it once unreferenced
_CACHE: LRU[tuple, SafeSearch] = LRU(4)


def for_store(store) -> SafeSearch:
    """A SafeSearch for the store's current samples, cached by (store root, samples data version): two
    sessions asking at once share one sandbox."""
    key = (str(Path(store.root).resolve()), store.data_version(scope="samples"))
    return _CACHE.get_or_build(key, lambda: SafeSearch(store))


def validate_where(clause: str) -> str:
    """Check a WHERE clause without a store (against an empty sandbox); returns the full statement."""
    with SafeSearch(_empty_samples()) as search:
        return search.validate(clause)


def run_saved(store, mode: str, text: str, model: str | None = None, run_ids=None,
              limit: int = MAX_LIMIT, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Re-run a search saved in a URL (``mode=``, ``q=``): the matching sample ids, in store order.

    Used by the Explore page to highlight a Search page result set. Raises ``SearchError`` for a bad query.
    """
    return for_store(store).run(mode, text, model, run_ids, limit=limit, timeout_s=timeout_s).sample_ids

