"""The Explore page's sidebar: store, model, runs, layer, step, the projection method and its own controls,
colouring, filters and neighbours, read into one `ViewSettings` (with what a link asked for and could not
get said above the map)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, state, views
from app.page import init_widget
from app.state import ViewSettings
from pipeline.features import default_step
from pipeline.methods import METHODS

REFIT = "dmd.refit"  # (the projection a Recompute press asked to refit, how many presses)



def _step_label(steps: pd.DataFrame):
    info = {int(r.step): r for r in steps.itertuples()}

    def fmt(step: int | str) -> str:
        if step == state.ALL_STEPS:
            return "all steps"
        r = info.get(int(step))
        if r is None:
            return str(step)
        parts = [f"step {int(step)}"]
        if pd.notna(r.sigma):
            parts.append(f"σ {float(r.sigma):.3g}")
        if pd.notna(r.timestep):
            parts.append(f"t {float(r.timestep):.0f}")
        return " · ".join(parts)

    return fmt


def sidebar_controls(path: str, status: data.StoreStatus) -> tuple[ViewSettings, int]:
    """Draw the sidebar; returns the settings of the view to show and the refit counter."""
    view = state.get_view()
    models = list(status.models)
    sb = st.sidebar
    sb.subheader("View")

    init_widget("w_model", view.model if view.model in models else models[0], lambda v: v in models)
    model = sb.selectbox("Model", models, key="w_model")

    runs_all = data.model_samples(path, model)["run_id"].drop_duplicates().tolist()
    same_model = view.model in (None, model)  # None: a link that names no model means the first one
    wanted_runs = [r for r in view.runs if r in runs_all] if same_model else []
    init_widget("w_runs", wanted_runs, lambda v: all(r in runs_all for r in v))
    runs = sb.multiselect("Runs", runs_all, key="w_runs", placeholder="all runs",
                          help="Leave empty to show every run of the model.")

    layers = data.model_layers(path, model)
    if not layers:
        st.warning(f"Model **{model}** has no stored activations.")
        st.stop()
    init_widget("w_layer", view.layer if view.layer in layers else default_layer(layers, model),
          lambda v: v in layers)
    layer = sb.selectbox("Layer", layers, key="w_layer")

    steps = data.model_steps(path, model, layer)
    step_values = sorted({int(s) for s in steps["step"]}) or [0]
    if len(step_values) > 1:  # every step in one map: one point per (sample, step)
        step_values.append(state.ALL_STEPS)
    # a link's step, else the step most runs share (pipeline.features.default_step), not simply the last
    start = view.step if view.step in step_values else default_step(steps)
    init_widget("w_step", start if start in step_values else step_values[0], lambda v: v in step_values)
    if len(step_values) > 1:
        step = sb.select_slider("Step", step_values, key="w_step", format_func=_step_label(steps),
                                help="A denoising step, or all steps in one map (each sample once per step; "
                                     "select a point to see its trajectory).")
    else:
        step = step_values[0]
        sb.caption(_step_label(steps)(step))
    all_steps = step == state.ALL_STEPS
    if view.model is not None and all_steps != (view.step == state.ALL_STEPS):
        # into all steps: colour by step (what such a map is for); back: step colouring no longer applies
        if all_steps:
            st.session_state["w_color"] = "step"
        elif st.session_state.get("w_color") == "step":
            st.session_state["w_color"] = "label"

    init_widget("w_method", view.method, lambda v: v in state.METHODS)
    method = sb.radio("Projection method", state.METHODS, key="w_method", horizontal=True,
                      format_func=lambda m: METHODS[m].title,
                      help="UMAP: local and global structure, fast · t-SNE: local neighbourhoods, clusters "
                           "pulled apart · PCA: the linear baseline (the two directions of largest variance), "
                           "which shows what the non-linear maps add")
    with sb.form("projection", border=True):
        st.markdown(f"**Projection** · {METHODS[method].title}")
        init_widget("w_feature", view.feature)
        feature = st.radio("Feature", state.FEATURES, key="w_feature", horizontal=True,
                           help="auto: the layer's default (the stored map when small, else channel means; "
                                "PCA to 50 dimensions above 256) · mean: channel means over space · full: the "
                                "stored map flattened · pca: the stored map reduced to 50 dimensions by PCA")
        own = {}
        for name, p in METHODS[method].PARAMS.items():  # the chosen method's own parameters
            init_widget(f"w_{p.tag}", getattr(view, name))
            own[name] = st.slider(name, *p.ui_range, step=p.ui_step, key=f"w_{p.tag}", help=p.help)
        init_widget("w_metric", view.metric, lambda v: v in state.METRICS)
        metric = st.selectbox("Metric", state.METRICS, key="w_metric")
        recompute = st.form_submit_button("Recompute", icon=":material/refresh:", width="stretch",
                                          help="Apply these parameters. With unchanged parameters: refit "
                                               "from scratch (new samples are otherwise placed into the "
                                               "existing map).")
    applied = {name: getattr(view, name) for name in METHODS[method].PARAMS}
    if recompute and (feature, own, metric) == (view.feature, applied, view.metric) \
            and (model, layer, step, method) == (view.model, view.layer, view.step, view.method):
        # a refit of exactly this projection (the counter is part of the job key: one refit per press)
        target = (model, tuple(runs), layer, step, feature, method, tuple(own.items()), metric)
        _, count = st.session_state.get(REFIT, (None, 0))
        st.session_state[REFIT] = (target, count + 1)
    if not recompute and view.model is not None:
        # Form widgets only count once submitted: keep the applied parameters.
        feature, own, metric = view.feature, applied, view.metric

    sb.subheader("Colour and filter")
    samples = data.model_samples(path, model)
    options = color_options(path, model, samples, all_steps=all_steps)
    init_widget("w_color", view.color_by if view.color_by in options else "label", lambda v: v in options)
    color_by = sb.selectbox("Colour by", list(options), key="w_color",
                            format_func=views.coloring_title)
    n_clusters = view.n_clusters
    if color_by == "cluster":
        n_prompts = int(samples["prompt"].nunique())
        init_widget("w_nclusters", min(view.n_clusters, max(2, n_prompts)))
        n_clusters = sb.slider("Clusters (k)", 2, max(3, min(30, n_prompts)), key="w_nclusters")

    labels = _label_order(samples)
    init_widget("w_classes", [c for c in view.classes if c in labels] if same_model else [],
          lambda v: all(c in labels for c in v))
    classes = sb.multiselect("Classes / prompts", labels, key="w_classes", placeholder="all")
    init_widget("w_keyword", view.keyword if same_model else "")
    keyword = sb.text_input("Keywords", key="w_keyword", placeholder='e.g. dog OR "red car" -night',
                            help="Terms are ANDed; OR, NOT/-term, \"quoted phrases\"; case-insensitive; over "
                                 "prompts, labels, class names and categories.")
    init_widget("w_fmode", view.filter_mode, lambda v: v in state.FILTER_MODES)
    filter_mode = sb.radio("Filter shows", state.FILTER_MODES, key="w_fmode", horizontal=True,
                           format_func={"highlight": "highlight on the map", "project": "project only"}.get,
                           disabled=not (classes or keyword.strip()))

    sb.subheader("Neighbours")
    init_widget("w_k", view.k)
    k = sb.slider("k nearest", *state.K_RANGE, key="w_k")
    init_widget("w_space", view.space, lambda v: v in state.SPACES)
    space = sb.radio("Neighbour space", state.SPACES, key="w_space", horizontal=True,
                     format_func={"map": "map (2-D)", "activation": "activation"}.get,
                     help="activation (default): nearest in the feature space the projection was computed "
                          "from, the faithful one · map: nearest on the screen, partly an artefact of the "
                          "projection (see kNN overlap under the map).")
    init_widget("w_psize", view.point_size)
    point_size = sb.slider("Point size", 2.0, 12.0, step=0.5, key="w_psize")

    new = ViewSettings(model=model, runs=tuple(runs), layer=layer, step=step if all_steps else int(step),
                       feature=feature, method=method,
                       **({n: getattr(view, n) for m in METHODS.values() for n in m.PARAMS} | own),
                       metric=metric, color_by=color_by,
                       n_clusters=int(n_clusters), classes=tuple(classes), keyword=keyword.strip(),
                       filter_mode=filter_mode, k=int(k), space=space, point_size=float(point_size))
    if (new.model, new.layer, new.step, new.runs) != (view.model, view.layer, view.step, view.runs) \
            and view.model is not None:
        # Another projection: the lasso set belongs to the old one. The selected sample stays if present.
        st.session_state[state.LASSO] = []
    new = new.validated()
    _check_url(path, view, new)
    _url_notice()
    target, count = st.session_state.get(REFIT, (None, 0))
    here = (new.model, new.runs, new.layer, new.step, new.feature, new.method,
            tuple((n, getattr(new, n)) for n in METHODS[new.method].PARAMS), new.metric)
    return new, count if target == here else 0


# Why a view value from the URL was not used, per field (the store has no such thing).
_URL_WHY = {"model": "no such model in this store", "runs": "not runs of {model}", "layer": "not a layer of {model}",
            "step": "{model} · {layer} has no such step", "color_by": "not a colouring of this view",
            "classes": "not labels of {model}", "keyword": "the link's model was not used",
            "n_clusters": "out of range"}


def _check_url(path: str, asked: ViewSettings, used: ViewSettings) -> None:
    """On the first Explore run of a session opened from a link: note every view value of the URL that the
    store could not show (another model, layer, step, colouring, sample…) with the value used instead."""
    pending = state.url_pending()
    if not pending:
        return
    state.url_checked()
    for name, why in _URL_WHY.items():
        given = asked.keyword.strip() if name == "keyword" else getattr(asked, name)  # (stored stripped)
        if name in pending and given != getattr(used, name):
            state.add_url_fix(state.UrlFix(state.url_param(name), pending[name], state.show_value(getattr(used, name)),
                                           why.format(model=used.model, layer=used.layer)))
    sel = pending.get("selected")
    if sel:
        from pipeline.features import split_point_id

        samples = data.model_samples(path, used.model)
        if used.runs:
            samples = samples[samples["run_id"].isin(used.runs)]
        if split_point_id(sel)[0] not in set(samples["sample_id"]):
            state.add_url_fix(state.UrlFix("sel", sel, "no selection", f"not a sample of {used.model}"))
            state.clear_selection()


def _url_notice() -> None:
    """The link's values that could not be used, until dismissed."""
    fixes = state.url_fixes()
    if not fixes:
        return
    with st.container(key="url_fixes"):
        lines = "\n".join(f"* {f.text()}" for f in fixes)
        st.warning(f"Some values in this link could not be used:\n{lines}", icon=":material/link_off:")
        st.button("Dismiss", key="dismiss_url_fixes", on_click=state.clear_url_fixes, type="tertiary")


def default_layer(layers: list[str], model: str | None = None) -> str:
    """The model family's first view layer that the store has (pipeline/families.py: the network's middle,
    its bottleneck), else the middle of the list."""
    from pipeline.families import view_layers

    for name in view_layers(model):
        if name in layers:
            return name
    return layers[len(layers) // 2]


def _label_order(samples: pd.DataFrame) -> list[str]:
    if samples["class_id"].notna().any():
        return samples.drop_duplicates("label").sort_values("class_id")["label"].astype(str).tolist()
    return sorted(samples["label"].dropna().astype(str).unique().tolist())


def color_options(path: str, model: str, samples: pd.DataFrame, all_steps: bool = False) -> dict[str, str]:
    """Colourings offered for a model, judged on its metadata (the same for every layer and step); colour by
    step only where the view holds several steps."""
    keys = views.coloring_keys(samples, all_steps=all_steps, clusters=data.has_text_embeddings(path, model))
    return {k: k for k in keys}


# ------------------------------------------------------------------------------------- the view


