"""Search: keywords, a regular expression or a SQL WHERE clause over the samples of the store.

Results show as a grid of thumbnails (label or prompt, category, seed) with counts per category; "Show on map"
opens Explore with the result set highlighted (through the URL's ``hl`` parameter); the result set exports as
CSV or Parquet. Every query goes through the app's data layer (`app.data.search`) and runs in
``store.search``'s sandbox: errors come back inline, with a caret under the problem, and never crash the page.
The URL keeps the query (``sq``, ``sm``, ``smodel``) so a link reruns it.
"""

from __future__ import annotations

import io
from dataclasses import replace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import streamlit as st

from app import data, navigation, page, state
from app.data import SearchError

PAGE_SIZE = 24
GRID_COLUMNS = 6
LIMITS = (100, 1_000, 10_000, 100_000)
TIMEOUT_S = data.SEARCH_TIMEOUT_S
ALL_MODELS = "(all models)"
CAPTION_CHARS = 90

# widget keys (page-local) and session keys (app-owned, ``dmd.`` prefix)
K_MODE, K_MODEL, K_RUNS, K_LIMIT, K_PAGE = "search.mode", "search.model", "search.runs", "search.limit", "search.page"
K_TEXT = {"keywords": "search.text_keywords", "sql": "search.text_sql", "regex": "search.text_regex"}
K_MAP_MODEL = "search.map_model"
RESULT = "dmd.search.result"  # (query tuple, SearchResult | SearchError)
URL_DONE = "dmd.search.url_loaded"
URL_TEXT, URL_MODE, URL_MODEL = "sq", "sm", "smodel"

KIND_TITLES = {"syntax": "Syntax error", "refused": "Not allowed", "error": "Error", "timeout": "Stopped"}
HELP = {
    "keywords": (
        "Terms are ANDed; `OR` between alternatives; `NOT term` or `-term` excludes; `\"quoted phrases\"` keep "
        "words together; parentheses group. Matching is case-insensitive and finds substrings (`car` also "
        "finds `cars`) in the prompt, label, class name and category. Operators are upper-case: a lower-case "
        "`and` is a word.\n\nExamples: `dog OR cat` · `\"red car\" -night` · `(castle OR tower) NOT snow`"
    ),
    "regex": (
        "One regular expression (RE2 syntax: no look-arounds or backreferences), case-insensitive, matched "
        "anywhere in the prompt, label, class name or category.\n\nExamples: `^a (red|blue) car` · "
        "`\\b(cat|dog)s?\\b` · `^2[0-9]{2}:` (ImageNet classes 200-299)"
    ),
    "sql": (
        "A SQL condition (what follows `WHERE`) over the table `samples`, one row per sample and sampling "
        "step: a sample matches when any of its steps does. Read-only, one condition, no file or network "
        f"access, stopped after {TIMEOUT_S:g} s.\n\nExamples: `prompt ILIKE '%red car%' AND "
        "category = 'vehicles'` · `step = 3 AND sigma < 1` · `class_id BETWEEN 150 AND 160` · "
        "`seed % 2 = 0 AND model = 'sdxl'`"
    ),
}
PLACEHOLDERS = {
    "keywords": 'e.g. dog OR "red car" -night',
    "regex": "e.g. ^a (red|blue) car",
    "sql": "e.g. prompt ILIKE '%red car%' AND category = 'vehicles' AND step = 0",
}


def _load_url_once(models: list[str]) -> None:
    """A link to this page (``?sq=...&sm=...``) fills the form and runs the query, once per session."""
    if st.session_state.get(URL_DONE):
        return
    st.session_state[URL_DONE] = True
    text = st.query_params.get(URL_TEXT)
    if not text:
        return
    mode = st.query_params.get(URL_MODE, "keywords")
    mode = mode if mode in data.search_modes() else "keywords"
    model = st.query_params.get(URL_MODEL)
    st.session_state[K_MODE] = mode
    st.session_state[K_TEXT[mode]] = text
    if model in models:
        st.session_state[K_MODEL] = model
    st.session_state["dmd.search.pending"] = True


def _run(path: str, query: tuple):
    """The query's ``SearchResult``, or its ``SearchError`` (every failure is one: the page never shows a
    traceback, `app.data.search` logs it)."""
    mode, text, model, runs, limit = query
    try:
        return data.search(path, mode, text, model, runs, limit=limit, timeout_s=TIMEOUT_S)
    except SearchError as exc:
        return exc


def _show_error(err: SearchError) -> None:
    st.error(f"**{KIND_TITLES.get(err.kind, 'Error')}**: {err.message}", icon=":material/error:")
    if err.position is not None and err.text:
        st.code(err.caret(), language=None)


def _short(text, n: int = CAPTION_CHARS) -> str:
    text = "" if text is None or (isinstance(text, float) and pd.isna(text)) else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _grid(path: str, frame: pd.DataFrame) -> None:
    pages = max(1, -(-len(frame) // PAGE_SIZE))
    if st.session_state.get(K_PAGE, 1) > pages:
        st.session_state[K_PAGE] = 1
    page = st.number_input(f"Page (of {pages:,})", 1, pages, key=K_PAGE, step=1) if pages > 1 else 1
    rows = frame.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    urls = data.thumb_urls(path, rows["sample_id"].tolist())
    cols = st.columns(GRID_COLUMNS, gap="small")
    for i, (row, url) in enumerate(zip(rows.itertuples(index=False), urls, strict=True)):
        with cols[i % GRID_COLUMNS], st.container(border=True, key=f"hit_{row.sample_id}"):
            st.image(url, width="stretch")
            text = row.prompt if isinstance(row.prompt, str) else row.label
            category = row.category if isinstance(row.category, str) else "—"
            # the run (and its kind) on a line of its own: the demo's runs share seeds and classes, and a grid
            # of one class otherwise showed eight runs' images under captions that differ only in the seed
            kind = getattr(row, "run_kind", None)
            run = f"{row.run_id} ({kind})" if isinstance(kind, str) and kind else str(row.run_id)
            st.caption(f"{_short(text)}  \n:gray[{category} · seed {row.seed}]  \n:gray[{_short(run)}]")


def _counts(result) -> None:
    counts = result.counts("category")
    st.markdown("**Per category**" + (" (shown rows)" if result.truncated else ""))
    st.dataframe(counts, hide_index=True, width="stretch", height=min(36 * (len(counts) + 1), 420))
    if len(result.model_counts) > 1:
        st.markdown("**Per model**")
        st.dataframe(pd.DataFrame({"model": list(result.model_counts), "count": list(result.model_counts.values())}),
                     hide_index=True, width="stretch")


def _show_on_map(path: str, result, query: tuple) -> None:
    mode, text, model, runs, _limit = query
    models = list(result.model_counts)  # every model with a match, also beyond the row limit
    if model is None and len(models) > 1:
        target = st.selectbox("Model to show", models, key=K_MAP_MODEL,
                              help="The map shows one model at a time.")
    else:
        target = model or models[0]
    if not st.button("Show on map", type="primary", icon=":material/scatter_plot:", key="search.show_on_map",
                     help="Open Explore with these samples highlighted (all matches of this model, beyond the "
                          "row limit)."):
        return
    try:  # every match of the chosen model, not only the rows shown here
        ids = data.search_ids(path, mode, text, model=target, runs=runs, timeout_s=TIMEOUT_S)
    except (SearchError, ValueError) as exc:
        st.error(f"Could not collect the matches: {exc}")
        return
    param = state.highlight_param(ids)
    st.session_state[state.HIGHLIGHT] = ids
    st.session_state["dmd.hl_param"] = param
    view = state.get_view()
    # the filters of the old view would hide part of the highlight; the layer and step are checked by Explore
    state.set_view(replace(view, model=target, runs=tuple(runs) if model == target else (), classes=(),
                           keyword=""))
    st.switch_page(navigation.PAGES_DIR / "explore.py", query_params={"model": target, "hl": param})


def _export(result) -> None:
    frame = result.frame
    stem = f"search-{result.mode}-{len(frame)}"
    # one button a row: the side column is narrow, and two side by side cut "Parquet" to "Par…"
    box = st.container()
    box.download_button("CSV", frame.to_csv(index=False).encode(), f"{stem}.csv", "text/csv",
                        icon=":material/download:", key="search.csv", on_click="ignore", width="stretch")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd")
    box.download_button("Parquet", buf.getvalue(), f"{stem}.parquet", "application/vnd.apache.parquet",
                        icon=":material/download:", key="search.parquet", on_click="ignore", width="stretch")


def _results(path: str, query: tuple, outcome) -> None:
    mode, text, model, runs, _limit = query
    if isinstance(outcome, SearchError):
        _show_error(outcome)
        return
    result = outcome
    scope = model or "all models"
    if runs:
        scope += f", runs {', '.join(runs)}"
    shown = f" · showing the first {len(result.frame):,} (row limit)" if result.truncated else ""
    st.markdown(f"**{result.total:,} matching samples** in {scope} · {result.elapsed_s * 1e3:.0f} ms{shown}")
    if result.total == 0:
        st.info("No sample matches this search.", icon=":material/search_off:")
        return
    left, right = st.columns([4, 1], gap="medium")
    with left:
        _grid(path, result.frame)
    with right:
        _show_on_map(path, result, query)
        st.markdown("**Export** the result set")
        _export(result)
        _counts(result)


# --------------------------------------------------------------------------------------------------- page

path, status = page.header("Search")

models = list(status.models)
_load_url_once(models)
st.caption(f"Store `{data.resolve(path)}` · keywords, a regular expression or a SQL condition over the samples")

modes = data.search_modes()
if st.session_state.get(K_MODE) not in modes:
    st.session_state[K_MODE] = "keywords"
mode = st.radio("Search with", list(modes), key=K_MODE, horizontal=True, format_func=modes.get)
c_model, c_runs, c_limit = st.columns([2, 3, 1])
if st.session_state.get(K_MODEL) not in [ALL_MODELS, *models]:
    st.session_state[K_MODEL] = ALL_MODELS
chosen = c_model.selectbox("Model", [ALL_MODELS, *models], key=K_MODEL)
model = None if chosen == ALL_MODELS else chosen
run_choices = data.model_samples(path, model)["run_id"].drop_duplicates().tolist() if model else []
if any(r not in run_choices for r in st.session_state.get(K_RUNS, [])):
    st.session_state[K_RUNS] = []
runs = c_runs.multiselect("Runs", run_choices, key=K_RUNS, placeholder="all runs", disabled=model is None,
                          help="Pick a model first to narrow the search to some of its runs.")
if st.session_state.get(K_LIMIT) not in LIMITS:
    st.session_state[K_LIMIT] = 10_000
limit = c_limit.selectbox("Row limit", LIMITS, key=K_LIMIT, format_func=lambda n: f"{n:,}")

with st.form("search.form", border=False):
    if mode == "sql":
        text = st.text_area("WHERE", key=K_TEXT[mode], height=96, placeholder=PLACEHOLDERS[mode])
    else:
        text = st.text_input("Keywords" if mode == "keywords" else "Regular expression", key=K_TEXT[mode],
                             placeholder=PLACEHOLDERS[mode])
    submitted = st.form_submit_button("Search", type="primary", icon=":material/search:")
with st.expander("How to write a search", expanded=False):
    st.markdown(HELP[mode])
    if mode == "sql":
        st.dataframe(pd.DataFrame([{"column": k, "type": t, "meaning": m}
                                   for k, (t, m) in data.search_columns().items()]),
                     hide_index=True, width="stretch")

if st.session_state.pop("dmd.search.pending", False):
    submitted = True
if submitted:
    if not (text or "").strip():
        st.session_state.pop(RESULT, None)
        st.warning("Type something to search for.", icon=":material/edit:")
    else:
        query = (mode, text, model, tuple(runs), int(limit))
        st.session_state[RESULT] = (query, _run(path, query))
        st.session_state[K_PAGE] = 1
        # the query goes into the URL beside the app's own parameters (a copied link reruns it)
        st.query_params[URL_TEXT] = text
        st.query_params[URL_MODE] = mode
        if model:
            st.query_params[URL_MODEL] = model
        elif URL_MODEL in st.query_params:
            del st.query_params[URL_MODEL]

if RESULT in st.session_state:
    query, outcome = st.session_state[RESULT]
    if query[0] != mode or query[1] != (text or ""):
        st.caption(f"Results of the last search ({modes[query[0]]}: `{_short(query[1], 60)}`). "
                   "Press Search to run the new one.")
    _results(path, query, outcome)
