"""Safe search over the samples of a store: keywords, regular expressions and SQL WHERE clauses.

Safety comes from construction, not from filtering strings:

* Every query runs in the *sandbox*: a private in-memory DuckDB database that holds only a copy of the samples
  metadata (no thumbnails, no activations) and a small table of step timesteps, inside its own process
  (``store.search_worker``, one per ``SafeSearch``, started in the background). The database is opened with
  spilling to disk disabled and a memory limit, and before any user text runs it is locked down:
  ``enable_external_access=false`` (no files, no network, no ATTACH/COPY/INSTALL/LOAD), extensions can neither be
  installed nor auto-loaded, and ``lock_configuration=true`` so nothing typed can undo any of it. The store's own
  files are never opened by the sandbox, so they cannot change.
* The process's address space is capped (``RLIMIT_AS``) at what its loaded data needs plus ``memory_limit`` and
  ``WORKER_HEADROOM_BYTES``: a value that DuckDB's memory limit does not see (a huge list or string built by an
  expression) fails there, or ends that process, and never grows the server. The process interrupts a query at
  85% of its time limit; at the limit the server kills it and starts a fresh one in the background. The server
  only parses user text and receives the matches' positions.
* Keyword and regex searches are compiled by ``store.keywords`` into SQL with ``?`` parameters: the user's text is
  only ever a bound value.
* A WHERE clause is embedded as ``SELECT DISTINCT sample_id FROM samples WHERE (<clause>)``. DuckDB's own parser
  (``json_serialize_sql``, run in the server on a database with no tables) must see exactly one SELECT whose every
  part but the WHERE clause equals that template, so the clause cannot close the parenthesis and add a UNION, a
  second statement, a LIMIT or anything else. Inside the clause, table functions (``read_csv``, ``range``,
  ``glob``...), CTEs, parameters, tables other than ``samples``, functions that read or change state
  (``current_setting``, ``getvariable``, ``setseed``, ``nextval``, ``sleep_ms``...) and functions that build values
  of any size (``range``, ``repeat``, ``lpad``, ``string_agg``, ``unnest``...: ``store.search_sql``) are refused
  before anything runs. Results are capped at a row limit.

Errors come back as ``SearchError`` with the position of the problem inside the user's text, so a page can draw a
caret under it, and in the user's terms: a parser error at the template's closing parenthesis (which the user never
typed) says what is missing; a bare word that is not a column gets a hint to quote it.

The searchable relation ``samples`` has one row per (sample, sampling step): a sample matches when any of its
rows does. Its columns are listed in ``SEARCH_COLUMNS``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import keywords, schema, search_sql, search_worker
from .keywords import SearchError
from .lru import LRU
from .search_sql import MAX_CLAUSE_CHARS, error_position, explain_binder_error, search_columns

__all__ = [
    "SafeSearch",
    "SearchResult",
    "SearchError",
    "SEARCH_COLUMNS",
    "MODES",
    "for_store",
    "run_saved",
    "validate_where",
    "MAX_CLAUSE_CHARS",
]

MODES = ("keywords", "sql", "regex")
MODE_LABELS = {"keywords": "Keywords", "sql": "SQL WHERE", "regex": "Regex"}

def _sample_types() -> dict[str, pa.DataType]:
    """The samples columns the sandbox holds (store/schema.py's plain values: no thumbnail, no lists)."""
    vocab = schema.SAMPLE_VOCAB
    return {name: vocab[name].type for name in vocab.table}


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
# The sandbox process may grow this far above its loaded data, besides DuckDB's own `memory_limit`; past that an
# allocation fails (or the process dies) and the search is stopped with a message.
WORKER_HEADROOM_BYTES = 512 * 2**20
WORKER_START_TIMEOUT_S = 120.0
# The sandbox process interrupts a query at this fraction of its time limit; at the limit it is killed.
_SOFT_DEADLINE = 0.85
_WORKER_SCRIPT = Path(__file__).with_name("search_worker.py")

log = logging.getLogger(__name__)

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
    """The sandbox database in this process (for trusted queries only, e.g. a benchmark's own reads): user
    queries run in the sandbox's own process, ``store.search_worker``."""
    samples = samples if "_ord" in samples.column_names else samples.append_column(
        "_ord", pa.array(np.arange(samples.num_rows, dtype=np.int64)))
    return search_worker.open_sandbox(samples, steps, memory_limit, threads, schema.SAMPLE_VOCAB.text,
                                      _TEXT_REDUNDANT, tuple(_sample_types()))


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _size_bytes(size: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(size))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"memory size must look like '1GB' or '512MiB', got {size!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class _WorkerGone(Exception):
    """The sandbox process ended (killed by its memory cap or crashed) without answering."""


class _WorkerLate(Exception):
    """The sandbox process did not answer before the deadline."""


class _WorkerFailed(RuntimeError):
    """The sandbox process could not be started."""


class _Worker:
    """One sandbox process (``store.search_worker``), started with the samples and answering one request at a
    time."""

    def __init__(self, init: dict, samples: pa.Table, steps: pa.Table | None):
        # few malloc arenas: each thread's arena reserves 64 MiB of address space, which the cap counts
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   MALLOC_ARENA_MAX="2")
        path = json.dumps([p for p in sys.path if p])  # the same packages (duckdb, pyarrow) as this process
        self.proc = subprocess.Popen([sys.executable, "-I", str(_WORKER_SCRIPT), path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, close_fds=True, bufsize=0)
        self.cap_bytes = 0
        self.base_rss_mb = 0
        try:
            # the samples in parts of _IPC_ROWS rows, each serialised only when sent: no second copy of them all
            parts = [samples.slice(i, _IPC_ROWS) for i in range(0, max(samples.num_rows, 1), _IPC_ROWS)]
            search_worker.write_frame(self.proc.stdin, {**init, "more_parts": len(parts) - 1},
                                      _ipc(parts[0], keep_empty=True))
            for part in parts[1:]:
                search_worker.write_frame(self.proc.stdin, {}, _ipc(part))
            search_worker.write_frame(self.proc.stdin, {}, _ipc(steps))
            reply, _ = self._read(time.monotonic() + WORKER_START_TIMEOUT_S)
        except (OSError, _WorkerGone, _WorkerLate) as exc:
            self.kill()
            raise _WorkerFailed(f"the search sandbox process did not start: {type(exc).__name__}: {exc}") from None
        except BaseException:
            self.kill()
            raise
        if not reply.get("ok"):
            self.kill()
            raise _WorkerFailed(f"the search sandbox process did not start: {reply.get('message')}")
        self.cap_bytes = int(reply.get("cap_bytes") or 0)
        self.base_rss_mb = int(reply.get("rss_mb") or 0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, header: dict, deadline: float) -> tuple[dict, bytes]:
        try:
            search_worker.write_frame(self.proc.stdin, header)
        except OSError:
            raise _WorkerGone("the sandbox process is gone") from None
        return self._read(deadline)

    def _read(self, deadline: float) -> tuple[dict, bytes]:
        n_header, n_payload = search_worker._HEAD.unpack(self._read_exact(search_worker._HEAD.size, deadline))
        header = json.loads(self._read_exact(n_header, deadline))
        return header, self._read_exact(n_payload, deadline) if n_payload else b""

    def _read_exact(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: a busy server's descriptors can pass FD_SETSIZE
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        chunks, left = [], n
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000))):
                raise _WorkerLate()
            chunk = os.read(fd, min(left, 1 << 22))
            if not chunk:
                raise _WorkerGone("the sandbox process ended")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def kill(self, wait: bool = True) -> None:
        """End the process (``wait=False``: leave reaping it, which can take a while for a process with a large
        heap, to a later ``kill()``)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        if wait:
            self.proc.wait()


_IPC_ROWS = 65_536


def _ipc(table: pa.Table | None, keep_empty: bool = False) -> pa.Buffer | bytes:
    if table is None or (not table.num_rows and not keep_empty):
        return b""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


class _Sandbox:
    """The sandbox process of one SafeSearch: started in the background, one request at a time, killed at a
    request's deadline and replaced (in the background) after a kill, a crash, or when it has grown."""

    def __init__(self, samples: pa.Table, steps: pa.Table | None, memory_limit: str, threads: int | None):
        self.memory_limit = memory_limit
        self.budget_bytes = _size_bytes(memory_limit) + WORKER_HEADROOM_BYTES
        self._init = {"memory_limit": memory_limit, "threads": threads, "budget_bytes": self.budget_bytes,
                      "text_columns": list(schema.SAMPLE_VOCAB.text), "text_redundant": _TEXT_REDUNDANT,
                      "sample_columns": list(_sample_types())}
        self._samples, self._steps = samples, steps
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._dead: list[_Worker] = []  # killed, not yet reaped
        self._owner = os.getpid()
        self._closed = False
        self.restarts = 0
        self._start_in_background()

    def _start_in_background(self) -> None:
        threading.Thread(target=self._warm, name="search-sandbox-start", daemon=True).start()

    def _warm(self) -> None:
        with self._lock:
            while self._dead:  # reap what was killed, so that its memory is back before a new one loads
                self._dead.pop().kill()
            if not self._closed:
                try:
                    self._ensure()
                except Exception:  # reported by the next request, which tries again
                    log.warning("search sandbox did not start", exc_info=True)

    def _ensure(self) -> _Worker:
        if self._worker is not None and not self._worker.alive():
            self._drop()
        if self._worker is None:
            self._dead = [w for w in self._dead if w.alive()]  # poll() reaps the ones that have ended
            self._worker = _Worker(self._init, self._samples, self._steps)
        return self._worker

    def _drop(self) -> None:
        """Kill the process now (the caller is waiting); reaping it is left to the background start."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.kill(wait=False)
            self._dead.append(worker)
            self.restarts += 1

    def call(self, header: dict, timeout_s: float) -> tuple[dict, bytes]:
        """One request, with ``timeout_s`` seconds to answer (from when it is sent). Raises _WorkerLate (the
        process was killed) or _WorkerGone (it died)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this SafeSearch is closed")
            worker = self._ensure()
            try:
                reply, payload = worker.request(header, time.monotonic() + timeout_s)
            except (_WorkerLate, _WorkerGone):
                self._drop()
                self._start_in_background()
                raise
            if reply.get("rss_mb", 0) > worker.base_rss_mb + WORKER_HEADROOM_BYTES // 2**20:
                self._drop()  # it kept memory from a large query: a fresh one for the next request
                self._start_in_background()
            return reply, payload

    def pid(self) -> int | None:
        with self._lock:
            return self._ensure().pid if not self._closed else None

    def close(self) -> None:
        if os.getpid() != self._owner:  # a forked copy of the server: the processes are not its to end
            return
        with self._lock:
            self._closed = True
            workers = [w for w in (self._worker, *self._dead) if w is not None]
            self._worker, self._dead = None, []
        for worker in workers:
            worker.kill()


# ---------------------------------------------------------------------------------------------------- search


class SafeSearch:
    """Keyword, regex and SQL WHERE search over the samples of one store (or of an Arrow table).

    Build it once per data version (``for_store`` caches one); it is safe to share between threads. Queries are
    checked here and run one at a time in the sandbox's own process (``store.search_worker``), whose memory is
    capped at ``memory_limit`` plus ``WORKER_HEADROOM_BYTES`` above what the loaded sandbox needs and which is
    killed when a query outruns its time limit (a fresh one starts in the background).
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
        # store order: the sandbox numbers the rows in it (`_ord`) and answers with those numbers
        samples = samples.sort_by([("model", "ascending"), ("run_id", "ascending"), ("index", "ascending")])
        self._rows = samples
        models = samples.column("model").combine_chunks().dictionary_encode()
        self._model_names = models.dictionary.to_pylist()
        self._model_codes = pc.fill_null(models.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        self.num_samples = samples.num_rows
        self.models = sorted(set(samples.column("model").drop_null().to_pylist()))
        self._sandbox = _Sandbox(samples, steps, memory_limit, threads)
        # kills the sandbox process when this object is collected or at interpreter exit, whichever comes first
        self._finalizer = weakref.finalize(self, self._sandbox.close)

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> SafeSearch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def memory_budget_bytes(self) -> int:
        """How far the sandbox process may grow above what its loaded data needs."""
        return self._sandbox.budget_bytes

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
        request = {"op": "keyword", "predicate": predicate, "params": params, **_scope(model, run_ids)}
        if regex:
            request["re2"] = node.pattern
        ords = self._call(request, text, timeout_s, statement="")
        frame, total, per_model = self._collect(ords, limit)
        return SearchResult("regex" if regex else "keywords", text, frame, total, time.perf_counter() - t0, limit,
                            per_model)

    def where(self, clause: str, model: str | None = None, run_ids=None, limit: int = DEFAULT_LIMIT,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> SearchResult:
        """Samples matching a SQL WHERE clause over ``samples`` (see ``SEARCH_COLUMNS``)."""
        limit, timeout_s = _check_limits(limit, timeout_s)
        t0 = time.perf_counter()
        statement = self.validate(clause)
        ords = self._call({"op": "where", "statement": statement, **_scope(model, run_ids)}, clause, timeout_s,
                          statement=statement)
        frame, total, per_model = self._collect(ords, limit)
        return SearchResult("sql", clause, frame, total, time.perf_counter() - t0, limit, per_model)

    def validate(self, clause: str) -> str:
        """The full statement a WHERE clause would run as, or a SearchError saying why it is refused."""
        return search_sql.validate(clause)

    # -- internals ------------------------------------------------------------------------------------------

    def _call(self, request: dict, text: str, timeout_s: float, statement: str) -> np.ndarray:
        """Run a request in the sandbox process: the store-order positions of the matches, or a SearchError.

        The process interrupts the query itself a little before ``timeout_s``; if it has not answered by then it
        is killed (and replaced in the background)."""
        request["timeout_s"] = timeout_s * _SOFT_DEADLINE
        try:
            reply, payload = self._sandbox.call(request, timeout_s)
        except _WorkerLate:
            raise _timeout_error(text, timeout_s, fired=True) from None
        except _WorkerFailed as exc:
            log.error("%s", exc)
            raise SearchError(f"the search is unavailable: {exc}", None, text, kind="error") from None
        except _WorkerGone:  # an allocation past the cap can end the process instead of raising
            raise SearchError(
                "stopped: the search sandbox ended while running this search (it needed more than the "
                f"{self._sandbox.budget_bytes / 2**30:.1f} GiB of memory a search may use, or it crashed); narrow the "
                "condition (avoid building long strings or lists)", None, text, kind="error") from None
        if reply.get("ok"):
            return np.frombuffer(payload, dtype="<i8")
        error = reply.get("error")
        if error == "timeout":
            raise _timeout_error(text, timeout_s, fired=bool(reply.get("fired")))
        if error == "memory":
            raise _memory_error(text, self._sandbox.budget_bytes)
        if error == "re2":
            message = error_position(str(reply.get("message")), "", text)[0]
            raise SearchError(f"{message} (DuckDB uses RE2: no look-arounds or backreferences)", None, text,
                              kind="syntax")
        message, pos = error_position(str(reply.get("message")), statement, text)
        if statement:
            message = explain_binder_error(message, text)
        raise SearchError(message, pos, text, kind="error")

    def _collect(self, ords: np.ndarray, limit: int):
        """The first ``limit`` matching rows in store order, how many match, and how many per model.

        The sandbox returns only the store-order positions of the matches (one integer each); the rows themselves
        come from the Arrow copy by position. That is one scan, with no window or sort over all matches.
        """
        ords = np.sort(ords)
        frame = self._rows.take(pa.array(ords[:limit])).to_pandas(types_mapper=_NULLABLE_INTS.get)
        codes = self._model_codes[ords]
        per_model = np.bincount(codes[codes >= 0], minlength=len(self._model_names))
        model_counts = {m: int(c) for m, c in zip(self._model_names, per_model, strict=True) if c}
        return frame, int(len(ords)), model_counts

    def _sandbox_settings(self) -> dict[str, str]:
        """The sandbox database's lock-down settings, as it reports them."""
        reply, _ = self._sandbox.call({"op": "settings"}, MAX_TIMEOUT_S)
        return reply["settings"]

    def _sandbox_pid(self) -> int | None:
        return self._sandbox.pid()


def _scope(model, run_ids) -> dict:
    if run_ids is not None:
        run_ids = [run_ids] if isinstance(run_ids, str) else [str(r) for r in run_ids]
    return {"model": None if model is None else str(model), "run_ids": run_ids}


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


def _timeout_error(text: str, timeout_s: float, fired: bool) -> SearchError:
    reason = f"stopped after {timeout_s:g} s: the search took too long" if fired else "the search was interrupted"
    return SearchError(f"{reason}; narrow the condition (avoid cross joins and huge subqueries)", None, text,
                       kind="timeout")


def _memory_error(text: str, budget_bytes: int) -> SearchError:
    return SearchError(f"stopped: the search needed more than the {budget_bytes / 2**30:.1f} GiB of memory a search "
                       "may use; narrow the condition (avoid building long strings or lists)", None, text,
                       kind="error")


# ---------------------------------------------------------------------------------------------------- caching

# not closed on eviction: a caller may still hold it; its finalizer closes it once unreferenced
_CACHE: LRU[tuple, SafeSearch] = LRU(4)


def for_store(store) -> SafeSearch:
    """A SafeSearch for the store's current samples, cached by (store root, samples data version): two
    sessions asking at once share one sandbox."""
    key = (str(Path(store.root).resolve()), store.data_version(scope="samples"))
    return _CACHE.get_or_build(key, lambda: SafeSearch(store))


def validate_where(clause: str) -> str:
    """Check a WHERE clause without a store (nothing runs); returns the full statement."""
    return search_sql.validate(clause)


def run_saved(store, mode: str, text: str, model: str | None = None, run_ids=None,
              limit: int = MAX_LIMIT, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """Re-run a search saved in a URL (``mode=``, ``q=``): the matching sample ids, in store order.

    Used by the Explore page to highlight a Search page result set. Raises ``SearchError`` for a bad query.
    """
    return for_store(store).run(mode, text, model, run_ids, limit=limit, timeout_s=timeout_s).sample_ids

