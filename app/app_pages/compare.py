"""Compare layers: which layers organise the samples the same way (linear CKA of every pair), and where two of
them disagree (their maps side by side, coloured by how many nearest neighbours the layers share)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import compare_view as cv
from app import data, job_progress, motion_view, navigation, page, static_files
from app.components.scatter_map import scatter_map
from app.page import init_widget
from pipeline import compare
from pipeline.features import default_step

MAP_HEIGHT = 460
TABLE_ROWS = 12



def _depth_params(s: cv.CompareSettings) -> dict[str, str]:
    """The Motion page's depth mode on this model, step and runs (its URL parameters)."""
    params = {"model": s.model, "mode": "layers", "step": str(s.step)}
    if s.runs:
        params["runs"] = motion_view.SEP.join(s.runs)
    return params


def _step_label(steps: pd.DataFrame):
    info = {int(r.step): r for r in steps.itertuples()}

    def fmt(step: int) -> str:
        r = info.get(int(step))
        parts = [f"step {int(step)}"]
        if r is not None and pd.notna(r.sigma):
            parts.append(f"σ {float(r.sigma):.3g}")
        if r is not None and pd.notna(r.timestep):
            parts.append(f"t {float(r.timestep):.0f}")
        return " · ".join(parts)

    return fmt


def sidebar(path: str, status: data.StoreStatus, url: dict) -> cv.CompareSettings:
    sb = st.sidebar
    sb.subheader("Compare")
    models = list(status.models)
    model = page.model_picker(sb, models, url.get("model"), "cmp_model")
    runs = page.runs_picker(sb, path, model, url.get("runs"), "cmp_runs",
                            help="Leave empty to compare on every run of the model.")

    layers_all = data.model_layers(path, model)
    if len(layers_all) < 2:
        what = f"only one layer ({layers_all[0]})" if layers_all else "no stored activations"
        st.info(f"Model **{model}** has {what}: nothing to compare. Record several layers with "
                "`python -m pipeline generate --layers A,B,...`.", icon=":material/info:")
        st.stop()
    wanted = [x for x in url.get("layers", []) if x in layers_all]
    init_widget("cmp_layers", wanted if len(wanted) >= 2 else list(layers_all),
          lambda v: all(x in layers_all for x in v))
    layers = sb.multiselect("Layers", layers_all, key="cmp_layers", placeholder="choose two or more",
                            help="The layers in the similarity matrix (default: every layer of the model).")
    layers = [x for x in layers_all if x in layers]  # network order, whatever the click order

    steps = data.shared_steps(path, model, layers or layers_all)
    values = sorted({int(s) for s in steps["step"]}) or [0]
    init_widget("cmp_step", url.get("step") if url.get("step") in values else default_step(steps), lambda v: v in values)
    if len(values) > 1:
        step = sb.select_slider("Step", values, key="cmp_step", format_func=_step_label(steps),
                                help="The sampling step whose activations are compared.")
    else:
        step = values[0]
        sb.caption(_step_label(steps)(step))

    init_widget("cmp_k", min(max(int(url.get("k", cv.DEFAULT_K)), cv.K_RANGE[0]), cv.K_RANGE[1]))
    k = sb.slider("Neighbours k", *cv.K_RANGE, key="cmp_k",
                  help="Neighbour agreement: the share of a sample's k nearest neighbours (activation space, "
                       "cosine) that the two layers have in common.")
    return cv.CompareSettings(model=model, runs=tuple(runs), step=int(step), layers=tuple(layers), k=int(k),
                              color=st.session_state.get("cmp_color", url.get("color", "label")))


def _job_title(key: tuple) -> str:
    kind = key[0] if isinstance(key[0], str) else ""
    return {"compare-cka": "Layer similarity", "compare-knn": "Neighbour agreement"}.get(kind, "Projecting")


def _wait_or_fail(jobs: list[data.Job]) -> bool:
    """True when every job is done; else shows progress or the error (and the caller returns)."""
    return job_progress.wait(jobs, _job_title, error=lambda job: f"{_job_title(job.key)} failed: {job.error}",
                             caption="The page stays usable: change any control, or wait here; the results "
                                     "appear when ready.")


# ---------------------------------------------------------------------------------------------- heatmap

def heatmap(cka: pd.DataFrame, pair: tuple[str, str] | None) -> go.Figure:
    names = [str(x) for x in cka.index]
    z = cka.to_numpy(dtype=float)
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, zmin=0.0, zmax=1.0, colorscale="Viridis", texttemplate="%{z:.2f}",
        textfont={"size": 15},
        hovertemplate="%{y} · %{x}<br>CKA %{z:.3f}<extra></extra>", xgap=2, ygap=2,
        colorbar={"title": {"text": "CKA"}, "thickness": 12, "len": 0.9},
    ))
    if pair is not None:  # outline the pair shown below, in both triangles
        for a, b in {pair, pair[::-1]}:
            i, j = names.index(a), names.index(b)
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                          line={"color": "#e15759", "width": 3})
    size = 120 + 56 * len(names)
    fig.update_layout(height=min(max(size, 320), 720), margin={"l": 8, "r": 8, "t": 8, "b": 8},
                      xaxis={"side": "bottom", "tickangle": -30, "showgrid": False},
                      yaxis={"autorange": "reversed", "showgrid": False}, plot_bgcolor="rgba(0,0,0,0)")
    return fig


def similarity_section(path: str, s: cv.CompareSettings, url: dict) -> cv.CompareSettings | None:
    """The CKA heatmap and the pair pickers; returns the settings with the pair, or None while computing."""
    job = cv.similarity_job(path, s)
    if not _wait_or_fail([job]):
        return None
    cka: pd.DataFrame = job.result
    layers = list(s.layers)
    default_a, default_b = compare.least_similar_pair(cka)
    ua, ub = url.get("a"), url.get("b")
    if ua in layers and ub in layers and ua != ub:
        default_a, default_b = ua, ub
    init_widget("cmp_a", default_a, lambda v: v in layers)
    init_widget("cmp_b", default_b, lambda v: v in layers)

    left, right = st.columns([3, 2], gap="large")
    with right:
        st.markdown("#### Layer similarity")
        st.caption("Linear CKA (centered kernel alignment) of the layers' feature matrices on the same samples: "
                   "1 = the two layers arrange the samples the same way (up to rotation and scale), near 0 = "
                   "unrelated arrangements.")
        a = st.selectbox("Layer A", layers, key="cmp_a")
        b = st.selectbox("Layer B", layers, key="cmp_b")
    pair = (a, b) if a != b else None
    with left:
        st.plotly_chart(heatmap(cka.loc[layers, layers], pair), key="cmp_heatmap", width="stretch",
                        config={"displaylogo": False, "modeBarButtonsToRemove": ["sendDataToCloud"]})
        n, common = cka.attrs.get("n_samples"), cka.attrs.get("n_common")
        feats = cka.attrs.get("features") or {}
        bits = [f"{n:,} samples" if n else ""]
        if n and common and common > n:
            bits[0] += f" (a fixed subset of the {common:,} shared)"
        if feats:
            bits.append("features " + ", ".join(sorted(set(feats.values()))))
        st.caption(" · ".join(b for b in bits if b) + f" · step {s.step}")
        st.page_link(navigation.page("motion.py"), label="Watch the samples move through these layers",
                     icon=":material/animation:", query_params=_depth_params(s))
    with right:
        if pair is None:
            st.warning("Pick two different layers to compare their maps.")
            return None
        st.metric(f"CKA {a} · {b}", f"{float(cka.loc[a, b]):.3f}")
    return cv.CompareSettings(**{**s.__dict__, "layer_a": a, "layer_b": b})


# ------------------------------------------------------------------------------------------------ maps

def _on_click(side: str) -> None:
    event = st.session_state.get(f"cmp_map_{side}") or {}
    click = event.get("click")
    if isinstance(click, dict) and click.get("id"):
        st.session_state[cv.SELECTED] = str(click["id"])


def _clear_selected() -> None:
    st.session_state[cv.SELECTED] = None


def maps_section(path: str, s: cv.CompareSettings) -> None:
    agree_job = cv.agreement_job(path, s)
    map_jobs = [cv.map_job(path, s, s.layer_a), cv.map_job(path, s, s.layer_b)]
    if not _wait_or_fail([agree_job, *map_jobs]):
        return
    agreement: pd.DataFrame = agree_job.result
    mean, chance = agreement.attrs.get("mean"), agreement.attrs.get("chance")

    st.markdown(f"#### {s.layer_a} and {s.layer_b}, side by side")
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    with c1:
        init_widget("cmp_color", s.color if s.color in cv.COLOR_MODES else "label")
        st.radio("Colour by", cv.COLOR_MODES, key="cmp_color", horizontal=True,
                 format_func={"label": "class label / prompt", "agreement": "neighbour agreement"}.get)
    with c2:
        if mean is not None:
            st.metric("Mean neighbour agreement", percent(mean),
                      help=f"The mean share of a sample's {s.k} nearest neighbours (cosine, activation space) "
                           f"that both layers have in common; random neighbourhoods would share "
                           f"{percent(chance)}.")
    s = cv.CompareSettings(**{**s.__dict__, "color": st.session_state["cmp_color"]})

    selected = st.session_state.get(cv.SELECTED)
    views_ = [data.view_for(path, cv.map_settings(s, layer), job)
              for layer, job in zip((s.layer_a, s.layer_b), map_jobs, strict=True)]
    if selected and not all(selected in v.position for v in views_):
        selected = None
    resolved = data.resolve(path)
    for col, side, view in zip(st.columns(2, gap="medium"), ("a", "b"), views_, strict=True):
        with col:
            data.thumb_export(resolved).request_once(view.key, view.sample_ids.tolist())
            st.markdown(f"**{view.layer}** · {len(view):,} samples · "
                        f"{'from the cache' if view.source == 'cache' else 'fitted'}")
            scatter_map(
                **static_files.map_urls(view, cv.color_file(path, view, s, agreement, agree_job.key)),
                revision=view.key,
                highlight=[selected] if selected else None,
                height=MAP_HEIGHT,
                point_size=4.5,
                filename=f"compare-{view.model}-{view.layer}-step{view.step}",
                key=f"cmp_map_{side}",
                on_click=lambda side=side: _on_click(side),
            )
    st.caption("Hover a point for its preview · click a point to find it on both maps · scroll to zoom. "
               "The maps use Explore's projection parameters, so they are the same maps as there.")
    cv.sync_url(s, data.model_layers(path, s.model))
    if selected:
        _selected_panel(path, s, selected, agreement)
    _disagreement_table(path, s, agreement)


def _selected_panel(path: str, s: cv.CompareSettings, sid: str, agreement: pd.DataFrame) -> None:
    row = agreement[agreement["sample_id"] == sid]
    samples = data.model_samples(path, s.model)
    label = samples.loc[samples["sample_id"] == sid, "label"]
    with st.container(border=True, key="cmp_selected"):
        c_img, c_txt, c_a, c_b, c_x = st.columns([1, 4, 2, 2, 1], vertical_alignment="center")
        c_img.image(data.thumb_urls(path, [sid])[0], width=64)
        overlap = percent(row["overlap"].iloc[0]) if len(row) else "–"
        c_txt.markdown(f"**{label.iloc[0] if len(label) else sid}**  \n:gray[{sid} · neighbour agreement "
                       f"{overlap}]")
        c_x.button("", key="cmp_clear", icon=":material/close:", on_click=_clear_selected, type="tertiary",
                   help="Clear")
        for col, layer in ((c_a, s.layer_a), (c_b, s.layer_b)):
            if col.button(f"Open on {layer}", key=f"cmp_open_{layer}", icon=":material/scatter_plot:",
                          help=f"Open this sample, selected, on Explore's map of {layer}", width="stretch"):
                _, params = cv.open_in_explore(s, layer, sid)
                st.switch_page(navigation.PAGES_DIR / "explore.py", query_params=params)


PERCENT = "%.1f%%"  # every share on this page: one decimal (values in 0-100)


def percent(value: float) -> str:
    """A share (0-1) as the page writes it everywhere: one decimal."""
    return f"{100 * float(value):.1f}%"


def text_width(values, most: int = 400) -> int:
    """Pixels a table column needs to show the longest of ``values`` in full (the grid's 14 px font), at most
    ``most``: the table fits a 1280-px window with the demo's names."""
    longest = max((len(str(v)) for v in values), default=8)
    return min(most, max(80, int(7.5 * longest + 20)))


def _disagreement_table(path: str, s: cv.CompareSettings, agreement: pd.DataFrame) -> None:
    st.markdown("#### Where the layers disagree")
    st.caption(f"The {TABLE_ROWS} samples whose {s.k} nearest neighbours differ most between {s.layer_a} and "
               f"{s.layer_b} (overlap = share of neighbours in common; among equal overlaps, one per label in "
               "turn). The links open a sample on Explore's map of either layer, in a new tab.")
    table = cv.disagreement_table(path, s, agreement, TABLE_ROWS)
    table["overlap"] = 100 * table["overlap"]
    a_col, b_col = f"on {s.layer_a}", f"on {s.layer_b}"
    # the full width: the sample ids are shown whole (they are what a researcher copies), the links last
    st.dataframe(
        table, hide_index=True, width="stretch", row_height=52, key="cmp_table", height=38 + 52 * len(table),
        column_order=["thumbnail", "label", "sample_id", "overlap", a_col, b_col],
        column_config={
            "thumbnail": st.column_config.ImageColumn("", width="small"),
            "label": st.column_config.TextColumn("label", width=text_width(table["label"], most=260)),
            "sample_id": st.column_config.TextColumn("sample", width=text_width(table["sample_id"])),
            "overlap": st.column_config.ProgressColumn("overlap", format=PERCENT, min_value=0.0, max_value=100.0,
                                                       width="small"),
            a_col: st.column_config.LinkColumn(f"on {s.layer_a}", display_text="open in Explore ↗",
                                               width=text_width([a_col]),
                                               help=f"Open the sample on Explore's map of {s.layer_a}"),
            b_col: st.column_config.LinkColumn(f"on {s.layer_b}", display_text="open in Explore ↗",
                                               width=text_width([b_col]),
                                               help=f"Open the sample on Explore's map of {s.layer_b}"),
        },
    )
    by_label = cv.agreement_by_label(path, s.model, agreement)
    by_label = by_label.assign(mean=100 * by_label["mean"])
    left, _ = st.columns([1, 1], gap="medium")
    left.markdown("**Agreement per label**, least agreeing first")
    left.dataframe(
        by_label, hide_index=True, width="stretch", key="cmp_by_label",
        height=min(38 + 35 * len(by_label), 38 + 35 * TABLE_ROWS),
        column_config={"label": st.column_config.TextColumn("label"),
                       "samples": st.column_config.NumberColumn("samples", width="small"),
                       "mean": st.column_config.ProgressColumn("agreement", format=PERCENT, min_value=0.0,
                                                               max_value=100.0,
                                                               help="Mean neighbour agreement of the label")},
    )


# ------------------------------------------------------------------------------------------------- page

def main() -> None:
    path, status = page.header("Compare layers")
    url = cv.load_url_once()
    s = sidebar(path, status, url)
    all_layers = data.model_layers(path, s.model)
    if len(s.layers) < 2:
        st.info("Choose at least two layers in the sidebar.", icon=":material/layers:")
        cv.sync_url(s, all_layers)
        return
    st.markdown(f"### {s.model} · step {s.step}")
    with_pair = similarity_section(path, s, url)
    if with_pair is None:
        cv.sync_url(s, all_layers)
        return
    cv.sync_url(with_pair, all_layers)
    maps_section(path, with_pair)


main()
