"""Analysis: what the map of one layer says. Which classes mix (kNN purity, silhouette, the confusion heatmap),
which clusters the activations form, which samples are unusual, and linked facets beside the map that filter
it. Same model, layer, step, runs, projection and filter as Explore (shared through the session and the URL);
the computations are `pipeline.analysis`'s, run as background jobs and cached."""

from __future__ import annotations

from dataclasses import replace

import altair as alt
import pandas as pd
import streamlit as st

from app import analysis_view as av
from app import data, facets, job_progress, page, state, static_files
from app.components.scatter_map import scatter_map
from app.explore_sidebar import default_layer
from app.page import init_widget
from app.state import ViewSettings
from pipeline.features import default_step

MAP_HEIGHT = 560
FACET_HEIGHT = 150
ACCENT = "#4e79a7"
CLICKED = "ana.clicked"  # the sample clicked on this page's map



def _step_label(steps: pd.DataFrame):
    info = {int(r.step): r for r in steps.itertuples()}

    def fmt(step) -> str:
        if step == state.ALL_STEPS:
            return "all steps"
        r = info.get(int(step))
        parts = [f"step {int(step)}"]
        if r is not None and pd.notna(r.sigma):
            parts.append(f"σ {float(r.sigma):.3g}")
        return " · ".join(parts)

    return fmt


# ---------------------------------------------------------------------------------------------- sidebar

def sidebar(path: str, status: data.StoreStatus, url: dict) -> tuple[ViewSettings, av.AnalysisSettings]:
    """Model, runs, layer and step (Explore's: changing them here changes them there) and the analysis
    parameters."""
    view = state.get_view()
    sb = st.sidebar
    sb.subheader("View")
    models = list(status.models)
    init_widget("ana_model", view.model if view.model in models else models[0], lambda v: v in models)
    model = sb.selectbox("Model", models, key="ana_model")
    runs_all = data.model_samples(path, model)["run_id"].drop_duplicates().tolist()
    same_model = view.model in (None, model)
    init_widget("ana_runs", [r for r in view.runs if r in runs_all] if same_model else [],
          lambda v: all(r in runs_all for r in v))
    runs = sb.multiselect("Runs", runs_all, key="ana_runs", placeholder="all runs")
    layers = data.model_layers(path, model)
    if not layers:
        st.warning(f"Model **{model}** has no stored activations.")
        st.stop()
    init_widget("ana_layer", view.layer if view.layer in layers else default_layer(layers, model), lambda v: v in layers)
    layer = sb.selectbox("Layer", layers, key="ana_layer")
    steps = data.model_steps(path, model, layer)
    values = sorted({int(s) for s in steps["step"]}) or [0]
    if len(values) > 1:
        values.append(state.ALL_STEPS)
    opening = view.step if view.step in values else default_step(steps)
    init_widget("ana_step", opening, lambda v: v in values)
    if len(values) > 1:
        step = sb.select_slider("Step", values, key="ana_step", format_func=_step_label(steps))
    else:
        step = values[0]
        sb.caption(_step_label(steps)(step))

    a0 = url.get("settings") or av.AnalysisSettings()
    sb.subheader("Analysis")
    init_widget("ana_k", a0.k)
    k = sb.slider("Neighbours k", *av.K_RANGE, key="ana_k",
                  help="kNN purity, the confusion matrix and the outlier scores use each sample's k nearest "
                       "neighbours in activation space (the map's features and metric).")
    init_widget("ana_method", a0.method)
    method = sb.radio("Clustering", ("hdbscan", "kmeans"), key="ana_method", horizontal=True,
                      format_func={"hdbscan": "HDBSCAN", "kmeans": "k-means"}.get,
                      help="HDBSCAN: density clusters, points in no dense region are noise (-1) · k-means: "
                           "exactly k clusters")
    n_clusters, min_size = a0.n_clusters, a0.min_cluster_size
    if method == "kmeans":
        init_widget("ana_nc", a0.n_clusters)
        n_clusters = sb.slider("Clusters (k)", *av.N_CLUSTERS_RANGE, key="ana_nc")
    else:
        init_widget("ana_mcs", a0.min_cluster_size)
        min_size = sb.number_input("Smallest cluster (0: automatic)", 0, 10_000, step=1, key="ana_mcs",
                                   help="HDBSCAN's min_cluster_size; automatic: max(5, samples / 100)")
    init_widget("ana_color", a0.color, lambda v: v in av.COLORS)
    color = sb.radio("Colour the map by", list(av.COLORS), key="ana_color", format_func=av.COLORS.get)

    new = replace(view, model=model, runs=tuple(runs), layer=layer, step=step)
    if not same_model:  # Explore's class and keyword filter belong to the other model
        new = replace(new, classes=(), keyword="")
    state.set_view(new)
    a = av.AnalysisSettings(k=int(k), method=method, n_clusters=int(n_clusters), min_cluster_size=int(min_size),
                            color=color).validated()
    return state.get_view(), a


# --------------------------------------------------------------------------------------------- progress

def _job_title(key: tuple) -> str:
    return av.JOB_TITLES.get(key[0], "Projecting the map")


def _progress(keys: tuple) -> None:
    av.CANCELS.progress(keys, _job_title, cancel_key="cancel")


def _result(job: data.Job | None, what: str):
    """The job's result, or None after saying that it computes (its progress is at the top) or failed."""
    return job_progress.result(job, what, av.CANCELS.resume, "resume_{hash}_{what}")


# ---------------------------------------------------------------------------------------------- facets

def _bars_chart(bars: pd.DataFrame, facet: facets.Facet) -> tuple[alt.LayerChart, int]:
    """A facet's bars: the whole view (grey, on top, where clicks land) over the selection (coloured where
    the value is in the facet's filter); and the element's height in pixels (title and axis included)."""
    tip = [alt.Tooltip("value:N", title=facet.title), alt.Tooltip("whole:Q", title="in the view"),
           alt.Tooltip("selected:Q", title="in the selection")]
    color = alt.condition("datum.active", alt.value(ACCENT), alt.value("#9aa0a6"))
    if facet.kind == "category":
        pick = alt.selection_point(name="pick", fields=["value"], on="click", empty=False)
        y = alt.Y("value:N", sort=None, title=None, axis=alt.Axis(labelLimit=120, labelOverlap=False))
        count = alt.X("selected:Q", title=None, axis=alt.Axis(tickCount=4, grid=False))
        sel = alt.Chart(bars).mark_bar().encode(y=y, x=count, color=color, tooltip=tip)
        whole = alt.Chart(bars).mark_bar(color="#9aa0a6", opacity=0.3).encode(y=y, x="whole:Q",
                                                                             tooltip=tip).add_params(pick)
        height = 20 * len(bars) + 85
    else:
        pad = 0.5 if facet.integer else 0.0  # a whole-number bin covers its values' unit widths
        bars = bars.assign(x0=bars["low"] - pad, x1=bars["high"] + pad)
        pick = alt.selection_point(name="pick", fields=["low", "high"], on="click", empty=False)
        brush = alt.selection_interval(name="brush", encodings=["x"])
        x = alt.X("x0:Q", bin="binned", title=None, axis=alt.Axis(tickCount=5, format="~s"))
        count = alt.Y("selected:Q", title=None, axis=alt.Axis(tickCount=2, grid=False))
        sel = alt.Chart(bars).mark_bar().encode(x=x, x2="x1", y=count, color=color, tooltip=tip)
        whole = alt.Chart(bars).mark_bar(color="#9aa0a6", opacity=0.3).encode(
            x=x, x2="x1", y="whole:Q", tooltip=tip).add_params(pick, brush)
        height = 130
    chart = alt.layer(sel, whole).properties(title=alt.TitleParams(facet.title, anchor="start", fontSize=12))
    return chart, height


def facets_panel(frame: pd.DataFrame) -> None:
    filters = av.get_filters()
    tag = av.filters_tag(filters)  # a new chart after every change: no stale selection
    with st.container(height=MAP_HEIGHT, border=False, key="ana_facets"):
        st.caption("Grey: the whole map · colour: the selection (the other facets' filters). Click a bar to "
                   "filter (again to remove it); drag across a histogram for a range.")
        for facet in facets.facets_for(frame):
            bars = facets.distribution(frame, facet, filters)
            key = f"facet_{facet.column}_{tag}"
            chart, height = _bars_chart(bars, facet)
            st.altair_chart(chart, key=key, on_select=lambda k=key, f=facet: av.on_facet_select(k, f, tag),
                            selection_mode=["pick", "brush"] if facet.kind == "numeric" else ["pick"],
                            width="stretch", height=height)


def filter_chips(frame: pd.DataFrame) -> None:
    filters = av.get_filters()
    titles = {f.column: f.title for f in facets.facets_for(frame)}
    if not filters:
        return
    with st.container(key="ana_filters", horizontal=True, vertical_alignment="center"):
        st.markdown(":material/filter_alt: **Filters**")
        for f in filters:
            st.button(f.text(titles.get(f.column)), key=f"rm_filter_{f.column}", icon=":material/close:",
                      on_click=av.remove_filter, args=(f.column,), help="Remove this filter")
        st.button("Clear all", key="clear_filters", on_click=av.clear_filters, type="tertiary")


# ------------------------------------------------------------------------------------------------ map

def _on_map_click() -> None:
    event = st.session_state.get("analysis_map") or {}
    click = event.get("click") if hasattr(event, "get") else None
    if isinstance(click, dict) and click.get("id"):
        st.session_state[CLICKED] = str(click["id"])


def map_section(path: str, view_s: ViewSettings, full, sub, color_url: str, hl, hl_text: str) -> None:
    resolved = data.resolve(path)
    data.thumb_export(resolved).request_once(full.key, full.samples())
    scatter_map(
        **static_files.map_urls(sub, color_url),
        revision=full.key,  # one projection: zoom and pan survive filters
        highlight=hl if hl else None,
        height=MAP_HEIGHT,
        point_size=view_s.point_size,
        filename=f"analysis-{full.model}-{full.layer}",
        key="analysis_map",
        on_click=_on_map_click,
    )
    bits = [f"{len(sub):,} of {len(full):,} points" if len(sub) != len(full) else f"{len(full):,} points",
            "Explore's map (" + ("from the cache" if full.source == "cache" else full.source) + ")"]
    if hl is not None:
        bits.append(f"**{len(hl):,} highlighted**: {hl_text}")
    st.caption(" · ".join(bits) + "  \nHover for a preview · click a point to open it in Explore")
    clicked = st.session_state.get(CLICKED)
    if clicked and clicked in sub.position:
        row = sub.frame.iloc[sub.position[clicked]]
        st.markdown(f"Clicked: **{row['label']}** · `{clicked}` · "
                    f"[open in Explore ↗]({av.explore_link(view_s, clicked)})")


# ---------------------------------------------------------------------------------------------- report

def _ask_report(key: tuple) -> None:
    st.session_state[av.REPORTS_ASKED] = {*(st.session_state.get(av.REPORTS_ASKED) or ()), key}
    av.CANCELS.resume(key)


def report_job(path: str, view_s: ViewSettings) -> data.Job | None:
    """The report job of this view once this session asked for it (the Report button), else None."""
    if view_s.step == state.ALL_STEPS:
        return None
    key = av.report_key(path, view_s)
    if key not in (st.session_state.get(av.REPORTS_ASKED) or ()):
        return None
    return av.report_job(path, view_s, holder=job_progress.session_id())


def report_box(path: str, view_s: ViewSettings, job: data.Job | None) -> None:
    """The Report button; once built, the HTML and the PNG as downloads."""
    if view_s.step == state.ALL_STEPS:
        st.button("Report", icon=":material/summarize:", disabled=True, key="report_all_steps",
                  help="A report is of one step: choose a step in the sidebar.")
        return
    if job is None or (not job.running and job.error == "cancelled"):
        st.button("Report", icon=":material/summarize:", key="make_report", width="stretch",
                  on_click=_ask_report, args=(av.report_key(path, view_s),),
                  help="One self-contained HTML file to share (it opens offline: the map with hover thumbnails, "
                       "class separation, clusters, outliers, CKA of the layers, the runs and their manifests) "
                       "and a PNG of the map. Of every run of this model, layer and step, without filters.")
        return
    if job.running:
        st.caption("Report: building… (progress above)")
    elif job.error:
        st.error(f"The report failed: {job.error}")
    else:
        name = av.report_name(view_s)
        c1, c2 = st.columns(2, gap="small")
        c1.download_button("HTML", data=job.result.html, file_name=f"{name}.html", mime="text/html",
                           icon=":material/download:", key="dl_report_html", width="stretch",
                           help="The report: one file that opens offline")
        c2.download_button("PNG", data=job.result.png, file_name=f"{name}.png", mime="image/png",
                           icon=":material/download:", key="dl_report_png", width="stretch",
                           help="The map with its legend and title")


# --------------------------------------------------------------------------------------------- sections

def _counted(n: int, all_steps: bool) -> str:
    """How many were measured: samples, or in a map of every step points (each sample once per step; a step
    facet narrows the map, the analyses keep every step of the samples that pass)."""
    return f"{n:,} points (samples × steps)" if all_steps else f"{n:,} samples"


def separation_section(sep, all_steps: bool = False) -> None:
    st.caption(f"{_counted(sep.n_samples, all_steps)} · classes by **{sep.by}** · k = {sep.k} · activation space. Purity: "
               "the share of a sample's k nearest neighbours in its own class (chance: the class's share); "
               "silhouette on a fixed subset of at most 2,000 samples.")
    left, right = st.columns([2, 3], gap="large")
    with left:
        st.markdown("**Per class**, least pure first")
        st.dataframe(sep.table, hide_index=True, width="stretch", key="ana_sep_table",
                     height=min(38 + 35 * len(sep.table), 420),
                     column_config={"purity": st.column_config.ProgressColumn("purity", format="%.2f",
                                                                              min_value=0.0, max_value=1.0),
                                    "chance": st.column_config.NumberColumn("chance", format="%.2f"),
                                    "silhouette": st.column_config.NumberColumn("silhouette", format="%.2f")})
        st.markdown("**Most-mixed pairs**")
        pairs = sep.pairs
        if pairs.empty:
            st.caption("No two classes share neighbours: every class is separate at this k.")
        else:
            st.dataframe(pairs, hide_index=True, width="stretch", key="ana_pairs",
                         column_config={c: st.column_config.NumberColumn(c, format="%.3f")
                                        for c in ("mixing", "a_to_b", "b_to_a")})
        options = [*[(r.class_a, r.class_b) for r in pairs.itertuples()],
                   *[(r.class_b, r.class_a) for r in pairs.itertuples()]]
        cell = st.session_state.get(av.CELL)
        if cell is not None and tuple(cell) not in options:
            options.append(tuple(cell))
        st.session_state["ana_pair"] = tuple(cell) if cell else None
        st.selectbox("Highlight on the map", options, key="ana_pair", placeholder="nothing: choose a pair",
                     format_func=lambda c: f"{c[0]} samples with neighbours in {c[1]}",
                     on_change=lambda: av.set_cell(st.session_state["ana_pair"]))
    with right:
        long, classes = av.confusion_long(sep)
        st.markdown("**Class confusion**: row a, column b = the share of a's neighbours in class b. Click a "
                    "cell to highlight its samples.")
        pick = alt.selection_point(name="cell", fields=["row", "col"], on="click", empty=False)
        size = max(220, min(560, 28 * len(classes) + 80))
        chart = alt.Chart(long).mark_rect(stroke="white", strokeWidth=1).encode(
            x=alt.X("col:N", sort=classes, title="neighbour's class", axis=alt.Axis(labelLimit=100, labelAngle=-40)),
            y=alt.Y("row:N", sort=classes, title="class", axis=alt.Axis(labelLimit=120)),
            color=alt.Color("share:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title="share"),
            tooltip=[alt.Tooltip("row:N", title="class"), alt.Tooltip("col:N", title="neighbours in"),
                     alt.Tooltip("share:Q", format=".3f")],
        ).add_params(pick).properties(height=size)
        if cell:
            mark = pd.DataFrame([{"row": cell[0], "col": cell[1]}])
            chart = chart + alt.Chart(mark).mark_rect(fill=None, stroke="#e15759", strokeWidth=3).encode(
                x=alt.X("col:N", sort=classes), y=alt.Y("row:N", sort=classes))
        key = f"ana_confusion_{abs(hash(cell)) % 10**8}"
        st.altair_chart(chart, key=key, on_select=lambda: av.on_cell_select(key), selection_mode=["cell"],
                        width="stretch")
        if len(classes) < len(sep.confusion):
            st.caption(f"The {len(classes)} least pure of {len(sep.confusion)} classes.")
        if cell:
            n = len(sep.cell(*cell))
            c1, c2 = st.columns([4, 1], vertical_alignment="center")
            c1.markdown(f"Highlighted: **{n:,}** {cell[0]} samples with neighbours in {cell[1]}")
            c2.button("Clear", key="clear_cell", on_click=av.set_cell, args=(None,), type="tertiary")


def clusters_section(path: str, clu, all_steps: bool = False) -> None:
    named = clu.table[clu.table["cluster"] >= 0]
    noise = int(clu.table.loc[clu.table["cluster"] < 0, "size"].sum())
    st.caption(f"{clu.method.upper() if clu.method == 'hdbscan' else 'k-means'} on {_counted(clu.n_samples, all_steps)} in "
               f"activation space: {len(named)} clusters" + (f", {noise:,} noise samples (-1)" if noise else "")
               + ". Named by their majority class when it holds more than half, else by their top prompt words; "
               "medoids: the samples nearest the centre; spread: mean distance to the centre.")
    rows = av.cluster_rows(path, clu)
    if not rows["words"].str.len().any():
        rows = rows.drop(columns="words")
    st.dataframe(rows, hide_index=True, width="stretch", row_height=52, key="ana_clusters",
                 height=min(38 + 52 * len(rows), 560),
                 column_config={"purity": st.column_config.ProgressColumn("purity", format="%.2f", min_value=0.0,
                                                                          max_value=1.0),
                                "spread": st.column_config.NumberColumn("spread", format="%.3g"),
                                **{f"medoid {i}": st.column_config.ImageColumn(f"medoid {i}", width="small")
                                   for i in (1, 2, 3)}})
    names = av.cluster_names(clu)
    current = st.session_state.get(av.CLUSTER)
    options = list(names)
    st.session_state["ana_cluster_pick"] = current if current in options else None
    st.selectbox("Highlight a cluster on the map", options, key="ana_cluster_pick",
                 placeholder="nothing: choose a cluster", format_func=names.get,
                 on_change=lambda: av.set_cluster(st.session_state["ana_cluster_pick"]))


def outliers_section(path: str, view_s: ViewSettings, outliers: pd.DataFrame, on_map: set[str]) -> None:
    top = av.gallery(outliers, on_map)
    st.caption("The most unusual samples in activation space: highest local outlier factor (LOF: about 1 inside "
               "a cluster, well above 1 for an isolated sample), then the farthest k-th neighbour. Each opens "
               "selected in Explore.")
    urls = av.thumb_data_urls(path, top["sample_id"].tolist())
    per_row = 6
    for start in range(0, len(top), per_row):
        cols = st.columns(per_row, gap="small")
        for col, i in zip(cols, range(start, min(start + per_row, len(top))), strict=False):
            r = top.iloc[i]
            with col.container(border=True, key=f"ana_out_{int(r['rank'])}"):
                if urls[i]:
                    st.image(urls[i], width="stretch")
                st.markdown(f"**#{int(r['rank'])}** {r['class']}  \n:gray[LOF {r['lof']:.2f} · kdist "
                            f"{r['kdist']:.3g}]  \n[open in Explore ↗]({av.explore_link(view_s, r['sample_id'])})")


# ----------------------------------------------------------------------------------------------- page

def main() -> None:
    path, status = page.header("Analysis")
    url = av.load_url_once()
    view_s, a = sidebar(path, status, url)
    step_text = "all steps" if view_s.step == state.ALL_STEPS else f"step {view_s.step}"
    head, report_col = st.columns([5, 2], vertical_alignment="center")
    head.markdown(f"### {view_s.model} · {view_s.layer} · {step_text}")
    rep_job = report_job(path, view_s)
    with report_col:
        report_box(path, view_s, rep_job)

    wanted, explore_ids, error = av.map_request(path, view_s)
    if error:
        st.warning(f"Explore's keyword filter: {error}")
    if explore_ids is not None:
        st.caption(f"Explore's filter applies: {len(explore_ids):,} samples"
                   + (" (the map is projected on them only)" if wanted is not None else ""))
    full, map_job = None, None
    map_key = data.projection_job_key(path, view_s, wanted, 0)
    if av.CANCELS.cancelled(map_key):
        st.info("The map: cancelled. The tables below do not need it.", icon=":material/block:")
        st.button("Compute the map after all", key="resume_map", icon=":material/play_arrow:", on_click=av.CANCELS.resume,
                  args=(map_key,))
    elif av.map_known(path, view_s, wanted):
        map_job = data.request_projection(path, view_s, wanted, 0, holder=job_progress.session_id())
        if not map_job.running and map_job.error:
            st.error(f"The map failed: {map_job.error}")
        elif not map_job.running:
            full = data.view_for(path, view_s, map_job)
    else:
        st.info("Explore has no map of these settings yet (same model, layer, step, runs and projection "
                "parameters). The tables below do not need it.", icon=":material/map:")
        if st.button("Compute the map", icon=":material/play_arrow:", key="compute_map"):
            av.ask_map(path, view_s, wanted)
            st.rerun()

    if full is not None:
        frame, ids = full.frame, full.sample_ids
    else:  # the facets work on the samples until the map exists
        samples = data.model_samples(path, view_s.model)
        frame = samples[samples["run_id"].isin(view_s.runs)] if view_s.runs else samples
        ids = frame["sample_id"].to_numpy()
    columns = {f.column for f in facets.facets_for(frame)}
    unknown = [f for f in av.get_filters() if f.column not in columns]
    if unknown:  # a link's filter on a column this view does not vary in (or does not have)
        st.caption("Filters not used (no such facet here): " + ", ".join(f"`{f.column}`" for f in unknown))
        av.set_filters(tuple(f for f in av.get_filters() if f.column in columns))
    if url.get("filter_problems"):
        st.caption("Filters of the link not used: " + "; ".join(url["filter_problems"]))
        url["filter_problems"] = []
    keep = facets.mask(frame, av.get_filters())
    scope = av.scope(ids, frame, explore_ids)
    if scope is not None and len(scope) < 3:
        st.warning(f"Only {len(scope)} sample(s) pass the filters: the analyses need at least 3.")

    knn_job = av.neighbours_job(path, view_s, a, scope, holder=job_progress.session_id()) if scope is None or len(scope) >= 3 \
        else None
    clu_job = av.clusters_job(path, view_s, a, scope, holder=job_progress.session_id()) if knn_job is not None else None
    done = lambda job: job is not None and not job.running and not job.error  # noqa: E731
    sep, out = knn_job.result if done(knn_job) else (None, None)
    clu = clu_job.result if done(clu_job) else None
    running = tuple(j.key for j in (map_job, knn_job, clu_job, rep_job) if j is not None and j.running)
    if running:
        _progress(running)

    filter_chips(frame)
    left, right = st.columns([5, 2], gap="medium")
    with right:
        facets_panel(frame)
    with left:
        if full is None:
            st.caption("The map appears here once computed." if map_job is not None else "")
        elif not keep.any():
            st.warning("No point passes the facet filters: remove one above.")
        else:
            sub = av.narrowed_view(path, full, keep)
            color_file = av.color_file(path, full, sub, a.color, clusters=clu, outliers=out,
                                       result_key=(clu_job.key if a.color == "cluster" and clu_job else
                                                   knn_job.key if knn_job else None))
            hl, hl_text = av.highlight(sub, sep, clu)
            map_section(path, view_s, full, sub, color_file, hl, hl_text)
    av.sync_url(view_s, a)

    tabs = st.tabs(["Class separation", "Clusters", "Outliers"])
    with tabs[0]:
        if knn_job is not None and (got := _result(knn_job, "Class separation")) is not None:
            separation_section(got[0], view_s.step == state.ALL_STEPS)
    with tabs[1]:
        if clu_job is not None and (got := _result(clu_job, "Clusters")) is not None:
            clusters_section(path, got, view_s.step == state.ALL_STEPS)
    with tabs[2]:
        if knn_job is not None and (got := _result(knn_job, "Outliers")) is not None:
            on_map = set(full.expand(full.sample_ids.tolist())) if full is not None else None
            outliers_section(path, view_s, got[1], on_map)


main()
