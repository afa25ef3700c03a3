"""What the Analysis page reads and remembers: its URL state, the background jobs of its analyses
(`pipeline.analysis`: class separation and outliers share one kNN graph, clusters run apart), the map (Explore's
cached projection, narrowed to the facet filters), its colourings, and the tables with their thumbnails and
links into Explore. The analyses compute and cache in `pipeline.analysis`; which samples a facet filter keeps is
`app.facets`; nothing here draws.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from app import data, facets, job_progress, state, url, views
from app.state import ViewSettings

SEP = url.SEP  # list separator in the URL
URL_LOADED = "ana.url_loaded"
URL_VALUES = "ana.url"  # the page's URL values, read once per session
FILTERS = "ana.filters"  # the active facet filters (app.facets.Filters)
CELL = "ana.cell"  # (class a, class b) of the confusion cell whose samples are highlighted, or None
CLUSTER = "ana.cluster"  # the cluster whose samples are highlighted, or None
MAP_ASKED = "ana.map_asked"  # projection keys this session asked the page to compute
REPORTS_ASKED = "ana.reports_asked"  # report job keys this session asked for
CANCELLED = "ana.cancelled"  # job keys this session cancelled: not started again until asked
EXPLORE_URL_PATH = "explore"  # app.navigation's url_path of Explore
COLORS = {"class": "class / category", "cluster": "cluster", "lof": "outlier score (LOF)",
          "kdist": "distance to the k-th neighbour"}
K_RANGE = (2, 50)
N_CLUSTERS_RANGE = (2, 50)
GALLERY = 12  # outliers shown with their images


@dataclass(frozen=True)
class AnalysisSettings:
    """The page's own parameters (the model, layer, step, runs and projection are Explore's `ViewSettings`)."""

    k: int = 10  # neighbours for purity, confusion and outliers
    method: str = "hdbscan"
    n_clusters: int = 8  # k-means' k
    min_cluster_size: int = 0  # HDBSCAN's; 0: automatic (max(5, samples / 100))
    color: str = "class"

    def validated(self) -> AnalysisSettings:
        from pipeline.analysis import CLUSTER_METHODS

        d = AnalysisSettings()
        return replace(self, k=min(max(int(self.k), K_RANGE[0]), K_RANGE[1]),
                       method=self.method if self.method in CLUSTER_METHODS else d.method,
                       n_clusters=min(max(int(self.n_clusters), N_CLUSTERS_RANGE[0]), N_CLUSTERS_RANGE[1]),
                       min_cluster_size=max(int(self.min_cluster_size), 0) if self.min_cluster_size != 1 else 2,
                       color=self.color if self.color in COLORS else d.color)


_URL_NAMES = {"k": "ak", "method": "cm", "n_clusters": "ck", "min_cluster_size": "mcs", "color": "acol"}


# ------------------------------------------------------------------------------------------------- URL

def parse_params(q: dict) -> dict:
    """The page's values of a URL (its analysis parameters, facet filters and highlighted cell or cluster);
    malformed numbers are left out (the URL is user input)."""
    values: dict = {}
    for name, param in _URL_NAMES.items():
        raw = q.get(param)
        if raw in (None, ""):
            continue
        value = str(raw) if name in ("method", "color") else url.parse_int(q, param)
        if value is not None:
            values[name] = value
    out: dict = {"settings": AnalysisSettings(**values).validated()}
    out["filters"], out["filter_problems"] = facets.from_params(q)
    cell = [p for p in str(q.get("cell") or "").split(SEP) if p]
    if len(cell) == 2:
        out["cell"] = (cell[0], cell[1])
    out["cluster"] = url.parse_int(q, "clu")
    return out


def load_url_once() -> dict:
    """The page's URL values, read on its first run in this session; the facet filters, the cell and the
    cluster go into the session."""
    q = url.read_once(URL_LOADED)
    if q is not None:
        parsed = parse_params(q)
        st.session_state[URL_VALUES] = parsed
        st.session_state[FILTERS] = parsed["filters"]
        st.session_state[CELL] = parsed.get("cell")
        st.session_state[CLUSTER] = parsed.get("cluster")
    return st.session_state.get(URL_VALUES) or {}


def to_params(view: ViewSettings, a: AnalysisSettings) -> dict[str, str]:
    """The page's query parameters: Explore's view (the same names: a link opens the same map on either page),
    the analysis parameters that differ from the defaults, the facet filters and the highlighted cell or
    cluster."""
    params = state.view_to_params(view)
    d = AnalysisSettings()
    for name, param in _URL_NAMES.items():
        if getattr(a, name) != getattr(d, name):
            params[param] = str(getattr(a, name))
    params.update(facets.to_params(get_filters()))
    if st.session_state.get(CELL):
        params["cell"] = SEP.join(st.session_state[CELL])
    if st.session_state.get(CLUSTER) is not None:
        params["clu"] = str(st.session_state[CLUSTER])
    return state.with_store(params)


def sync_url(view: ViewSettings, a: AnalysisSettings) -> None:
    url.sync(to_params(view, a))


def explore_link(view: ViewSettings, sample_id: str) -> str:
    """A link (relative to this page) that opens ``sample_id`` selected on Explore's map of this view."""
    params = {**state.view_to_params(view), "sel": sample_id}
    path = state.store_path()
    if not state.is_default_store(path):
        params["store"] = path
    return f"{EXPLORE_URL_PATH}?{urlencode(params)}"


# --------------------------------------------------------------------------------------- facet filters

def get_filters() -> facets.Filters:
    return tuple(st.session_state.get(FILTERS) or ())


def set_filters(filters: facets.Filters) -> None:
    st.session_state[FILTERS] = tuple(filters)


def remove_filter(column: str) -> None:
    set_filters(facets.set_filter(get_filters(), None, column))


def clear_filters() -> None:
    set_filters(())


def filters_tag(filters: facets.Filters) -> str:
    """A short name of a set of filters: part of each facet chart's key, so a chart is drawn anew after every
    change and an event knows which filters it was drawn for."""
    return _digest([repr(f) for f in filters])[:8]


def on_facet_select(key: str, facet: facets.Facet, tag: str) -> None:
    """A facet chart's selection event (Vega-Lite): a clicked bar toggles its value, a clicked bin or a
    brushed range becomes the column's range. An event of a chart drawn for other filters than the current
    ones is stale (a click sent again by a rerun that was interrupted) and changes nothing: a toggle applied
    twice would undo itself."""
    if tag != filters_tag(get_filters()):
        return
    event = st.session_state.get(key) or {}
    selection = (event.get("selection") or {}) if hasattr(event, "get") else {}
    for name in ("pick", "brush"):
        got = selection.get(name)
        if got:
            set_filters(facets.from_selection(get_filters(), facet, got))
            return


def set_cell(cell: tuple[str, str] | None) -> None:
    st.session_state[CELL] = tuple(cell) if cell else None
    if cell:
        st.session_state[CLUSTER] = None


def set_cluster(cluster: int | None) -> None:
    st.session_state[CLUSTER] = cluster
    if cluster is not None:
        st.session_state[CELL] = None


def on_cell_select(key: str) -> None:
    """The confusion heatmap's selection event: the clicked cell's samples are highlighted."""
    event = st.session_state.get(key) or {}
    points = ((event.get("selection") or {}).get("cell") or []) if hasattr(event, "get") else []
    if points and "row" in points[0] and "col" in points[0]:
        set_cell((str(points[0]["row"]), str(points[0]["col"])))


# --------------------------------------------------------------------------------------------- the map

def map_request(path: str, view: ViewSettings) -> tuple[list[str] | None, list[str] | None, str | None]:
    """(the sample ids Explore's map is projected on (None: all), the ids of Explore's class and keyword filter
    (None: no filter), an error of the keyword filter): the same map and the same filter as Explore's."""
    from app.explore import filter_ids

    ids, error = filter_ids(path, view)
    project_only = ids is not None and view.filter_mode == "project" and len(ids) >= 10
    return (ids if project_only else None), ids, error


def map_known(path: str, view: ViewSettings, wanted: list[str] | None) -> bool:
    """Whether Explore's map of this view exists (in this server's jobs, or in the store's cache), so that
    showing it costs no fit."""
    key = data.projection_job_key(path, view, wanted, 0)
    job = data.jobs().find(key)
    if job is not None and (job.running or (job.result is not None and not job.error)):
        return True
    if key in (st.session_state.get(MAP_ASKED) or ()):
        return True
    try:
        from pipeline.features import filter_description, filter_id
        from pipeline.project import ProjectionParams, projection_key

        runs = sorted(view.runs) or None
        version = data.version(path, view.model, view.layer, runs)
        params = ProjectionParams.coerce(data.projection_params(view))
        pkey = projection_key(version, view.model, view.layer, view.step, params,
                              filter_id(filter_description(runs, wanted)))
        return data.open_store(path).derived.path("projection", view.model, view.layer, pkey).exists()
    except (ValueError, OSError):
        return False


def ask_map(path: str, view: ViewSettings, wanted: list[str] | None) -> None:
    asked = set(st.session_state.get(MAP_ASKED) or ())
    asked.add(data.projection_job_key(path, view, wanted, 0))
    st.session_state[MAP_ASKED] = asked


def _digest(ids) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


def narrowed_view(path: str, view: views.View, keep: np.ndarray) -> views.View:
    """The map's points that pass the facet filters (a view of its own, same coordinates): the map drawn
    filtered. All pass: the view itself."""
    if keep.all():
        return view
    return data.narrowed_view(path, view, np.flatnonzero(keep), "facets")


def class_coloring(view: views.View) -> views.Coloring:
    column = facets.class_column(view.frame)
    return (views.coloring(view, column) if column != "label" else None) or views.coloring(view, "label")


def _aligned(full: views.View, sub: views.View, coloring: views.Coloring) -> views.Coloring:
    """A colouring of the full view restricted to ``sub``'s points, keeping every category's colour."""
    values = coloring.values.set_axis(full.sample_ids).reindex(sub.sample_ids).reset_index(drop=True)
    if coloring.kind != "category":
        return replace(coloring, values=values)
    payload = views.color_payload(coloring)
    return replace(coloring, values=values, order=tuple(payload["names"]), colors=tuple(payload["colors"]))


def color_file(path: str, full: views.View, sub: views.View, color: str, clusters=None, outliers=None,
               result_key: tuple | None = None) -> str:
    """The colour file of the map: class, cluster or an outlier score (falls back to the class while its
    analysis computes); written once per map, colouring and result (reruns are free)."""
    if color == "cluster" and clusters is None or color in ("lof", "kdist") and outliers is None:
        color, result_key = "class", None
    return _color_file(sub.key, color, repr(result_key), full, sub, clusters, outliers)


@st.cache_resource(show_spinner=False, max_entries=64)
def _color_file(sub_key: str, color: str, result: str, _full: views.View, _sub: views.View, _clusters,
                _outliers) -> str:
    full, sub, clusters, outliers = _full, _sub, _clusters, _outliers
    coloring = class_coloring(full)
    tag = hashlib.sha1(result.encode()).hexdigest()[:12]
    if color == "cluster" and clusters is not None:
        names = cluster_names(clusters)
        values = clusters.assignments.set_index("sample_id")["cluster"].map(names)
        order = tuple(names[c] for c in clusters.table["cluster"])
        coloring = views.Coloring(f"acl-{tag}", "cluster", "category",
                                  values.reindex(full.sample_ids).reset_index(drop=True), order)
    elif color in ("lof", "kdist") and outliers is not None:
        values = outliers.set_index("sample_id")[color].reindex(full.sample_ids).reset_index(drop=True)
        coloring = views.Coloring(f"a{color}-{tag}", COLORS[color], "numeric", values)
    return views.write_color_file(sub, _aligned(full, sub, coloring))


def highlight(view: views.View, separation=None, clusters=None) -> tuple[list[str] | None, str]:
    """The points to highlight (those of the chosen confusion cell or cluster) and what they are."""
    cell = st.session_state.get(CELL)
    if cell and separation is not None:
        ids = separation.cell(*cell)
        return view.expand(ids), f"{cell[0]} samples whose neighbours include {cell[1]}"
    cluster = st.session_state.get(CLUSTER)
    if cluster is not None and clusters is not None:
        a = clusters.assignments
        ids = a.loc[a["cluster"] == cluster, "sample_id"].tolist()
        return view.expand(ids), f"cluster {cluster_names(clusters).get(cluster, cluster)}"
    return None, ""


def cluster_names(clusters) -> dict[int, str]:
    return {int(r.cluster): f"{int(r.cluster)}: {r.name}" for r in clusters.table.itertuples()}


# ----------------------------------------------------------------------------------------------- jobs

def scope(view_ids, frame: pd.DataFrame, explore_ids: list[str] | None) -> list[str] | None:
    """The samples the analyses measure: those passing the facet filters and Explore's filter (None: every
    sample of the runs). In a map of every step, a sample counts when one of its points passes."""
    filters = get_filters()
    if not filters and explore_ids is None:
        return None
    keep = facets.mask(frame, filters)
    ids = pd.unique(frame.loc[keep, "sample_id"].astype(str)).tolist() if "sample_id" in frame else \
        np.asarray(view_ids)[keep].tolist()
    if explore_ids is not None:
        allowed = set(explore_ids)
        ids = [s for s in ids if s in allowed]
    return ids


CANCELS = job_progress.Cancels(CANCELLED)  # this page's cancelled jobs (its Cancel and "after all" buttons)


def _base_key(kind: str, path: str, view: ViewSettings, ids: list[str] | None) -> tuple:
    runs = list(view.runs) or None
    return (kind, data.resolve(path), data.version(path, view.model, view.layer, runs), view.model, view.layer,
            view.step, tuple(view.runs), view.feature, view.metric, None if ids is None else _digest(ids))


def neighbours_job(path: str, view: ViewSettings, a: AnalysisSettings, ids: list[str] | None,
                   holder: str | None = None) -> data.Job:
    """Class separation and outliers of the view (one kNN graph serves both): result (Separation, outliers)."""
    from pipeline import analysis

    key = (*_base_key("analysis-knn", path, view, ids), a.k)

    def work(job: data.Job):
        report = data.reporter(job)
        common = dict(step=view.step, feature=view.feature, run_ids=list(view.runs) or None, sample_ids=ids,
                      k=a.k, metric=view.metric)
        sep = analysis.class_separation(data.open_store(path), view.model, view.layer,
                                        progress=lambda f, m: report(0.6 * f, f"class separation: {m}"), **common)
        out = analysis.outliers(data.open_store(path), view.model, view.layer,
                                progress=lambda f, m: report(0.6 + 0.4 * f, f"outliers: {m}"), **common)
        return sep, out

    return CANCELS.start(key, work, holder)


def clusters_job(path: str, view: ViewSettings, a: AnalysisSettings, ids: list[str] | None,
                 holder: str | None = None) -> data.Job:
    from pipeline import analysis

    key = (*_base_key("analysis-clusters", path, view, ids), a.method,
           a.n_clusters if a.method == "kmeans" else a.min_cluster_size)

    def work(job: data.Job):
        return analysis.clusters(data.open_store(path), view.model, view.layer, view.step, feature=view.feature,
                                 run_ids=list(view.runs) or None, sample_ids=ids, method=a.method,
                                 n_clusters=a.n_clusters, min_cluster_size=a.min_cluster_size or None,
                                 metric=view.metric, progress=data.reporter(job))

    return CANCELS.start(key, work, holder)


def report_key(path: str, view: ViewSettings) -> tuple:
    return ("analysis-report", data.resolve(path), data.version(path, view.model, view.layer), view.model,
            view.layer, view.step, view.feature, view.method)


def report_job(path: str, view: ViewSettings, holder: str | None = None) -> data.Job:
    """The shareable report of this model, layer and step (`pipeline.report.render_report`: one
    self-contained HTML file and a PNG of the map), as a job: result a `Report`."""
    from pipeline import report

    def work(job: data.Job):
        return report.render_report(data.open_store(path), view.model, view.layer, view.step,
                                    feature=view.feature, method=view.method, progress=data.reporter(job))

    return CANCELS.start(report_key(path, view), work, holder)


def report_name(view: ViewSettings) -> str:
    return f"report-{view.model}-{view.layer}-step{view.step}"


JOB_TITLES = {"analysis-knn": "Class separation and outliers", "analysis-clusters": "Clusters",
              "analysis-report": "Report"}


# ---------------------------------------------------------------------------------------------- tables

def thumb_data_urls(path: str, sample_ids: list[str]) -> list[str | None]:
    """Thumbnails as data URLs for a table or the gallery (read once per store version and set of ids)."""
    return list(_thumbs(data.resolve(path), tuple(_bare(s) for s in sample_ids), data.store_version(path)))


@st.cache_data(show_spinner=False, max_entries=32)
def _thumbs(resolved: str, ids: tuple, version: str) -> tuple:
    from app.compare_view import thumb_data_urls as urls

    return tuple(urls(resolved, list(ids)))


def _bare(some_id: str) -> str:
    from pipeline.features import split_point_id

    return split_point_id(str(some_id))[0]


def cluster_rows(path: str, clusters) -> pd.DataFrame:
    """The clusters table as the page shows it: name, size, majority, purity, words, spread and a thumbnail
    of each of its (up to three) medoids."""
    t = clusters.table
    medoids = [list(m) for m in t["medoids"]]
    flat = [s for m in medoids for s in m]
    urls = dict(zip(flat, thumb_data_urls(path, flat), strict=True))
    out = pd.DataFrame({"cluster": t["cluster"].astype(int), "name": t["name"], "size": t["size"].astype(int),
                        "majority": t["majority"], "purity": t["purity"].astype(float),
                        "words": [", ".join(w) for w in t["words"]], "spread": t["spread"].astype(float)})
    for i in range(3):
        out[f"medoid {i + 1}"] = [urls.get(m[i]) if len(m) > i else None for m in medoids]
    return out


def gallery(outliers: pd.DataFrame, view_ids: set[str] | None, n: int = GALLERY) -> pd.DataFrame:
    """The ``n`` most unusual samples (rank 1 first) among those on the map."""
    rows = outliers if view_ids is None else outliers[outliers["sample_id"].isin(view_ids)]
    return rows.sort_values("rank").head(n).reset_index(drop=True)


def confusion_long(separation, most: int = 30) -> tuple[pd.DataFrame, list[str]]:
    """The confusion matrix as (row, col, share) for the heatmap, and its classes: all of them up to
    ``most``, else the least pure ones."""
    matrix = separation.confusion
    classes = [str(c) for c in matrix.index]
    if len(classes) > most:
        keep = set(separation.table["class"].astype(str).head(most))
        classes = [c for c in classes if c in keep]
    m = matrix.loc[classes, classes]
    long = m.reset_index(names="row").melt(id_vars="row", var_name="col", value_name="share")
    long["row"], long["col"] = long["row"].astype(str), long["col"].astype(str)
    return long, classes
