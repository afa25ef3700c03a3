"""The Explore page: the projection job, the map, the selection panel, info and export (its sidebar controls
are `app.explore_sidebar`).

The page script (``app/app_pages/explore.py``) only calls ``main()``. The map, the selection panel, the info
and the export run in one fragment: a click on the map reruns just that fragment, not the sidebar. So does an
edit from the panel: its button's fragment run draws the map with the results (`_view_with_edit`).
"""

from __future__ import annotations

import hashlib
import time
from urllib.parse import urlencode

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app import data, edit_panel, exports, navigation, state, static_files, ui, views
from app.components.scatter_map import scatter_map
from app.explore_sidebar import color_options, default_layer, sidebar_controls  # noqa: F401 (the first two: re-exported)
from app.state import ViewSettings
from pipeline.methods import METHODS
from store import schema

MAP_KEY = "explore_map"
KNN_CURRENT = "dmd.knn_current"
WAITING = "dmd.waiting_job"  # key of the projection job this session waits for
CANCELLED = "dmd.cancelled_job"  # key of the job this session cancelled: not restarted until asked
LAST_DRAWN = "dmd.last_drawn"  # (job key, settings) of the last map drawn: shown dimmed while a new one runs
RUNS_LISTED = "dmd.runs_listed"  # the model's runs when the page last ran (the sidebar's Runs list)
EDITED_VIEW = "dmd.edited_view"  # (key of the view the page gave `body`, the view with an edit's results, settings)
PNG_NONCE = state.PNG_NONCE
MAP_HEIGHT = 640


# ------------------------------------------------------------------------------------------ sidebar


def filter_ids(path: str, settings: ViewSettings) -> tuple[list[str] | None, str | None]:
    """Sample ids matching the class and keyword filters (None: no filter), and an error to show."""
    if not settings.classes and not settings.keyword:
        return None, None
    samples = data.model_samples(path, settings.model)
    if settings.runs:
        samples = samples[samples["run_id"].isin(settings.runs)]
    mask = pd.Series(True, index=samples.index)
    if settings.classes:
        mask &= samples["label"].astype(str).isin(settings.classes)
    ids = samples.loc[mask, "sample_id"]
    if settings.keyword:
        try:
            found = set(data.keyword_search(path, settings.model, settings.keyword, settings.runs))
        except ValueError as exc:  # store.search.SearchError: shown under the box, the map stays
            return None, str(exc)
        ids = ids[ids.isin(found)]
    return ids.tolist(), None


def _session() -> str:
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def current_view(path: str, settings: ViewSettings, refit: int) -> tuple[views.View | None, ViewSettings, bool]:
    """(view, its settings, busy): the view to draw, or (None, ...) after showing an error or progress with no
    earlier map (the page then stops). While a new projection computes, the last map drawn comes back with
    busy=True: shown dimmed under the progress, usable, until the new one replaces it."""
    ids, error = filter_ids(path, settings)
    if error:
        st.sidebar.error(f"Keywords: {error}")
    project_only = ids is not None and settings.filter_mode == "project"
    if ids is not None and not ids:
        st.sidebar.warning("No sample matches the filter: the whole map is shown, nothing highlighted.")
    elif project_only and len(ids) < 10:
        st.sidebar.warning(f"Only {len(ids)} sample{'s match' if len(ids) > 1 else ' matches'} the filter: too "
                           "few to project on their own; highlighted on the full map instead.")
    if project_only and len(ids) < 10:
        project_only = False
    sid, wanted = _session(), ids if project_only else None
    key = data.projection_job_key(path, settings, wanted, refit)
    header(settings)
    if st.session_state.get(CANCELLED) == key:  # cancelled here: the last map stays until asked again
        return _previous_map(path, settings, cancelled=key)
    job = data.request_projection(path, settings, wanted, refit, holder=sid)
    st.session_state[state.PROJECTION_REQUEST] = (settings, wanted, refit)  # edits place their results into it
    waiting = st.session_state.get(WAITING)
    if waiting is not None and waiting != job.key:
        data.jobs().release(waiting, sid)  # a newer request supersedes the older one
    st.session_state[WAITING] = job.key if job.running else None
    if job.running:
        _progress(job.key)
        return _previous_map(path, settings)
    if job.error:
        st.error(f"The projection failed: {job.error}")
        st.caption("Change the parameters in the sidebar and press Recompute.")
        return None, settings, False
    view = data.view_for(path, settings, job)
    st.session_state[LAST_DRAWN] = (job.key, settings)
    bad = data.skipped(path)
    if bad:
        st.warning(f"{len(bad)} corrupt part(s) of this store were skipped (their samples are missing from the "
                   "map); the Overview page lists them.", icon=":material/warning:")
    highlight = ids if ids is not None and not project_only else None
    st.session_state["dmd.filter_highlight"] = highlight
    return view, settings, False


def _previous_map(path: str, settings: ViewSettings, cancelled: tuple | None = None):
    """The last map this session drew, to show dimmed (busy) while another computes or after a cancel."""
    if cancelled is not None:
        st.info("Projection cancelled: the map below is the previous one.", icon=":material/block:")
        if st.button("Compute it after all", icon=":material/play_arrow:"):
            st.session_state.pop(CANCELLED, None)
            st.rerun()
    last = st.session_state.get(LAST_DRAWN)
    job = data.jobs().find(last[0]) if last else None
    if job is None or job.result is None or job.error:
        return None, settings, False
    return data.view_for(path, last[1], job), last[1], cancelled is None

def header(settings: ViewSettings) -> None:
    st.markdown(f"### {settings.model} · {settings.layer}")


@st.fragment(run_every=0.5)
def _progress(job_key: tuple) -> None:
    """The running projection: its stage, its progress (epochs, as they go) and its time, every half second,
    with a Cancel button; the page reruns when it ends."""
    job = data.jobs().find(job_key)
    if job is None or not job.running:
        st.rerun(scope="app")
    bar, stop = st.columns([6, 1], vertical_alignment="bottom")
    bar.progress(job.progress, text=f"Projecting… {job.message} · {time.time() - job.started:.0f} s")
    if stop.button("Cancel", icon=":material/close:", key="cancel_projection", width="stretch"):
        data.jobs().release(job_key, _session())
        st.session_state[CANCELLED] = job_key
        st.session_state[WAITING] = None
        st.rerun(scope="app")
    st.caption("The page stays usable: change any control, or wait here; the new map replaces this one when "
               "the fit ends.")


# -------------------------------------------------------------------------------------- callbacks


def _on_map_click() -> None:
    event = st.session_state.get(MAP_KEY) or {}
    click = event.get("click")
    if isinstance(click, dict) and click.get("id"):
        state.handle_click(str(click["id"]), lambda _sel: st.session_state.get(KNN_CURRENT, []))


def _on_map_select() -> None:
    event = st.session_state.get(MAP_KEY) or {}
    sel = event.get("select")
    if isinstance(sel, dict):
        st.session_state[state.LASSO] = [str(s) for s in sel.get("ids") or []]


def _png() -> None:
    st.session_state[PNG_NONCE] = st.session_state.get(PNG_NONCE, 0) + 1


# ------------------------------------------------------------------------------------------ body


def main() -> None:
    # first: numba compiles while a fresh clone builds its demo store (NNDescent's long compile waits for it)
    data.start_warmup(busy=lambda: ui.demo_build().running)
    path = state.store_path()
    status = data.store_status(path)
    if not status.ok:
        st.title("Explore")
        ui.no_store_panel(status)
    edit_panel.settle()  # an edit that ended: its results are in this run's map
    st.session_state.pop(EDITED_VIEW, None)  # this run draws the current map
    settings, refit = sidebar_controls(path, status)
    st.session_state[RUNS_LISTED] = set(data.model_samples(path, settings.model)["run_id"].unique())
    state.set_view(settings)
    view, drawn, busy = current_view(path, settings, refit)
    if view is None:
        state.sync_url()
        return
    body(path, view, drawn, busy)


@st.fragment
def body(path: str, view: views.View, settings: ViewSettings, busy: bool = False) -> None:
    given = view.key
    edited = st.session_state.get(EDITED_VIEW)
    if edited is not None and edited[0] == given:  # a fragment run after an edit drawn by the fragment
        view, settings, busy = edited[1], edited[2], False
    edit = edit_panel.settle()
    if edit is not None:  # an edit ended in this run (its button's click): its results go on the map now
        view, settings, busy = _view_with_edit(path, busy, edit)
        st.session_state[EDITED_VIEW] = (given, view, settings)
    sel = state.get_selection()
    if sel.selected and sel.selected not in view.position and view.locate(sel.selected):
        # the same sample in a view of all steps (its last step) or of one step: keep it selected
        state.put_selection(state.Selection(view.locate(sel.selected),
                                            [m for m in map(view.locate, sel.manual) if m], []))
        sel = state.get_selection()
    if sel.selected and sel.selected not in view.position:
        st.toast(f"{sel.selected} is not in this view: selection cleared.", icon=":material/info:")
        state.clear_selection()
        sel = state.get_selection()
    neighbours = _neighbours(path, view, settings, sel) if sel.selected else None
    st.session_state[KNN_CURRENT] = neighbours.knn if neighbours else []
    state.sync_url()

    highlight = _highlight(view)
    left, right = st.columns([5, 2], gap="medium")
    with left:
        _map(view, settings, sel, neighbours, highlight, busy)
        _caption(view, settings, highlight)
    with right:
        _selection_panel(path, view, settings, sel, neighbours)
    _info(view)
    _share_and_export(path, view, settings, sel, neighbours)


def _view_with_edit(path: str, busy: bool, edit: dict) -> tuple[views.View, ViewSettings, bool]:
    """The map with an edit's results, drawn by the fragment run that took the edit in (`body`). The edit's
    job has placed them into this session's projection already (`edit_panel._start`), so a page run would only
    redo the sidebar and, between the two runs, Streamlit's forced garbage collection (0.3 s and more with
    torch loaded). The page runs again when the results' run is new to the sidebar's Runs list, when the map
    drawn is the previous one (a new projection computes) or when the placement has not ended."""
    request = st.session_state.get(state.PROJECTION_REQUEST)
    if busy or request is None or edit.get("run") not in (st.session_state.get(RUNS_LISTED) or ()):
        st.rerun(scope="app")
    settings, wanted, refit = request
    job = data.request_projection(path, settings, wanted, refit, holder=_session())
    if job.running or job.error:
        st.rerun(scope="app")
    st.session_state[LAST_DRAWN] = (job.key, settings)
    return data.view_for(path, settings, job), settings, False


def _neighbours(path, view, settings, sel) -> data.Neighbours:
    """The selected point's neighbours in the chosen space; a map that does not know its features (made by
    an older version) answers in map space, and the panel says so."""
    from dataclasses import replace

    from pipeline.neighbors import NeighborError

    try:
        return data.neighbours_of(path, view, settings, sel)
    except NeighborError:
        if settings.space != "activation" or view.features is not None:
            raise
        st.session_state["dmd.space_used"] = "map"
        return data.neighbours_of(path, view, replace(settings, space="map"), sel)


def _highlight_source() -> list[str] | None:
    """The samples named by a search link and the filters (None: nothing to highlight)."""
    url_ids = st.session_state.get(state.HIGHLIGHT)
    filt = st.session_state.get("dmd.filter_highlight")
    if url_ids is not None and filt is not None:
        keep = set(filt)
        url_ids = [s for s in url_ids if s in keep]
    return url_ids if url_ids is not None else filt


def _highlight(view: views.View) -> list[str] | None:
    """The points to highlight: those of the named samples that are in this view (in a view of all steps,
    a sample stands for all its points)."""
    ids = _highlight_source()
    return view.expand(ids) if ids is not None else None


def _map(view, settings, sel, neighbours, highlight, busy: bool = False) -> None:
    resolved = data.resolve(state.store_path())
    color_file = data.color_file_for(state.store_path(), view, settings)
    data.thumb_export(resolved).request_once(view.key, view.samples())
    links, edited = edit_panel.marks(view, sel.selected)
    scatter_map(
        **static_files.map_urls(view, color_file),
        revision=view.key,
        selected=sel.selected,
        knn=neighbours.knn if neighbours else [],
        manual=sel.manual,
        trajectory=data.trajectory(view, sel.selected),
        links=links,
        edited=edited,
        highlight=highlight,
        height=MAP_HEIGHT,
        point_size=settings.point_size,
        filename=f"map-{view.model}-{view.layer}-{_step_name(view)}",
        title=exports.map_title(view),
        png_nonce=st.session_state.get(PNG_NONCE, 0),
        key=MAP_KEY,
        on_click=_on_map_click,
        on_select=_on_map_select,
        busy=busy,
    )


def _step_name(view) -> str:
    return "all-steps" if view.all_steps else f"step{view.step}"


def _caption(view, settings, highlight) -> None:
    if view.all_steps:
        n_samples, n_steps = len(view.samples()), view.frame["step"].nunique()
        bits = [f"{len(view):,} points ({n_samples:,} samples × up to {n_steps} steps)", "all steps"]
    else:
        bits = [f"{len(view):,} samples", f"step {view.step}"]
    if view.step_info.get("sigma") is not None and pd.notna(view.step_info.get("sigma")):
        bits.append(f"σ {float(view.step_info['sigma']):.3g}")
    feature = settings.feature if not view.feature or view.feature == settings.feature \
        else f"{settings.feature} → {view.feature}"
    own = " · ".join(f"{n} {getattr(settings, n):g}" for n in METHODS[settings.method].PARAMS)
    bits.append(" · ".join([f"feature {feature}", METHODS[settings.method].title, *([own] if own else []),
                            settings.metric]))
    took = f" in {view.seconds:.1f} s" if view.seconds else ""
    bits.append({"cache": "from the cache", "fit": f"fitted{took}", "warm": f"warm-started{took}",
                 "transform": f"new samples placed{took}"}.get(view.source, view.source))
    if highlight is not None:
        named = _highlight_source() or []
        outside = sum(1 for s in named if view.locate(s) is None)
        verb = "is" if outside == 1 else "are"
        bits.append(f"**{len(highlight):,} highlighted**" + (
            f" ({outside:,} of the {len(named):,} matching samples {verb} not in this view)" if outside else ""))
    trajectory = " (its trajectory over the steps is drawn)" if view.all_steps else ""
    st.caption(" · ".join(bits) + f"  \nHover for a preview · click to select{trajectory} · while selected, "
               "click others to add/remove neighbours · lasso/box (toolbar) selects a set · double-click resets "
               "zoom")
    if st.session_state.get(state.HIGHLIGHT) is not None:
        ids = st.session_state[state.HIGHLIGHT]
        n, here = len(ids), sum(1 for s in ids if view.locate(s) is not None)
        where = "" if here == n else f" ({here:,} of them in this view)"
        c1, c2 = st.columns([4, 1])
        c1.info(f"Highlighting {n:,} samples from a search link{where}." if n else
                "The search in this link is no longer known to the server: nothing to highlight.",
                icon=":material/search:")
        c2.button("Clear highlight", on_click=state.clear_highlight, key="clear_hl")


# ------------------------------------------------------------------------------- selection panel


def _selection_panel(path, view, settings, sel, neighbours) -> None:
    with st.container(border=True, key="selection_panel"):
        if not sel.selected:
            st.markdown("#### Selection")
            st.caption("Click a point on the map to see its image, metadata and nearest neighbours.")
            lasso = st.session_state.get(state.LASSO) or []
            if lasso:
                st.markdown(f"**{len(lasso):,} samples** in the lasso/box selection (see Export below).")
            return
        row = view.frame.iloc[view.position[sel.selected]]
        sample = str(row["sample_id"])  # in a view of all steps the selected point is '<sample_id>@<step>'
        head, close = st.columns([6, 1], vertical_alignment="center")
        head.markdown(f"#### {row['label'] if pd.notna(row['label']) else sel.selected}")
        close.button("", key="clear_selection", on_click=state.clear_selection, icon=":material/close:",
                     help="Clear the selection (✕)", type="tertiary")
        image = data.image(path, settings.model, sample)
        if image is not None:
            w = int(row["width"]) if pd.notna(row["width"]) else 256
            st.image(image, width="stretch" if w >= 320 else max(w, 224))
        else:
            st.caption("(image missing from the store)")
        from app.previews import preview_strip

        preview_strip(path, view.model, view.layer, sample, row.get("preview_steps"),
                      row.get("step", view.step))
        with st.expander("Metadata", expanded=False):
            hidden = set(schema.SAMPLE_VOCAB.names) - set(schema.SAMPLE_VOCAB.table)  # thumbnail, lists
            meta = {k: ("" if pd.isna(v) else v) for k, v in row.items() if k not in hidden}
            meta.update({f"map {a}": f"{view.xy[view.position[sel.selected], i]:.4f}"
                         for i, a in enumerate("xy")})
            for k, v in view.step_info.items():
                if v is not None and not pd.isna(v):
                    meta[k] = v
            st.dataframe(pd.DataFrame({"field": list(meta), "value": [str(v) for v in meta.values()]}),
                         hide_index=True, width="stretch")
        _look_closer(path, view, sample)
        st.button("Find neighbours", key="find_neighbours", on_click=state.find_neighbours, width="stretch",
                  icon=":material/hub:", help="Recompute the k nearest (brings back removed ones).")
        _neighbour_list(path, view, settings, neighbours)
    edit_panel.panel(path, view, settings, sel, neighbours, sel.selected)


def _look_closer(path: str, view: views.View, sample: str) -> None:
    """Links to the pages that look at the selected sample closer: its feature map at this layer (Inside) and,
    where its run records several steps of this layer, its motion over the steps (Motion: a sample of a run
    that records one step, such as the demo's teacher at step 17 or a real digit, is in no step animation).
    One link a row: side by side in the panel's width, "Inside its feature map" was cut to "Inside its fe"."""
    from app import compare_runs_view as cv
    from store import layout

    store = {} if state.is_default_store(path) else {"store": path}
    step = view.step if not view.all_steps else None
    inside = {"sel": sample, "layer": view.layer, **({"step": str(step)} if step is not None else {}), **store}
    st.page_link(navigation.page("inside.py"), label="Inside its feature map", icon=":material/grid_on:",
                 query_params=inside)
    try:
        run = layout.split_sample_id(sample)[0]
    except ValueError:
        return
    recorded = cv.run_steps(path, view.model, view.layer)
    if (recorded["run_id"] == run).sum() > 1:
        motion = {"model": view.model, "mode": "steps", "layer": view.layer, "sel": sample, **store}
        st.page_link(navigation.page("motion.py"), label="Its motion over the steps", icon=":material/animation:",
                     query_params=motion)


def _neighbour_list(path, view, settings, nb) -> None:
    rows = [(s, d, "kNN") for s, d in zip(nb.knn, nb.knn_distances, strict=True)]
    rows += [(s, d, "manual") for s, d in zip(nb.manual, nb.manual_distances, strict=True)]
    st.markdown(f"**Neighbours** · {len(nb.knn)} nearest + {len(nb.manual)} manual · "
                f"{_space_text(view, settings)}")
    if not rows:
        st.caption("No neighbours: press Find neighbours.")
        return
    # thumbnails are per sample: a point of an all-steps view shows its sample's
    urls = data.thumb_urls(path, [view.frame["sample_id"].iat[view.position[s]] if s in view.position else s
                                  for s, _, _ in rows])
    for (sid, dist, kind), url in zip(rows, urls, strict=True):
        r = view.frame.iloc[view.position[sid]] if sid in view.position else None
        label = r["label"] if r is not None and pd.notna(r["label"]) else sid
        if r is not None and view.all_steps:
            label = f"{label} · step {int(r['step'])}"
        with st.container(key=f"nb_{kind}_{sid}", border=False):
            c_img, c_txt, c_btn = st.columns([1.1, 3, 1.3], vertical_alignment="center", gap="small")
            c_img.image(url, width=56)
            mark = ":red[●]" if kind == "kNN" else ":red[◉]"
            c_txt.markdown(f"{mark} {label}  \n:gray[{kind} · d = {dist:.3g}]")
            with c_btn:
                b1, b2 = st.columns(2, gap="small")
                b1.button("", key=f"go_{kind}_{sid}", icon=":material/my_location:", help="Select this one",
                          on_click=state.select, args=(sid,))
                b2.button("", key=f"rm_{kind}_{sid}", icon=":material/close:", help="Remove from neighbours",
                          on_click=state.toggle_neighbour, args=(sid, nb.knn))


def _space_text(view, settings) -> str:
    """Which space the neighbours and their distances are in, as the panel says it."""
    if st.session_state.pop("dmd.space_used", settings.space) == "map" and settings.space == "activation":
        return "in map space (2-D): this map does not record its features, so activation space is unavailable"
    if settings.space == "activation":
        return f"in activation space ({settings.metric} distance on the map's features)"
    overlap = (view.quality or {}).get("knn_overlap")
    share = f"; on average {overlap:.0%} of map neighbours are also activation neighbours" \
        if isinstance(overlap, (int, float)) else ""
    return f"in map space (2-D, euclidean distance on the screen{share})"


# ------------------------------------------------------------------------------------------ info


def _info(view: views.View) -> None:
    st.markdown("#### This view")
    c1, c2 = st.columns([3, 2], gap="large")
    with c1:
        col = "category" if view.frame["category"].notna().any() else "label"
        counts = view.counts(col)
        table = pd.DataFrame({col: counts.index.astype(str), "samples": counts.to_numpy(),
                              "share": counts.to_numpy() / max(1, len(view))})
        st.dataframe(table, hide_index=True, width="stretch", height=min(320, 38 + 35 * len(table)),
                     column_config={"share": st.column_config.ProgressColumn("share", format="percent",
                                                                            min_value=0.0, max_value=1.0)})
    with c2:
        q = view.quality or {}
        m1, m2 = st.columns(2)
        tw = q.get("trustworthiness")
        ov = q.get("knn_overlap")
        m1.metric("Trustworthiness", f"{tw:.3f}" if isinstance(tw, (int, float)) else "–",
                  help="scikit-learn trustworthiness of the 2-D map w.r.t. the feature space (1 = every map "
                       "neighbour is a true neighbour).")
        m2.metric("kNN overlap", f"{ov:.0%}" if isinstance(ov, (int, float)) else "–",
                  help="Mean share of a sample's map-space neighbours that are also its activation-space "
                       "neighbours.")
        points = f"{len(view):,} points of {len(view.samples()):,} samples" if view.all_steps \
            else f"{len(view):,} samples"
        st.caption(f"{points} · {view.frame['run_id'].nunique()} run(s) · "
                   f"{view.frame['label'].nunique():,} labels · projection `{view.projection_key[:16]}`")
        if q.get("sample") and q.get("k"):
            st.caption(f"Quality measured on {int(q['sample']):,} samples with k = {int(q['k'])}.")


# --------------------------------------------------------------------------------- share/export


def share_url() -> str:
    base = st.context.url or ""
    params = {k: st.query_params.get(k) for k in st.query_params}
    return base + ("?" + urlencode(params) if params else "")


def _one_per_sample(view, ids: list[str]) -> list[str]:
    """The first point of each sample among ``ids``: a sample's points at several steps share one image."""
    if not view.all_steps:
        return ids
    seen, out = set(), []
    for s in ids:
        sample = view.frame["sample_id"].iat[view.position[s]]
        if sample not in seen:
            seen.add(sample)
            out.append(s)
    return out


def _share_and_export(path, view, settings, sel, nb) -> None:
    st.markdown("#### Share and export")
    st.code(share_url(), language=None, wrap_lines=True)
    st.caption("This link reopens this view: model, runs, layer, step, parameters, colouring, filters and the "
               "selected sample.")
    lasso = [s for s in (st.session_state.get(state.LASSO) or []) if s in view.position]
    unit = "points" if view.all_steps else "samples"  # all steps: one point per (sample, step)
    if lasso:
        chosen, what = exports.plain_set(lasso, "lasso"), f"the lasso/box selection ({len(lasso):,} {unit})"
    elif sel.selected and nb is not None:
        chosen = exports.neighbourhood_set(sel.selected, nb.knn, nb.knn_distances, nb.manual, nb.manual_distances,
                                           space=settings.space, metric=settings.metric)
        what = (f"the selected sample and its {len(chosen) - 1} neighbours, ranked by distance in "
                f"{'the 2-D map' if chosen.space == 'map' else f'activation space ({chosen.metric})'}")
    else:
        chosen, what = exports.plain_set(view.sample_ids, "view"), f"the whole view ({len(view):,} {unit})"
    st.caption(f"Export: {what}. The table has each row's role (selected / kNN / manual / lasso / view), rank "
               "and distance; the ZIP's metadata.csv names each image file.")
    name = f"{view.model}-{view.layer}-{_step_name(view)}"
    zip_set = chosen.only(_one_per_sample(view, list(chosen.ids)))
    digest = hashlib.sha1("|".join([*chosen.ids, *chosen.roles, str(chosen.space), str(chosen.metric)])
                          .encode()).hexdigest()[:8]
    c = st.columns(5)
    # on_click="ignore": a download reruns nothing. With a rerun, a second download clicked while it ran asked
    # for the deferred file the rerun had just replaced ("Deferred file ... not found" in the log, nothing
    # downloaded: CSV, then Map (HTML) at once, on the demo at step 17)
    c[0].download_button("CSV", data=lambda: exports.selection_csv(view, chosen), file_name=f"{name}.csv",
                         mime="text/csv", icon=":material/table:", key=f"dl_csv_{digest}", width="stretch", on_click="ignore")
    c[1].download_button("Parquet", data=lambda: exports.selection_parquet(view, chosen),
                         file_name=f"{name}.parquet", mime="application/octet-stream",
                         icon=":material/database:", key=f"dl_pq_{digest}", width="stretch", on_click="ignore")
    c[2].download_button("Images (ZIP)", data=lambda: exports.images_zip(data.open_store(path), view, zip_set),
                         file_name=f"{name}-images.zip", mime="application/zip", icon=":material/photo_library:",
                         key=f"dl_zip_{digest}", width="stretch", on_click="ignore",
                         disabled=len(zip_set) > exports.MAX_ZIP_IMAGES,
                         help=f"At most {exports.MAX_ZIP_IMAGES:,} images; select fewer with the lasso.")
    c[3].download_button("Map (HTML)", data=lambda: exports.map_html(view, data.coloring_for(path, view, settings),
                                                                  data.open_store(path)),
                         file_name=f"{name}.html", mime="text/html", icon=":material/language:",
                         key=f"dl_html_{view.key}", width="stretch", on_click="ignore",
                         help="A standalone interactive map (plotly.js included; works offline), with hover "
                              f"thumbnails for maps of up to {exports.MAX_HTML_THUMBS:,} points.")
    c[4].button("Map (PNG)", on_click=_png, icon=":material/image:", key="dl_png", width="stretch",
                help="Drawn by your browser from the map as you see it (zoom included), with a title and "
                     "the legend.")
