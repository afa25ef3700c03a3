"""Inside: where in the image a layer's features live, for the selected sample and its neighbours: the
channel-norm heatmap and a PCA false-colour image (one PCA for the whole view) over each image; a click on a
location of the selected image shows where the most similar features lie in the neighbours' images; and the
selected activation's channel histogram and strongest channels."""

from __future__ import annotations

import streamlit as st

from app import data, job_progress, page, state
from app import inside_view as iv
from app.page import init_widget
from pipeline import spatial
from pipeline.features import default_step


def _wait(job: data.Job, what: str) -> bool:
    return job_progress.wait([job], lambda _key: what, error=lambda j: f"{what}: {j.error}",
                             caption="Maps the store does not keep full are recomputed from the samples' seeds "
                                     "by their generator.")


def _on_pick() -> None:
    got = iv.clicked_location(st.session_state.get("ins_pick"))
    if got is not None:
        st.session_state["ins_row"], st.session_state["ins_col"] = got
        st.session_state[iv.LOCATION] = got


def _pick_sample(path: str, status: data.StoreStatus) -> str | None:
    st.info("Select a sample on **Explore** (its link carries `?sel=`), or choose one here.",
            icon=":material/touch_app:")
    models = list(status.models)
    model = st.selectbox("Model", models, key="ins_pick_model")
    ids = data.model_samples(path, model)["sample_id"].tolist()
    sid = st.selectbox("Sample", ids, index=None, key="ins_pick_sample", placeholder="a sample id")
    if sid:
        state.select(sid)
    return sid


def _run_steps(path: str, model: str, layer: str) -> list[int] | None:
    """The steps the selected sample's run records on `layer` (None: no sample, or an unknown id)."""
    from app import compare_runs_view as cv
    from store import layout

    selected = state.get_selection().selected
    try:
        run = layout.split_sample_id(selected)[0] if selected else None
    except ValueError:
        return None
    table = cv.run_steps(path, model, layer)
    return table.loc[table["run_id"] == run, "step"].astype(int).tolist() if run else None


def sidebar(path: str, model: str, url: dict) -> iv.InsideSettings:
    sb = st.sidebar
    sb.subheader("Inside")
    layers = data.model_layers(path, model)
    explore = state.get_view()
    start = url.get("layer") if url.get("layer") in layers else explore.layer if explore.layer in layers \
        else layers[-1]
    init_widget("ins_layer", start, lambda v: v in layers)
    layer = sb.selectbox("Layer", layers, key="ins_layer")
    frame = data.model_steps(path, model, layer)
    own = _run_steps(path, model, layer)
    # only the steps the sample's run records: another step has no activation of it to show (a teacher that
    # records its step 17 alone offered 0–3 too, each an error)
    steps = sorted(set(own)) if own else sorted({int(x) for x in frame["step"]}) or [0]
    start = url.get("step") if url.get("step") in steps else \
        default_step(frame, own=own)  # the step most runs share, if the sample's has it
    init_widget("ins_step", start if start in steps else steps[-1], lambda v: v in steps)
    if len(steps) > 1:
        step = sb.select_slider("Step", steps, key="ins_step")
    else:
        step = steps[0]
        sb.caption(f"Step {step}: the only step this sample's run records on this layer.")
    init_widget("ins_k", min(max(int(url.get("k", iv.DEFAULT_K)), 0), iv.MAX_K))
    k = sb.slider("Neighbours", 0, iv.MAX_K, key="ins_k",
                  help="The selected sample's nearest samples in activation space at this layer and step.")
    init_widget("ins_opacity", 0.6)
    opacity = sb.slider("Map opacity", 0.0, 1.0, step=0.05, key="ins_opacity",
                        help="0: the image alone, 1: the map alone.")
    init_widget("ins_up", "nearest")
    up = sb.radio("Upsampling", spatial.UPSAMPLING, key="ins_up", horizontal=True,
                  help="nearest: the map's cells as they are; bilinear: smoothed between cell centres.")
    return iv.InsideSettings(model=model, sample_id=state.get_selection().selected, layer=layer, step=int(step),
                             k=int(k), opacity=float(opacity), upsampling=up)


def main() -> None:
    path, status = page.header("Inside the feature map")
    url = iv.load_url_once()
    state.select_once(url.get("sel"), "ins.sel_loaded")
    selected = state.get_selection().selected
    model = iv.model_of(path, status, selected) if selected else None
    if selected and model is None:
        st.warning(f"Sample `{selected}` is not in this store.")
        selected = None
    if not selected:
        selected = _pick_sample(path, status)
        if not selected:
            return
        model = iv.model_of(path, status, selected)
    s = sidebar(path, model, url)

    nn_job = iv.neighbours_job(path, s) if s.k else None
    if nn_job is not None and not _wait(nn_job, "Neighbours"):
        return
    ids = [s.sample_id, *(nn_job.result if nn_job is not None else [])]
    job = iv.view_job(path, s, ids)
    if not _wait(job, "Feature maps"):
        iv.sync_url(s, st.session_state.get(iv.LOCATION))
        return
    view: spatial.SpatialView = job.result
    fm = view.maps
    c, h, w = fm.maps[0].shape
    samples = data.model_samples(path, s.model).set_index("sample_id")
    label = samples["label"].get(s.sample_id, s.sample_id)
    st.markdown(f"### {label} · {s.layer} · step {fm.step}")
    recomputed = sum(v == "recomputed" for v in fm.source.values())
    how = "read from the store" if not recomputed else \
        f"recomputed from the seeds for {recomputed} of {len(ids)} (the store does not keep this layer's full map)"
    st.caption(f"Feature maps of {c} channels at {h}×{w}, laid over the {len(ids)} images; {how}. "
               f"One PCA for the whole view (explains {100 * float(view.pca.explained.sum()):.0f}% of the "
               "variance): one colour is one direction of feature space in every image.")

    # the location: URL, then a click, then the inputs
    start = url.get("at") if url.get("at") and url["at"][0] < h and url["at"][1] < w else (h // 2, w // 2)
    init_widget("ins_row", int(start[0]), lambda v: 0 <= v < h)
    init_widget("ins_col", int(start[1]), lambda v: 0 <= v < w)
    images = [iv.image_of(path, s.model, sid) for sid in ids]

    top, side = st.columns([1, 2], gap="large")
    with top:
        st.markdown("**Click a location** of the selected image")
        pcs = iv.laid_over(images[0], view.colours[0], s)
        st.plotly_chart(iv.click_figure(pcs, (h, w), (st.session_state["ins_row"], st.session_state["ins_col"])),
                        key="ins_pick", on_select=_on_pick, selection_mode="points",
                        config={"displayModeBar": False})
        r1, r2 = st.columns(2)
        r1.number_input("Row", 0, h - 1, key="ins_row")
        r2.number_input("Column", 0, w - 1, key="ins_col")
    location = (int(st.session_state["ins_row"]), int(st.session_state["ins_col"]))
    st.session_state[iv.LOCATION] = location
    sims = view.correspondences(*location)
    with side:
        st.plotly_chart(iv.histogram_figure(view.summary), key="ins_hist", config={"displaylogo": False})
        st.markdown("**Strongest channels** (mean |activation|) and where they fire")
        cols = st.columns(len(view.summary["top"]) or 1)
        for col, t in zip(cols, view.summary["top"], strict=False):
            picture = spatial.upsample(spatial.colourize(t["map"]), (96, 96), s.upsampling)
            col.image((picture * 255).astype("uint8"), caption=f"#{t['channel']} · {t['magnitude']:.3g}")

    st.markdown("#### The selected sample and its neighbours")
    st.caption("Rows: the image · channel norm (one scale for all) · PCA false colour · cosine similarity to the "
               f"clicked location (row {location[0]}, column {location[1]}; red similar, blue opposite).")
    cols = st.columns(len(ids))
    for i, (col, sid, img) in enumerate(zip(cols, ids, images, strict=True)):
        with col:
            name = samples["label"].get(sid, sid)
            col.markdown(f"**{'selected' if i == 0 else f'neighbour {i}'}**  \n:gray[{name} · `{sid}`]")
            col.image(iv.mark((iv.big(img) * 255).astype("uint8"), location if i == 0 else None, (h, w)),
                      caption="image")
            col.image(iv.norm_image(img, view.norms[i], view.norm_range, s), caption="channel norm")
            col.image(iv.laid_over(img, view.colours[i], s), caption="PCA colours")
            sim = iv.laid_over(img, spatial.colourize(sims[i], scheme="diverging"), s)
            col.image(iv.mark(sim, location if i == 0 else None, (h, w)),
                      caption=f"similarity · max {float(sims[i].max()):.2f}")
    if fm.notes:
        st.caption(" · ".join(fm.notes))
    iv.sync_url(s, location)


main()
