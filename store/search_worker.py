"""The search sandbox's process: runs user queries where their memory is capped and the work can be killed.

``store.search`` validates a query in the serving process, then sends it here. This process holds the sandbox (an
in-memory DuckDB database with a copy of the samples metadata, locked down before any user text runs) and answers
with the store-order positions of the matching rows. Its address space is capped (``RLIMIT_AS``) a fixed budget
above what the loaded sandbox needs, so an expression that builds a huge value fails here with an out-of-memory
error (or kills this process) instead of growing the server; the server kills this process when a query outruns
its time limit and starts a fresh one.

It runs as a script (``python -I store/search_worker.py``) and imports nothing from the project, so the caller
decides everything that depends on the store's declaration (the keyword-searched columns are sent at start).

The protocol, over stdin and stdout, is a sequence of frames: a 12-byte head (``!IQ``: header length, payload
length), a JSON header and a binary payload. The first frame from the server starts the sandbox; its payload is
the first part of the samples as an Arrow IPC stream (its header says how many parts follow, one a frame: the
server never holds more than one part's copy), the next frame's the steps table (empty when there is none). Every later frame
is one request; each gets exactly one answer.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import struct
import sys
import threading

_HEAD = struct.Struct("!IQ")

LOCKDOWN = (
    "SET GLOBAL enable_external_access = false",
    "SET GLOBAL allow_community_extensions = false",
    "SET GLOBAL autoload_known_extensions = false",
    "SET GLOBAL autoinstall_known_extensions = false",
    "SET GLOBAL allow_extension_repositories = 'forbidden'",
    "SET GLOBAL allow_persistent_secrets = false",
    "SET GLOBAL lock_configuration = true",
)
LOCKED_SETTINGS = {
    "enable_external_access": "false",
    "autoload_known_extensions": "false",
    "autoinstall_known_extensions": "false",
    "allow_community_extensions": "false",
    "lock_configuration": "true",
}


# ---------------------------------------------------------------------------------------------------- framing


def write_frame(stream, header: dict, payload=b"") -> None:
    """Write one frame (``payload``: anything with the buffer protocol) to a binary stream, buffered or raw."""
    head = json.dumps(header).encode()
    payload = memoryview(payload).cast("B")
    for part in (memoryview(_HEAD.pack(len(head), len(payload))), memoryview(head), payload):
        while len(part):  # a raw stream may write only part of a large buffer
            written = stream.write(part)
            part = part[written if written is not None else len(part):]
    stream.flush()


def read_frame(stream) -> tuple[dict, bytes] | None:
    """The next frame from a blocking binary stream, or None at end of input."""
    head = _read_exact(stream, _HEAD.size)
    if head is None:
        return None
    n_header, n_payload = _HEAD.unpack(head)
    header = _read_exact(stream, n_header)
    payload = _read_exact(stream, n_payload) if n_payload else b""
    if header is None or payload is None:
        return None
    return json.loads(header), payload


def _read_exact(stream, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------------- sandbox


def open_sandbox(samples, steps, memory_limit: str, threads: int | None, text_columns, text_redundant: dict,
                 sample_columns):
    """A locked-down in-memory DuckDB database with ``sample_rows`` (the samples, their ``_ord`` and a
    pre-lowered ``_text``), ``step_info`` and the ``samples`` view (one row per sample and step)."""
    import duckdb

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
        text = ", ".join(f'CASE WHEN {text_redundant[c]} THEN "{c}" END' if c in text_redundant else f'"{c}"'
                         for c in text_columns)
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
        cols = ", ".join(f's."{c}"' for c in sample_columns)  # not _text nor _ord
        con.execute(
            f"CREATE VIEW samples AS SELECT {cols}, u.step::SMALLINT AS step, i.timestep, i.sigma "
            "FROM sample_rows s CROSS JOIN LATERAL "
            "(SELECT unnest(range(greatest(coalesce(s.num_steps, 1), 1)::BIGINT)) AS step) u "
            "LEFT JOIN step_info i ON i.model = s.model AND i.step = u.step"
        )
        for statement in LOCKDOWN:
            con.execute(statement)
        if locked_settings(con) != LOCKED_SETTINGS:
            raise RuntimeError(f"search sandbox is not locked down: {locked_settings(con)}")
    except BaseException:
        con.close()
        raise
    return con


def locked_settings(con) -> dict[str, str]:
    return dict(con.execute(
        "SELECT name, lower(value) FROM duckdb_settings() WHERE name IN ("
        + ", ".join("?" for _ in LOCKED_SETTINGS) + ")", list(LOCKED_SETTINGS)).fetchall())


def fetch_ords(cur, predicate: str, params: list, model, run_ids):
    """Store-order positions (``_ord``, unsorted int64 numpy array) of the rows matching ``predicate`` in scope."""
    where = [f"({predicate})"]
    args = list(params)
    if model is not None:
        where.append("model = ?")
        args.append(str(model))
    if run_ids is not None:
        where.append("list_contains(?::VARCHAR[], run_id)")
        args.append([str(r) for r in run_ids])
    sql = f"SELECT _ord FROM sample_rows WHERE {' AND '.join(where)}"
    return cur.sql(sql, params=args).to_arrow_table().column("_ord").to_numpy()


# ---------------------------------------------------------------------------------------------------- the process


def _status_mb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) // 1024 if m else 0
    except OSError:
        return 0


def _cap_address_space(budget_bytes: int) -> int:
    """Cap this process's address space at what it maps now plus ``budget_bytes``; the cap in bytes (0: none)."""
    if budget_bytes <= 0:
        return 0
    now = _status_mb("VmSize") * 2**20
    if not now:
        return 0
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)  # an inherited soft limit is replaced by this one
    cap = now + budget_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    return cap


class _Interrupt:
    """Interrupt the connection's running query after ``seconds``."""

    def __init__(self, con, seconds: float):
        self.fired = False

        def fire():
            self.fired = True
            con.interrupt()

        self._timer = threading.Timer(seconds, fire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()


def _answer(con, header: dict):
    """(reply header, payload) for one request."""
    import duckdb
    import pyarrow as pa

    op = header.get("op")
    if op == "settings":
        return {"ok": True, "settings": locked_settings(con)}, b""
    if op == "ping":
        return {"ok": True}, b""
    cur = con.cursor()
    try:
        if header.get("re2") is not None:  # Python's `re` accepted the pattern; RE2 rejects some of it
            try:
                cur.execute("SELECT regexp_matches('', ?, 'i')", [header["re2"]]).fetchall()
            except duckdb.Error as exc:
                return {"error": "re2", "message": str(exc)}, b""
        scope = header.get("model"), header.get("run_ids")
        with _Interrupt(con, float(header["timeout_s"])) as timer:
            try:
                if op == "keyword":
                    ords = fetch_ords(cur, header["predicate"], header["params"], *scope)
                elif op == "where":
                    # execute() (not sql()) so that binder errors keep their LINE/caret excerpt
                    ids = cur.execute(header["statement"]).fetchnumpy()["sample_id"]
                    cur.register("_hits", pa.table({"sample_id": pa.array(ids, pa.string())}))
                    del ids
                    ords = fetch_ords(cur, "sample_id IN (SELECT sample_id FROM _hits)", [], *scope)
                else:
                    return {"error": "protocol", "message": f"unknown request {op!r}"}, b""
            except duckdb.InterruptException:
                return {"error": "timeout", "fired": timer.fired}, b""
            except (duckdb.OutOfMemoryException, MemoryError):
                return {"error": "memory"}, b""
            except duckdb.Error as exc:
                message = str(exc)
                if "out of memory" in message.lower() or "bad allocation" in message.lower():
                    return {"error": "memory"}, b""
                return {"error": "duckdb", "message": message}, b""
        ords = ords.astype("<i8", copy=False)
        return {"ok": True, "n": int(len(ords)), "rss_mb": _status_mb("VmRSS")}, memoryview(ords).cast("B")
    finally:
        cur.close()


def main() -> int:
    # stdout carries the protocol: anything printed (by a library) goes to stderr instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of the server: it ends when the server's pipe closes
    if len(sys.argv) > 1:  # the server's import path: the same duckdb and pyarrow as the server
        sys.path[:] = json.loads(sys.argv[1])

    import pyarrow as pa

    start = read_frame(inp)
    if start is None:
        return 0
    init, payload = start
    parts = [pa.ipc.open_stream(payload).read_all()]  # the schema (and the first rows)
    for _ in range(int(init.get("more_parts", 0))):
        frame = read_frame(inp)
        if frame is None:
            return 0
        parts.append(pa.ipc.open_stream(frame[1]).read_all())
    samples = pa.concat_tables(parts)
    del parts, payload
    step_frame = read_frame(inp)
    if step_frame is None:
        return 0
    steps = pa.ipc.open_stream(step_frame[1]).read_all() if step_frame[1] else None
    del step_frame
    import numpy as np

    samples = samples.append_column("_ord", pa.array(np.arange(samples.num_rows, dtype=np.int64)))
    try:
        con = open_sandbox(samples, steps, init["memory_limit"], init.get("threads"), init["text_columns"],
                           init["text_redundant"], init["sample_columns"])
    except Exception as exc:  # reported to the server, which raises it there
        write_frame(out, {"error": "start", "message": f"{type(exc).__name__}: {exc}"})
        return 1
    del samples, steps
    import gc

    gc.collect()
    cap = _cap_address_space(int(init.get("budget_bytes", 0)))
    write_frame(out, {"ok": True, "pid": os.getpid(), "cap_bytes": cap, "rss_mb": _status_mb("VmRSS")})
    while (frame := read_frame(inp)) is not None:
        try:
            reply, payload = _answer(con, frame[0])
        except MemoryError:
            reply, payload = {"error": "memory"}, b""
        write_frame(out, reply, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
