"""Compare runs: does a run cover another's distribution, per class, in one layer's activation space? Two or
more runs of one model (real images, a teacher, students, checkpoints over training) on one joint map, coloured
by run, samples that share seed and class linked by thin lines; the precision, recall, density, coverage,
Fréchet distance and diversity of each run against the first (`pipeline.distribution.compare_runs`) per class,
as bars; a class of the table filters the map; checkpoint runs one at a time on a slider."""

from __future__ import annotations

from dataclasses import replace

import altair as alt
import pandas as pd
import streamlit as st

from app import compare_runs_view as cv
from app import data, job_progress, page, state, static_files
from app.components.scatter_map import scatter_map
from app.explore_sidebar import default_layer
from app.page import init_widget
from pipeline import run_pairs

MAP_HEIGHT = 560
METHOD_TITLES = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}
BOUNDED = ("precision", "recall", "coverage")  # shares: bars from 0 to 1



def _sigma(value) -> str:
    return "" if value is None or pd.isna(value) else f"σ {float(value):.3g}"


# ---------------------------------------------------------------------------------------------- sidebar

def sidebar(path: str, status: data.StoreStatus, url: cv.Settings) -> cv.Settings:
    sb = st.sidebar
    sb.subheader("Runs to compare")
    models = list(status.models)
    explore = state.get_view()  # without a link, the model and layer Explore shows
    init_widget("cr_model", next(m for m in (url.model, explore.model, models[0]) if m in models), lambda v: v in models)
    model = sb.selectbox("Model", models, key="cr_model")
    layers = data.model_layers(path, model)
    if not layers:
        st.warning(f"Model **{model}** has no stored activations.")
        st.stop()
    layer0 = next((x for x in (url.layer, explore.layer if explore.model == model else None) if x in layers),
                  default_layer(layers, model))
    init_widget("cr_layer", layer0, lambda v: v in layers)
    layer = sb.selectbox("Layer", layers, key="cr_layer",
                         help="Runs of one model share its layers: real images, teachers, students, checkpoints.")
    table = cv.run_steps(path, model, layer)
    with_layer = table["run_id"].drop_duplicates().tolist()
    manifests, kinds, _ = cv.runs_info(path, model)
    ordered = run_pairs.default_runs(manifests, kinds, with_layer, include_edits=True)
    default = run_pairs.default_runs(manifests, kinds, with_layer)
    wanted = [r for r in url.runs if r in with_layer] if url.runs and model == (url.model or model) else default
    init_widget("cr_runs", wanted, lambda v: all(r in with_layer for r in v))
    runs = sb.multiselect("Runs (the first is the reference)", ordered, key="cr_runs",
                          format_func=lambda r: f"{r} ({kinds.get(r, 'generated')})",
                          help="The metrics measure each run against the first; real images first by default.")
    steps = run_pairs.shared_steps(table, runs) if runs else []
    step_options = [run_pairs.LAST, *(str(s) for s in steps)]
    chosen = table[table["run_id"].isin(runs)]

    def sigma_of(step: int) -> str:  # the step's noise level, where the selected runs agree on it
        values = chosen.loc[chosen["step"] == step, "sigma"].dropna().round(6).unique()
        return _sigma(values[0]) if len(values) == 1 else "σ differs by run" if len(values) else ""

    init_widget("cr_step", url.step if url.step in step_options else run_pairs.LAST, lambda v: v in step_options)
    step = sb.selectbox("Step", step_options, key="cr_step",
                        format_func=lambda v: "each run's last step" if v == run_pairs.LAST else
                        f"step {v} of every run ({sigma_of(int(v))})",
                        help="Each run's last step: the samples each run ends on (a 1-step run at step 0, an "
                             "18-step teacher at step 17). A step number: that step of every run (only steps "
                             "every selected run recorded are offered).")
    sb.subheader("Map and metrics")
    init_widget("cr_method", url.method, lambda v: v in cv.METHODS)
    method = sb.radio("Projection", cv.METHODS, key="cr_method", horizontal=True, format_func=METHOD_TITLES.get,
                      help="One map fitted on all the runs' samples together, so positions are comparable "
                           "(feature, metric and the method's parameters: Explore's).")
    init_widget("cr_links", url.links)
    links = sb.toggle("Link samples that share seed and class", key="cr_links",
                      help="Thin lines between the samples of different runs with the same seed and class (or "
                           "prompt). Real images are not linked: their seed drew only the noise added to them.")
    init_widget("cr_k", url.k)
    k = sb.slider("Neighbours k (manifolds)", *cv.K_RANGE, key="cr_k",
                  help="Precision, recall, density and coverage use each sample's k-th nearest neighbour "
                       "within its own run as the radius of its ball (k = 5 in the papers).")
    return cv.Settings(model=model, layer=layer, runs=tuple(runs), step=step, method=method, links=bool(links),
                       k=int(k), over_training=url.over_training, checkpoint=url.checkpoint)


def checkpoint_slider(s: cv.Settings, plan: run_pairs.CheckpointPlan) -> cv.Settings:
    """The checkpoint runs over training: one at a time (beside the other runs) on a slider, or all at once."""
    init_widget("cr_over", s.over_training)
    over = st.toggle(f"One checkpoint at a time ({len(plan.sequence)} checkpoint runs, in training order)",
                     key="cr_over")
    if not over:
        return replace(s, over_training=False)
    positions = list(plan.positions)
    init_widget("cr_ckpt", s.checkpoint if s.checkpoint in positions else positions[0], lambda v: v in positions)
    chosen = st.select_slider("Checkpoint", positions, key="cr_ckpt",
                              format_func=lambda r: f"step {plan.step_of(r):,} · {r}",
                              help="Redraws the joint map and the metrics with this checkpoint beside "
                                   + (", ".join(plan.fixed) if plan.fixed else f"the first, {plan.sequence[0]}"))
    return replace(s, over_training=True, checkpoint=chosen)


def training_chart(table: pd.DataFrame, current: int | None) -> None:
    """The overall metrics of each checkpoint against the reference, by training step; the slider's checkpoint
    marked."""
    shares = table.melt(id_vars=["checkpoint_step"], value_vars=["precision", "recall", "coverage"],
                        var_name="metric", value_name="value")
    x = alt.X("checkpoint_step:Q", title="training step")
    tip = ["checkpoint_step:Q", "metric:N", alt.Tooltip("value:Q", format=".3f")]
    left = alt.Chart(shares).mark_line(point=True).encode(
        x=x, y=alt.Y("value:Q", title=None, scale=alt.Scale(domain=[0, 1])), color=alt.Color("metric:N", title=None),
        tooltip=tip).properties(title=f"Each checkpoint against {table['run_a'].iloc[0]}, all classes", height=180)
    right = alt.Chart(table).mark_line(point=True, color="#e15759").encode(
        x=x, y=alt.Y("fd:Q", title="Fréchet distance"),
        tooltip=["checkpoint_step:Q", alt.Tooltip("fd:Q", format=".4g")]).properties(title=" ", height=180)
    if current is not None:
        rule = alt.Chart(pd.DataFrame({"checkpoint_step": [current]})).mark_rule(strokeDash=[4, 3], color="#888")
        left, right = left + rule.encode(x="checkpoint_step:Q"), right + rule.encode(x="checkpoint_step:Q")
    c1, c2 = st.columns(2)
    c1.altair_chart(left, width="stretch")
    c2.altair_chart(right, width="stretch")


# --------------------------------------------------------------------------------------------- progress

def _job_title(key: tuple) -> str:
    return cv.JOB_TITLES.get(key[0], "Computing")


def _progress(keys: tuple) -> None:
    cv.CANCELS.progress(keys, _job_title, cancel_key="cr_cancel")


def _result(job: data.Job, what: str):
    return job_progress.result(job, what, cv.CANCELS.resume, "cr_resume_{hash}")


# ------------------------------------------------------------------------------------------------ parts

def runs_section(path: str, s: cv.Settings, runs: list[str], steps: dict[str, int]) -> None:
    table = cv.run_table(path, s.model, s.layer, runs, steps)
    st.dataframe(table, hide_index=True, width="stretch", key="cr_runs_table",
                 column_config={"σ": st.column_config.NumberColumn("σ", format="%.4g"),
                                "samples": st.column_config.NumberColumn("samples", format="%d")})
    where = "each run's last step" if s.step == run_pairs.LAST else f"step {s.step} of every run"
    if len(set(steps.values())) > 1:
        # say "choose a shared step" only where there is one: the demo's teacher (step 17 alone), student and
        # naive 1-step (step 0) share none, and the Step menu then offers nothing else
        shared = run_pairs.shared_steps(cv.run_steps(path, s.model, s.layer), runs)
        _, kinds, _ = cv.runs_info(path, s.model)
        encoded = [r for r, k in kinds.items() if k == "encoded"]
        if shared:
            like = "choose a shared step (Step, in the sidebar) to compare like with like."
        elif encoded:
            like = ("these runs share no step; the encoded runs (" + ", ".join(f"`{r}`" for r in encoded)
                    + ") hold images run through the network at one shared step, to compare like with like.")
        else:
            like = "these runs share no step to compare like with like."
        st.caption(f"Measured at {where}: the runs are at **different steps** (and noise levels σ), so the map "
                   "is one fit on each run's samples at its own step, and the metrics compare them there. A 1-step "
                   f"run's only step sees pure noise (σ 80 on the demo): {like}")
    else:
        st.caption(f"Measured at {where}: every run at step {next(iter(steps.values()))}.")


def _on_table_select(key: str, table: pd.DataFrame) -> None:
    event = st.session_state.get(key) or {}
    rows = ((event.get("selection") or {}).get("rows") or []) if hasattr(event, "get") else []
    if rows and 0 <= rows[0] < len(table):
        cls = str(table["class"].iloc[rows[0]])
        cv.set_class(None if cls == "all" else cls)


def metrics_section(table: pd.DataFrame, runs: list[str]) -> None:
    st.markdown(f"**Each run against {runs[0]}**, per class: click a row to show its class on the map; click a "
                "column's header to sort.")
    top = lambda cols: max(float(table[list(cols)].max().max()), 1e-9) if len(table) else 1.0  # noqa: E731
    config = {m: st.column_config.ProgressColumn(m, format="%.3f", min_value=0.0, max_value=1.0) for m in BOUNDED}
    config["density"] = st.column_config.ProgressColumn("density", format="%.3f", min_value=0.0,
                                                        max_value=max(top(["density"]), 1.0))
    config["fd"] = st.column_config.ProgressColumn("fd", format="%.4g", min_value=0.0, max_value=top(["fd"]))
    for m in ("diversity_a", "diversity_b"):
        config[m] = st.column_config.ProgressColumn(m, format="%.4g", min_value=0.0,
                                                    max_value=top(["diversity_a", "diversity_b"]))
    key = f"cr_metrics_{cv._digest([cv.get_class(), *runs])}"  # drawn anew (no stale selection) after a change
    first = ["class", "run_b"]  # what a row is, then its bars; the reference (run_a) is the same on every row
    table = table[first + [c for c in table.columns if c not in first and c != "run_a"] + ["run_a"]]
    st.dataframe(table, hide_index=True, width="stretch", key=key, column_config=config,
                 height=min(38 + 35 * len(table), 560), on_select=lambda: _on_table_select(key, table),
                 selection_mode="single-row")
    st.caption("precision: the share of the run inside the reference's k-NN manifold (realistic) · recall: the "
               "share of the reference inside the run's (covered) · density ≈ 1 when distributed alike · "
               "coverage: the share of the reference's balls holding a sample of the run · fd: the Fréchet "
               "distance of the layer's features · diversity: mean pairwise distance within a class (_a: the "
               "reference, _b: the run). A class with k or fewer samples in a run has no manifold metrics.")


def class_picker(classes: list[str]) -> None:
    current = cv.get_class()
    options = [cv.ALL, *classes]
    if current is not None and current not in options:
        options.append(current)
    st.session_state["cr_class_pick"] = current or cv.ALL
    st.selectbox("Class on the map", options, key="cr_class_pick",
                 format_func=lambda c: "every class" if c == cv.ALL else c,
                 on_change=lambda: cv.set_class(st.session_state["cr_class_pick"]))


def map_section(path: str, s: cv.Settings, full, sub, runs_all: list[str], groups) -> None:
    links, n_links = cv.links_for(sub, groups) if s.links else ([], 0)
    data.thumb_export(data.resolve(path)).request_once(full.key, full.samples())
    scatter_map(
        **static_files.map_urls(sub, cv.color_file(sub, runs_all)),
        revision=full.key,  # one projection: zoom and pan survive the class filter
        links=links or None,
        height=MAP_HEIGHT,
        point_size=state.get_view().point_size,
        filename=f"compare-runs-{s.model}-{s.layer}",
        key="compare_runs_map",
    )
    counts = sub.frame["run_id"].astype(str).value_counts()
    bits = [f"{len(sub):,} of {len(full):,} samples" if len(sub) != len(full) else f"{len(full):,} samples",
            ", ".join(f"{r}: {counts.get(r, 0):,}" for r in runs_all if r in counts),
            f"{METHOD_TITLES.get(s.method, s.method)} ({'from the cache' if full.source == 'cache' else full.source})"]
    if s.links:
        bits.append("no samples share seed and class here" if not n_links else f"{n_links:,} link lines"
                     if len(links) == n_links else f"{len(links):,} of {n_links:,} link lines (choose a class "
                                                   "to see all of them)")
    st.caption(" · ".join(bits) + "  \nHover for a preview · coloured by run")


def exports_box(path: str, s: cv.Settings, sub, table: pd.DataFrame | None, runs_all: list[str],
                steps: dict[str, int], groups) -> None:
    stem = cv.file_stem(s, list(steps), cv.get_class())
    box = st.container(key="cr_exports")
    box.markdown("**Export**")
    box.download_button("Metrics (CSV)", data=cv.metrics_csv(table) if table is not None else b"",
                       file_name=f"{stem}-metrics.csv", mime="text/csv", icon=":material/table:",
                       key="cr_dl_csv", width="stretch", disabled=table is None,
                       help="The table of metrics: every pair and class")
    if sub is None:
        return
    cls = cv.get_class()
    # on_click="ignore": no rerun on a download, which would replace the other button's deferred file under a
    # click that follows at once (nothing downloaded; "Deferred file ... not found" in the log)
    box.download_button("Map (PNG)", data=lambda: cv.map_png(sub, runs_all, steps, cls), file_name=f"{stem}.png",
                       mime="image/png", icon=":material/image:", key=f"cr_dl_png_{sub.key}", width="stretch",
                       on_click="ignore",
                       help="The map coloured by run, with its legend and title")
    box.download_button("Map (HTML)", data=lambda: cv.map_html(path, sub, runs_all, steps, cls,
                                                              groups if s.links else []),
                       file_name=f"{stem}.html", mime="text/html", icon=":material/language:",
                       key=f"cr_dl_html_{sub.key}", width="stretch", on_click="ignore",
                       help="A standalone interactive map (opens offline) with hover thumbnails and the link lines")


# ----------------------------------------------------------------------------------------------- page

def main() -> None:
    path, status = page.header("Compare runs")
    url = cv.load_url_once()
    s = sidebar(path, status, url)
    if len(s.runs) < 2:
        st.info("Choose two or more runs of this model in the sidebar: the first is the reference.",
                icon=":material/compare_arrows:")
        cv.sync_url(s)
        return
    _, _, checkpoints = cv.runs_info(path, s.model)
    plan = run_pairs.checkpoint_plan(s.runs, checkpoints)
    runs_all = list(s.runs)
    head = st.empty()
    if plan.active:
        s = checkpoint_slider(s, plan)
    runs = plan.runs_at(plan.positions.index(s.checkpoint)) if plan.active and s.over_training else runs_all
    request = {r: (-1 if s.step == run_pairs.LAST else int(s.step)) for r in runs}
    try:
        steps = run_pairs.resolve_run_steps(None, s.model, s.layer, request, table=cv.run_steps(path, s.model, s.layer))
    except run_pairs.RunPairsError as exc:
        st.error(str(exc))
        cv.sync_url(s)
        return
    training = cv.training_job(path, s, plan, holder=job_progress.session_id()) if plan.active else None
    map_job = cv.map_job(path, s, runs, steps, holder=job_progress.session_id())
    metrics_job = cv.metrics_job(path, s, runs, holder=job_progress.session_id())
    running = tuple(j.key for j in (map_job, metrics_job, training) if j is not None and j.running
                    and not cv.CANCELS.cancelled(j.key))
    if running:
        _progress(running)
    if training is not None and (got := _result(training, "The metrics over training")) is not None:
        training_chart(got, plan.step_of(s.checkpoint) if s.over_training else None)
    head.markdown(f"### {s.model} · {s.layer} · {len(runs)} runs")
    runs_section(path, s, runs, steps)

    table = metrics_job.result if not metrics_job.running and not metrics_job.error else None
    classes = [c for c in pd.unique(table["class"].astype(str)) if c != "all"] if table is not None else []
    groups = cv.link_groups(path, s.model, runs) if s.links else []

    left, right = st.columns([5, 2], gap="medium")
    sub = None
    with left:
        proj = _result(map_job, "The joint map")
        if proj is not None:
            full = cv.view_of(path, s, map_job, steps)
            sub = cv.class_view(path, full, cv.get_class())
            if not len(sub):
                st.warning(f"No sample of class {cv.get_class()!r} on this map.")
            else:
                map_section(path, s, full, sub, runs_all, groups)
    with right:
        if classes or cv.get_class():
            class_picker(classes)
        exports_box(path, s, sub, table, runs_all, steps, groups)
    got = _result(metrics_job, "The metrics")
    if got is not None:
        metrics_section(got, runs)
    cv.sync_url(s)


main()
