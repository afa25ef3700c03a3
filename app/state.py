"""Session state and URL state of the app, under app-owned keys.

Everything the Explore page remembers between reruns lives in ``st.session_state`` under keys that start
with ``dmd.``; the shareable part of it is mirrored in the URL query string so that a copied link reopens
the same view (model, runs, layer, step, projection parameters, colouring, neighbours, selection).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import streamlit as st

from app import url
from pipeline.features import ALL_STEPS  # the step choice that maps every step at once
from pipeline.methods import METHODS as PROJECTION_METHODS
from pipeline.neighbors import METRICS as NEIGHBOR_METRICS
from store.lru import LRU

# Session keys (app-owned).
STORE_PATH = "dmd.store_path"
REFUSED_STORE = "dmd.refused_store"
VIEW = "dmd.view"
SELECTED = "dmd.selected"  # sample_id or None
MANUAL = "dmd.manual"  # manual neighbours, in click order
KNN_REMOVED = "dmd.knn_removed"  # kNN neighbours the user clicked away
LASSO = "dmd.lasso"  # ids of the last lasso/box selection
HIGHLIGHT = "dmd.highlight"  # ids highlighted from the URL (search results), or None
PNG_NONCE = "dmd.png_nonce"
URL_LOADED = "dmd.url_loaded"  # the URL has been read into the session once
URL_FIXES = "dmd.url_fixes"  # URL values that could not be used, with what was used instead (shown on Explore)
URL_PENDING = "dmd.url_pending"  # view fields read from the URL that Explore still has to check against the store
EDIT_PICK = "dmd.edit_pick"  # True: the next click on the map picks the interpolation's end point
EDIT_END = "dmd.edit_end"  # the interpolation's end point (a sample id)
EDIT_SETS = "dmd.edit_sets"  # steering sets kept from lasso selections: {"A": [ids], "B": [ids]}
EDIT_RESULTS = "dmd.edit_results"  # this session's edits, newest last: [{op, parents, ids, title}]
EDIT_JOB = "dmd.edit_job"  # the edit job this session waits for: {key, op, title, parents, command}
EDIT_ERROR = "dmd.edit_error"  # the last edit's failure: {error, command}
PROJECTION_REQUEST = "dmd.projection_request"  # (settings, filter ids, refit) of the map drawn: edits place into it
STORE_VIEWS = "dmd.store_views"  # resolved store path -> the view state left there (restored on coming back)

FEATURES = ("auto", "mean", "full", "pca")  # pipeline.features names; auto: the per-layer default
METRICS = NEIGHBOR_METRICS  # pipeline.neighbors owns the distances
SPACES = ("activation", "map")  # activation first: the map's neighbours are partly an artefact of the projection
FILTER_MODES = ("highlight", "project")
METHODS = tuple(PROJECTION_METHODS)  # umap, tsne, pca: each with its own parameters (pipeline.methods)
N_NEIGHBORS_RANGE = tuple(int(v) for v in PROJECTION_METHODS["umap"].PARAMS["n_neighbors"].ui_range)
MIN_DIST_RANGE = PROJECTION_METHODS["umap"].PARAMS["min_dist"].ui_range
K_RANGE = (1, 20)


def default_store_path() -> str:
    """``DMD2VIZ_STORE`` if set, else ``./data``."""
    return os.environ.get("DMD2VIZ_STORE") or "data"


def store_roots() -> list[Path] | None:
    """The folders a server lets users open stores under (``DMD2VIZ_STORE_ROOTS``, separated by ``os.pathsep``);
    None when unset: any folder the process can read."""
    raw = os.environ.get("DMD2VIZ_STORE_ROOTS", "")
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return roots or None


def store_allowed(path: str) -> bool:
    """Whether users may open `path`: the default store always, others only under `store_roots()` when set
    (compared after resolving links, so a link cannot lead outside)."""
    roots = store_roots()
    if roots is None or is_default_store(path):
        return True
    resolved = Path(path).expanduser().resolve()
    return any(resolved.is_relative_to(root) for root in roots)


def store_path() -> str:
    """The session's store, checked against `store_allowed` on every call, not only when it was opened: a
    folder swapped for a link to a store outside the roots after it was opened is refused from then on
    (remembered for the sidebar's message) and the session goes back to the default store."""
    path = st.session_state.get(STORE_PATH) or default_store_path()
    if store_allowed(path):
        return path
    st.session_state[REFUSED_STORE] = path
    _reset_store(None)
    return default_store_path()


def refused_store() -> str | None:
    """The last store path refused by `store_allowed` (shown in the sidebar), or None."""
    return st.session_state.get(REFUSED_STORE)


def set_store_path(path: str) -> None:
    """Switch stores: the view and the selection belong to the old store and are reset. A path outside
    the allowed folders is refused (remembered for the sidebar's message) and the store stays as it was."""
    path = (path or "").strip() or default_store_path()
    allowed = store_allowed(path)
    st.session_state[REFUSED_STORE] = None if allowed else path
    if path == st.session_state.get(STORE_PATH) or not allowed:
        return
    _reset_store(path)


def _reset_store(path: str | None) -> None:
    """Open `path` (None: the default store) with a fresh view and no selection."""
    st.session_state[STORE_PATH] = path
    st.session_state[VIEW] = ViewSettings()
    st.session_state[LASSO] = []
    clear_highlight()
    clear_selection()
    clear_edits()


def is_default_store(path: str) -> bool:
    return Path(path).expanduser().resolve() == Path(default_store_path()).expanduser().resolve()


def with_store(params: dict[str, str]) -> dict[str, str]:
    """A page's URL parameters plus the session's store when it is not the default one (a link opens the same
    store)."""
    path = store_path()
    if not is_default_store(path):
        params["store"] = path
    return params


@dataclass(frozen=True)
class ViewSettings:
    """What defines the Explore view; every field round-trips through the URL."""

    model: str | None = None
    runs: tuple[str, ...] = ()  # empty: all runs of the model
    layer: str | None = None
    step: int | str | None = None  # a step number, or ALL_STEPS
    feature: str = "auto"
    method: str = "umap"
    n_neighbors: int = 15  # UMAP's parameters
    min_dist: float = 0.1
    perplexity: float = 30.0  # t-SNE's
    metric: str = "euclidean"
    color_by: str = "label"
    classes: tuple[str, ...] = ()  # class/category filter (labels)
    keyword: str = ""
    filter_mode: str = "highlight"
    k: int = 5
    space: str = "activation"  # the faithful neighbours; "map": nearest on the 2-D map
    n_clusters: int = 8
    point_size: float = 5.0

    def validated(self) -> ViewSettings:
        """Clamp numbers into range and replace unknown choices by defaults (URLs are user input)."""
        d = ViewSettings()
        return replace(
            self,
            method=self.method if self.method in METHODS else d.method,
            **_method_params_in_range(self),
            feature=self.feature if self.feature in FEATURES else d.feature,
            metric=self.metric if self.metric in METRICS else d.metric,
            space=self.space if self.space in SPACES else d.space,
            filter_mode=self.filter_mode if self.filter_mode in FILTER_MODES else d.filter_mode,
            k=min(max(int(self.k), K_RANGE[0]), K_RANGE[1]),
            n_clusters=min(max(int(self.n_clusters), 2), 100),
            point_size=min(max(float(self.point_size), 1.0), 20.0),
        )


# The fields that decide a projection (besides model, runs, layer and step): what another page shares with Explore.
PROJECTION_FIELDS = ("feature", "method", "metric", *(n for m in PROJECTION_METHODS.values() for n in m.PARAMS))


def _method_params_in_range(view: ViewSettings) -> dict:
    """Every projection method's parameters of `view`, clamped into the range the app offers."""
    out = {}
    for cls in PROJECTION_METHODS.values():
        for name, p in cls.PARAMS.items():
            lo, hi = p.ui_range or (p.low, p.high)
            v = min(max(float(getattr(view, name)), lo), hi)
            out[name] = int(round(v)) if isinstance(p.default, int) else round(v, 3)
    return out


# URL parameter name for each field (short, stable: links are shared).
_URL_NAMES = {
    "model": "model",
    "runs": "runs",
    "layer": "layer",
    "step": "step",
    "feature": "feat",
    "method": "method",
    "n_neighbors": "nn",
    "min_dist": "md",
    "perplexity": "perp",
    "metric": "metric",
    "color_by": "color",
    "classes": "cls",
    "keyword": "kw",
    "filter_mode": "fm",
    "k": "k",
    "space": "space",
    "n_clusters": "nc",
    "point_size": "ps",
}
_LIST_SEP = "~"  # never inside run ids, sample ids or class labels such as "207: golden retriever"


@dataclass(frozen=True)
class UrlFix:
    """A URL value that could not be used: the parameter, the value as given, what was used instead, why."""

    param: str
    value: str
    used: str
    why: str = ""

    def text(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"`{self.param}={self.value}`{why}: used {self.used}"


def url_param(name: str) -> str:
    """The URL parameter of a view field (``color_by`` -> ``color``)."""
    return _URL_NAMES[name]


def show_value(value) -> str:
    """A view value as the URL notice names it."""
    if value is None or value == "" or value == ():
        return "the default"
    if isinstance(value, (tuple, list)):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _parse_field(name: str, default, raw: str):
    if isinstance(default, tuple):
        return tuple(p for p in raw.split(_LIST_SEP) if p)
    if name == "step":
        return ALL_STEPS if raw.strip().lower() == ALL_STEPS else int(raw)
    if isinstance(default, bool):
        return raw in ("1", "true")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def _why_replaced(name: str) -> str:
    choices = {"method": METHODS, "feature": FEATURES, "metric": METRICS, "space": SPACES,
               "filter_mode": FILTER_MODES}
    if name in choices:
        return "not one of " + ", ".join(choices[name])
    return "out of range"


def parse_view(params: dict[str, str]) -> tuple[ViewSettings, list[UrlFix]]:
    """Parse URL query parameters: the view, and what could not be used as given (a malformed value falls
    back to the field's default, an unknown choice to the default choice, a number is clamped into range)."""
    values: dict = {}
    malformed: dict[str, str] = {}
    defaults = ViewSettings()
    for f in fields(ViewSettings):
        raw = params.get(_URL_NAMES[f.name])
        if raw is None or raw == "":
            continue
        try:
            values[f.name] = _parse_field(f.name, getattr(defaults, f.name), raw)
        except ValueError:
            malformed[f.name] = raw
    given = ViewSettings(**values)
    view = given.validated()
    fixes = []
    for f in fields(ViewSettings):
        param = _URL_NAMES[f.name]
        if f.name in malformed:
            what = "not a step number" if f.name == "step" else "not a number"
            fixes.append(UrlFix(param, malformed[f.name], show_value(getattr(view, f.name)), what))
        elif f.name in values and getattr(view, f.name) != getattr(given, f.name):
            fixes.append(UrlFix(param, params[param], show_value(getattr(view, f.name)), _why_replaced(f.name)))
    return view, fixes


def view_from_params(params: dict[str, str]) -> ViewSettings:
    """Parse URL query parameters; anything malformed falls back to the default for that field."""
    return parse_view(params)[0]


def view_to_params(view: ViewSettings) -> dict[str, str]:
    """The query parameters of a view; fields at their default value are left out to keep links short."""
    out: dict[str, str] = {}
    defaults = ViewSettings()
    for name, value in asdict(view).items():
        if value == getattr(defaults, name) or value is None:
            continue
        if isinstance(value, (tuple, list)):
            out[_URL_NAMES[name]] = _LIST_SEP.join(value)
        else:
            out[_URL_NAMES[name]] = str(value)
    return out


@dataclass
class Selection:
    """The selected sample and its neighbour edits."""

    selected: str | None = None
    manual: list[str] = field(default_factory=list)
    knn_removed: list[str] = field(default_factory=list)


def get_view() -> ViewSettings:
    return st.session_state.get(VIEW) or ViewSettings()


def set_view(view: ViewSettings) -> None:
    st.session_state[VIEW] = view.validated()


def get_selection() -> Selection:
    return Selection(
        selected=st.session_state.get(SELECTED),
        manual=list(st.session_state.get(MANUAL, [])),
        knn_removed=list(st.session_state.get(KNN_REMOVED, [])),
    )


def select(sample_id: str | None) -> None:
    """Make ``sample_id`` the selected point; its neighbour edits start empty."""
    st.session_state[SELECTED] = sample_id
    st.session_state[MANUAL] = []
    st.session_state[KNN_REMOVED] = []


def select_once(sample_id: str | None, done_key: str) -> None:
    """Select a page's URL sample (``sel``) on the page's first run that has one in this session (`done_key`
    remembers it), so the selection made on the page afterwards is not overridden."""
    if sample_id and not st.session_state.get(done_key):
        st.session_state[done_key] = True
        select(sample_id)


def clear_selection() -> None:
    select(None)


def apply_click(sel: Selection, sample_id: str, knn: list[str]) -> tuple[Selection, str]:
    """What a click on the map does to a selection (pure; ``knn``: the kNN list shown for it).

    No selection: the point becomes the selected one. With a selection: a kNN neighbour is removed from the
    kNN list, a manual neighbour is removed, any other point becomes a manual neighbour; clicking the
    selected point itself changes nothing.
    """
    if not sel.selected:
        return Selection(selected=sample_id), "selected"
    if sample_id == sel.selected:
        return sel, "none"
    manual, removed = list(sel.manual), list(sel.knn_removed)
    if sample_id in manual:
        manual.remove(sample_id)
        result = "removed manual"
    elif sample_id in knn and sample_id not in removed:
        removed.append(sample_id)
        result = "removed knn"
    else:
        manual.append(sample_id)
        result = "added manual"
    return Selection(sel.selected, manual, removed), result


def put_selection(sel: Selection) -> None:
    st.session_state[SELECTED] = sel.selected
    st.session_state[MANUAL] = list(sel.manual)
    st.session_state[KNN_REMOVED] = list(sel.knn_removed)


def toggle_neighbour(sample_id: str, knn: list[str]) -> str:
    """Toggle ``sample_id`` as a neighbour of the selected point (see ``apply_click``)."""
    sel, result = apply_click(get_selection(), sample_id, knn)
    put_selection(sel)
    return result


def handle_click(sample_id: str, knn_of) -> str:
    """The map's click callback: ``knn_of(selected) -> list[str]`` gives the kNN list currently shown. While
    the edit panel waits for an interpolation's end point, the click picks it instead."""
    if st.session_state.get(EDIT_PICK):
        st.session_state[EDIT_PICK] = False
        st.session_state[EDIT_END] = sample_id
        return "picked end"
    current = get_selection()
    sel, result = apply_click(current, sample_id, knn_of(current.selected) if current.selected else [])
    put_selection(sel)
    return result


def find_neighbours() -> None:
    """Recompute the kNN list of the selected point: clicked-away neighbours come back."""
    st.session_state[KNN_REMOVED] = []


# --- edits (what if) ---------------------------------------------------------------------------------


def pick_edit_end(on: bool = True) -> None:
    """Make the next click on the map pick the interpolation's end point (or stop waiting for it)."""
    st.session_state[EDIT_PICK] = bool(on)


def edit_sets() -> dict[str, list[str]]:
    return {k: list(v) for k, v in (st.session_state.get(EDIT_SETS) or {}).items()}


def keep_edit_set(name: str, ids: list[str]) -> None:
    """Keep `ids` (a lasso/box selection) as the steering set `name` ("A" or "B")."""
    sets = edit_sets()
    sets[name] = [str(s) for s in ids]
    st.session_state[EDIT_SETS] = sets


def edit_results() -> list[dict]:
    return list(st.session_state.get(EDIT_RESULTS) or [])


EDITS_REMEMBERED = 8


def add_edit_result(record: dict) -> None:
    """Remember an edit of this session (the panel shows the newest; the map links it to its parents)."""
    records = [r for r in edit_results() if r.get("key") != record.get("key")]
    st.session_state[EDIT_RESULTS] = [*records, record][-EDITS_REMEMBERED:]


def clear_edits() -> None:
    for key in (EDIT_PICK, EDIT_END, EDIT_SETS, EDIT_RESULTS, EDIT_JOB, EDIT_ERROR):
        st.session_state.pop(key, None)


# --- highlights passed in the URL (the Search page's "show on map") ----------------------------------

_HIGHLIGHT_LIMIT = 64  # result sets kept in memory by the server


@st.cache_resource
def _highlight_registry() -> LRU[str, tuple[str, ...]]:
    return LRU(_HIGHLIGHT_LIMIT)


def register_highlight(sample_ids) -> str:
    """Keep a set of sample ids on the server and return a short token for the URL (``?hl=s:<token>``).

    Tokens live in memory for the life of the server process (the last 64 sets); a link to a forgotten
    token opens the map without a highlight and says so.
    """
    token = secrets.token_urlsafe(8)
    _highlight_registry().put(token, tuple(str(s) for s in sample_ids))
    return f"s:{token}"


def highlight_param(sample_ids) -> str:
    """The ``hl`` query value for a set of ids: the ids themselves when short, else a server token."""
    ids = [str(s) for s in sample_ids]
    joined = _LIST_SEP.join(ids)
    if len(ids) <= 20 and len(joined) <= 600:
        return joined
    return register_highlight(ids)


def highlight_ids_from_query(value: str | None = None) -> list[str] | None:
    """The sample ids named by ``?hl=`` (a ``~``-separated id list or ``s:<token>``); None when absent.

    Returns ``[]`` for a token the server no longer knows.
    """
    if value is None:
        value = st.query_params.get("hl")
    if not value:
        return None
    if value.startswith("s:"):
        ids = _highlight_registry().get(value[2:])
        return list(ids) if ids is not None else []
    return [p for p in value.split(_LIST_SEP) if p]


# --- URL <-> session ---------------------------------------------------------------------------------


def load_from_url_once() -> None:
    """Read the view, selection and highlight from the URL into a new session (only once per session)."""
    if st.session_state.get(URL_LOADED):
        return
    st.session_state[URL_LOADED] = True
    params = url.current()
    if params.get("store"):
        if store_allowed(params["store"]):
            st.session_state[STORE_PATH] = params["store"]
        else:
            st.session_state[REFUSED_STORE] = params["store"]
    st.session_state[VIEW], fixes = parse_view(params)
    st.session_state[URL_FIXES] = fixes
    # what only the store can judge (a model, layer, step, colour, sample it has?) Explore checks on its first run
    st.session_state[URL_PENDING] = {name: params[p] for name, p in (*_URL_NAMES.items(), ("selected", "sel"))
                                     if params.get(p)}
    select(params.get("sel") or None)
    if params.get("man"):
        st.session_state[MANUAL] = [p for p in params["man"].split(_LIST_SEP) if p]
    if params.get("hl"):
        st.session_state[HIGHLIGHT] = highlight_ids_from_query(params["hl"])
        st.session_state["dmd.hl_param"] = params["hl"]


def sync_url() -> None:
    """Write the current view and selection to the URL (only the keys that differ from the defaults)."""
    params = with_store(view_to_params(get_view()))
    sel = get_selection()
    if sel.selected:
        params["sel"] = sel.selected
        if sel.manual:
            params["man"] = _LIST_SEP.join(sel.manual)
    if st.session_state.get(HIGHLIGHT) is not None and st.session_state.get("dmd.hl_param"):
        params["hl"] = st.session_state["dmd.hl_param"]
    url.sync(params)


def clear_highlight() -> None:
    st.session_state[HIGHLIGHT] = None
    st.session_state.pop("dmd.hl_param", None)


# --- URL values that could not be used -----------------------------------------------------------------

def url_fixes() -> list[UrlFix]:
    """The URL values of this session's link that could not be used, with what was used instead."""
    return list(st.session_state.get(URL_FIXES) or [])


def add_url_fix(fix: UrlFix) -> None:
    fixes = url_fixes()
    if all(f.param != fix.param for f in fixes):
        st.session_state[URL_FIXES] = [*fixes, fix]


def clear_url_fixes() -> None:
    """Forget the link's fixes (dismissed, or the link was not opened on Explore) and what is left to check."""
    st.session_state[URL_FIXES] = []
    st.session_state[URL_PENDING] = {}


def url_pending() -> dict[str, str]:
    """View fields (and ``selected``) that came from the URL and are not yet checked against the store:
    field -> the raw URL value."""
    return dict(st.session_state.get(URL_PENDING) or {})


def url_checked() -> None:
    st.session_state[URL_PENDING] = {}


# --- switching stores without losing the view ---------------------------------------------------------

_VIEW_KEYS = (VIEW, SELECTED, MANUAL, KNN_REMOVED, LASSO, HIGHLIGHT, "dmd.hl_param")
_STORES_REMEMBERED = 8
WIDGET_PREFIX = "w_"  # the Explore sidebar's widget keys: their values follow the view


def _store_key(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def change_store(path: str) -> bool:
    """The sidebar's store field: switch stores (`set_store_path`) and keep what each store showed.

    The view, selection and highlight of the store left are remembered and come back when the session returns
    to it: a typo in the store field, then the right path again, leaves the view as it was. The Explore
    sidebar's widget values are dropped, so that its widgets are drawn again from the view: a page that stops
    before drawing them (a missing store) keeps Streamlit's values for widgets the browser no longer has, and
    the browser would redraw them at their defaults (a slider's minimum). Returns whether the store changed."""
    before = store_path()
    remembered = dict(st.session_state.get(STORE_VIEWS) or {})
    if get_view().model is not None:  # a view was drawn there
        remembered.pop(_store_key(before), None)  # (re)inserted last: the most recent
        remembered[_store_key(before)] = {k: st.session_state.get(k) for k in _VIEW_KEYS}
        while len(remembered) > _STORES_REMEMBERED:
            remembered.pop(next(iter(remembered)))
    current = {k: st.session_state.get(k) for k in _VIEW_KEYS}
    set_store_path(path)
    after = store_path()
    if _store_key(after) == _store_key(before):  # the same store, spelled otherwise, or refused: nothing changes
        for key, value in current.items():
            st.session_state[key] = value
        return False
    for key in [k for k in st.session_state if str(k).startswith(WIDGET_PREFIX)]:
        del st.session_state[key]
    for key, value in (remembered.pop(_store_key(after), None) or {}).items():
        st.session_state[key] = value
    st.session_state[STORE_VIEWS] = remembered
    clear_url_fixes()
    return True
