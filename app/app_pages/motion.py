"""Motion: the map moving through the denoising steps of a layer, or through the network's layers at a step,
on one aligned layout (`pipeline.aligned`), played in the browser; the frames side by side below; in depth
mode the CKA of consecutive layers beside the animation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, job_progress, page, state
from app import motion_view as mv
from app.components.scatter_map import small_multiples
from app.page import init_widget
from pipeline.features import default_step

HEIGHT = 600
CANCELLED = "mot.cancelled"  # the settings whose computation the user cancelled (not restarted until asked)
SETTINGS = "mot.settings"
MULTIPLES = "mot_multiples"  # the small multiples' widget key (its click and lasso events)



def sidebar(path: str, status: data.StoreStatus, url: dict) -> mv.MotionSettings:
    sb = st.sidebar
    sb.subheader("Motion")
    models = list(status.models)
    explore = state.get_view()
    model = page.model_picker(sb, models, url.get("model"), "mot_model")
    runs = page.runs_picker(sb, path, model, url.get("runs"), "mot_runs",
                            help="Leave empty for every run of the model (a step alignment keeps the samples "
                                 "recorded at every step).")
    layers_all = data.model_layers(path, model)
    if not layers_all:
        st.info(f"Model **{model}** has no stored activations.", icon=":material/info:")
        st.stop()
    init_widget("mot_mode", url.get("mode", "steps"), lambda v: v in mv.MODES)
    mode = sb.radio("Move through", mv.MODES, key="mot_mode", horizontal=True,
                    format_func={"steps": "denoising steps", "layers": "layers (depth)"}.get,
                    help="Steps: one layer's map at every sampling step. Layers: every chosen layer's map at one "
                         "step, encoder to decoder.")
    layer_default = url.get("layer") if url.get("layer") in layers_all else \
        explore.layer if explore.layer in layers_all else layers_all[-1]
    init_widget("mot_layer", layer_default, lambda v: v in layers_all)
    wanted = [x for x in url.get("layers", []) if x in layers_all]
    init_widget("mot_layers", wanted if len(wanted) >= 2 else list(layers_all), lambda v: all(x in layers_all for x in v))
    layer, layers, step = st.session_state["mot_layer"], tuple(st.session_state["mot_layers"]), 0
    if mode == "steps":
        layer = sb.selectbox("Layer", layers_all, key="mot_layer")
    else:
        chosen = sb.multiselect("Layers", layers_all, key="mot_layers", placeholder="choose two or more",
                                help="The layer sequence, in network order (default: every recorded layer).")
        layers = tuple(x for x in layers_all if x in chosen)
        steps = data.shared_steps(path, model, layers or layers_all)
        values = sorted({int(s) for s in steps["step"]}) or [0]
        init_widget("mot_step", url.get("step") if url.get("step") in values else default_step(steps),
                    lambda v: v in values)
        step = sb.select_slider("Step", values, key="mot_step") if len(values) > 1 else values[0]
    init_widget("mot_k", min(max(int(url.get("k", mv.DEFAULT_K)), 0), 30))
    k = sb.slider("Neighbours highlighted", 0, 30, key="mot_k",
                  help="The selected sample's nearest samples in activation space (at the last frame), ringed "
                       "in every frame.")
    init_widget("mot_speed", url.get("speed", "normal"), lambda v: v in mv.SPEEDS)
    speed = sb.select_slider("Speed", list(mv.SPEEDS), key="mot_speed",
                             help="Time per frame when playing (the positions are interpolated in between).")
    return mv.MotionSettings(model=model, runs=tuple(runs), mode=mode, layer=layer, step=int(step),
                             layers=layers, k=int(k), speed=speed)


def _job_title(key: tuple) -> str:
    return "Aligning maps" if "motion" in key[0] else "CKA"


def _cancel(job: data.Job) -> None:
    job.cancel.set()
    st.session_state[CANCELLED] = st.session_state.get(SETTINGS)


def _wait(jobs: list[data.Job]) -> bool:
    return job_progress.wait(jobs, _job_title, retry_key="mot_retry", cancel=_cancel, cancel_key="mot_cancel",
                             caption="The aligned maps are fitted once and cached: a second visit opens at once.")


def _on_select(key: str) -> None:
    sid = mv.clicked(st.session_state.get(key))
    if sid:
        state.select(sid)


def _on_multiples_click() -> None:
    click = (st.session_state.get(MULTIPLES) or {}).get("click")
    if isinstance(click, dict) and click.get("id"):
        state.select(str(click["id"]))


def _on_multiples_select() -> None:
    sel = (st.session_state.get(MULTIPLES) or {}).get("select")
    if isinstance(sel, dict):
        st.session_state[state.LASSO] = [str(x) for x in sel.get("ids") or []]


def main() -> None:
    path, status = page.header("Motion")
    url = mv.load_url_once()
    state.select_once(url.get("sel"), "mot.sel_loaded")
    s = sidebar(path, status, url)
    all_layers = data.model_layers(path, s.model)
    selected = state.get_selection().selected

    if s.mode == "layers" and len(s.layers) < 2:
        st.info("Choose at least two layers in the sidebar.", icon=":material/layers:")
        mv.sync_url(s, all_layers, selected)
        return
    if s.mode == "steps":
        steps = data.model_steps(path, s.model, s.layer)
        if len(steps) < 2:
            st.info(f"**{s.model}** records one step only at {s.layer}: nothing moves between steps. Choose "
                    "*layers (depth)*, or a multi-step model.", icon=":material/info:")
            mv.sync_url(s, all_layers, selected)
            return
    st.session_state[SETTINGS] = s
    if st.session_state.get(CANCELLED) == s:
        st.warning("Cancelled: nothing was computed or saved. Change a control, or compute it now.")
        if st.button("Compute", key="mot_compute", icon=":material/play_arrow:"):
            st.session_state[CANCELLED] = None
            st.rerun()
        mv.sync_url(s, all_layers, selected)
        return
    job = mv.aligned_job(path, s)
    jobs = [job]
    cka = mv.cka_job(path, s) if s.mode == "layers" else None
    if cka is not None:
        jobs.append(cka)
    if not _wait(jobs):
        mv.sync_url(s, all_layers, selected)
        return
    maps = job.result
    if selected and selected not in set(maps.sample_ids):
        selected = None
    near = mv.neighbours(path, s, maps, selected) if s.k else []
    labels = mv.labels_of(path, s.model, maps.sample_ids)
    colours, legend = mv.colours_for(labels)
    what = f"{s.layer}, steps {maps.frames[0]}–{maps.frames[-1]}" if s.mode == "steps" else \
        f"{len(maps.frames)} layers at step {s.step}"
    st.markdown(f"### {s.model} · {what}")
    src = "from the cache" if maps.source == "cache" else f"aligned in {maps.seconds:.1f} s"
    dropped = int(maps.meta.get("dropped", 0))
    st.caption(f"{len(maps):,} samples in every frame · {src} · AlignedUMAP (n_neighbors "
               f"{maps.params.n_neighbors}, alignment {maps.params.alignment_regularisation:g})"
               + (f" · {dropped:,} samples not recorded in every frame are left out" if dropped else ""))

    fig = mv.animated_figure(maps, colours, legend, labels.to_numpy(), selected, near, s.speed, HEIGHT)
    if s.mode == "layers":
        left, right = st.columns([3, 1], gap="medium")
    else:
        left, right = st.container(), None
    with left:
        st.plotly_chart(fig, key="mot_anim", width="stretch", on_select=lambda: _on_select("mot_anim"),
                        selection_mode="points", config={"displaylogo": False, "scrollZoom": True})
    if right is not None:
        with right:
            st.plotly_chart(mv.cka_figure(mv.consecutive(cka.result, s.layers), HEIGHT), key="mot_cka",
                            width="stretch", config={"displaylogo": False})
    st.caption("▶ Play moves every point to its position in the next frame (the browser interpolates); drag the "
               "slider to scrub. Click a point to select it: it and its neighbours stay marked in every frame.")
    if selected:
        st.markdown(f"Selected **{labels.get(selected, selected)}** · `{selected}`"
                    + (f" · {len(near)} neighbours ringed" if near else ""))
    st.markdown("#### Every frame side by side")
    inside = set(maps.sample_ids)
    lasso = [x for x in st.session_state.get(state.LASSO) or [] if x in inside]
    steps_axis = maps.axis == "steps"
    small_multiples(**mv.multiples_files(path, s, maps, labels, legend), revision=maps.key,
                    frame_title="step" if steps_axis else "layer", frame_prefix="step " if steps_axis else "",
                    selected=selected, knn=near, highlight=lasso or None, columns=mv.COLUMNS,
                    height=mv.multiples_height(len(maps.frames)), point_size=3.5 if len(maps) > 2000 else 5.0,
                    filename=f"motion-{s.model}-{s.layer if steps_axis else f'step{s.step}'}", key=MULTIPLES,
                    on_click=_on_multiples_click, on_select=_on_multiples_select)
    st.caption("Hover a point: the same sample is ringed in every frame, with its preview. Click to select it "
               "everywhere; lasso/box (toolbar) selects a set in every frame (Explore exports it). Zoom and pan "
               "move all frames together.")
    if lasso:
        st.markdown(f"**{len(lasso):,} samples** in the lasso/box selection.")
    mv.sync_url(s, all_layers, state.get_selection().selected)
    if s.mode == "layers" and cka is not None:
        table = mv.consecutive(cka.result, s.layers)
        st.dataframe(pd.DataFrame({"layers": table["pair"], "CKA": table["cka"].round(3)}), hide_index=True,
                     key="mot_cka_table")


main()
