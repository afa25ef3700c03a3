"""Overview: the store in use, its runs (with their kind: generated, real, edit, teacher) and manifests, models,
layers, steps, sample counts, a grid of samples per class or category, and the storage footprint per layer (with a
button that removes stale caches)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import compare_runs_view as cv
from app import data, page, ui
from store.schema import run_kind

GRID_PER_CATEGORY = 12
GRID_CATEGORIES_PER_PAGE = 10


def storage_chart(by_layer: pd.DataFrame):
    """Bytes on disk per model and layer as horizontal bars: each bar's full name on the vertical axis (never cut
    short), the size on the horizontal one, titled with its unit ("MB on disk"; kB for a tiny store)."""
    import altair as alt

    unit, scale = ("GB", 2**30) if by_layer["bytes"].max() >= 2**30 else ("MB", 2**20) \
        if by_layer["bytes"].max() >= 2**20 else ("kB", 2**10)
    frame = pd.DataFrame({"name": by_layer["model"] + " / " + by_layer["layer"], "size": by_layer["bytes"] / scale,
                          "on disk": [data.human_bytes(float(b)) for b in by_layer["bytes"]]})
    return alt.Chart(frame).mark_bar().encode(
        x=alt.X("size:Q", title=f"{unit} on disk"),
        y=alt.Y("name:N", title=None, sort="-x", axis=alt.Axis(labelLimit=0)),
        tooltip=[alt.Tooltip("name:N", title="model / layer"), alt.Tooltip("on disk:N")],
    ).properties(height=storage_chart_height(len(frame)))


def storage_chart_height(bars: int) -> int:
    return 60 + 28 * bars


def steps_text(steps) -> str:
    """Recorded steps as "0–3" for a consecutive range, else listed ("0, 17"): a run that records only its last
    step (a teacher's step 17) reads apart from a multi-step run at a glance."""
    steps = sorted({int(s) for s in steps})
    if len(steps) > 2 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}–{steps[-1]}"
    return ", ".join(str(s) for s in steps)


def sigma_per_step(steps: pd.DataFrame) -> str:
    """Each step's number with its sigma ("0: 80 · 3: 0.002 · 17: 0.002"): two steps of equal sigma (a 4-step
    run's last and the teacher's 17th) would otherwise read as one listed twice."""
    rows = steps.dropna(subset=["sigma"]).sort_values("step")
    return " · ".join(f"{int(s)}: {g:.3g}" for s, g in zip(rows["step"], rows["sigma"], strict=True))


path, status = page.header("Overview")

resolved = data.resolve(path)
version = data.store_version(path)
runs = data.runs_frame(resolved, version)
by_kind = data.storage_frame(resolved, version, "kind")
by_layer = data.storage_frame(resolved, version, "layer")
samples = {m: data.model_samples(path, m) for m in status.models}

st.caption(f"Store `{resolved}`")
ui.demo_extras_status()  # a first start still adding the demo's real digits: their progress
warning_slot = st.empty()  # filled at the end, once every read has reported its corrupt parts
c1, c2, c3, c4 = st.columns(4)
c1.metric("Models", len(status.models))
c2.metric("Runs", len(runs))
c3.metric("Samples", f"{sum(len(df) for df in samples.values()):,}")
c4.metric("Size on disk", data.human_bytes(float(by_kind["bytes"].sum()) if len(by_kind) else 0))

# ---------------------------------------------------------------------------------------------- runs
st.subheader("Runs")
if len(runs):
    run_kinds = [run_kind(settings) for settings in runs["settings"]]
    table = pd.DataFrame({
        "run": runs["run_id"],
        "run kind": run_kinds,
        "model": runs["model"],
        "status": runs["status"],
        "samples": [f"{int(d):,} / {int(n):,}" if pd.notna(n) else f"{int(d):,}"
                    for d, n in zip(runs["num_done"], runs["num_samples"], strict=True)],
        "layers": [", ".join(list(x)) for x in runs["layers"]],
        "seed": runs["seed"],
        "checkpoint": runs["checkpoint"],
        "created": runs["created_at"],
    })
    st.dataframe(table, hide_index=True, width="stretch")
    chosen = st.selectbox("Manifest of run", runs["run_id"].tolist(), key="overview_manifest_run")
    manifest = data.open_store(path).manifest(chosen) or {}
    with st.expander(f"Manifest of {chosen}", expanded=False):
        st.json(json.loads(json.dumps(manifest, default=str)))
else:
    st.info("No run manifests in this store (samples without manifests are still shown below).")

# -------------------------------------------------------------------------------------------- models
st.subheader("Models, layers and steps")
tabs = st.tabs(list(status.models))
for tab, model in zip(tabs, status.models, strict=True):
    with tab:
        frame = samples[model]
        layers = data.model_layers(path, model)
        per_run = frame.groupby(["run_id", "run_kind"]).size().rename("samples").reset_index() \
            .rename(columns={"run_id": "run", "run_kind": "run kind"})
        recorded = pd.concat([cv.run_steps(path, model, layer) for layer in layers]) if layers else None
        if recorded is not None and len(recorded):
            by_run = recorded.groupby("run_id")["step"].apply(steps_text)
            per_run["steps"] = [by_run.get(r, "") for r in per_run["run"]]
        left, right = st.columns([2, 3])  # wide enough for the runs' "steps" column beside kind and samples
        with left:
            st.markdown(f"**{len(frame):,} samples** in {len(per_run)} run(s)")
            st.dataframe(per_run, hide_index=True, width="stretch")
        with right:
            rows = []
            for layer in layers:
                steps = data.model_steps(path, model, layer)
                sig = sigma_per_step(steps) if len(steps) else ""
                size = by_layer[(by_layer["model"] == model) & (by_layer["layer"] == layer)]["bytes"].sum()
                rows.append({"layer": layer, "steps": len(steps), "step: σ": sig,
                             "size": data.human_bytes(float(size))})
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")

# --------------------------------------------------------------------------------------- sample grid
st.subheader("Samples per class or category")
gm, gp = st.columns([3, 1])
grid_model = gm.selectbox("Model", list(status.models), key="overview_grid_model")
frame = samples[grid_model]
group_col = "category" if frame["category"].notna().any() else "label"
order = (frame.sort_values(["class_id", "index"], na_position="last") if frame["class_id"].notna().any()
         else frame)
groups = list(pd.unique(order[group_col].dropna()))
pages = max(1, -(-len(groups) // GRID_CATEGORIES_PER_PAGE))
page = 1
if pages > 1:
    page = gp.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, key="overview_grid_page")
shown = groups[(page - 1) * GRID_CATEGORIES_PER_PAGE: page * GRID_CATEGORIES_PER_PAGE]
# one sample per seed: runs of the same model share seeds, and their images would repeat
picked = (order[order[group_col].isin(shown)].drop_duplicates([group_col, "seed"])
          .groupby(group_col, sort=False).head(GRID_PER_CATEGORY))
picked = picked[picked["image_path"].notna()]  # samples written without images have no thumbnail
urls = dict(zip(picked["sample_id"], data.thumb_urls(path, picked["sample_id"].tolist()), strict=True))
for group in shown:
    members = picked[picked[group_col] == group]
    count = int((frame[group_col] == group).sum())
    with st.container(border=True, key=f"grid_{grid_model}_{group}"):
        st.markdown(f"**{group}** · {count:,} samples")
        if len(members):
            st.image([urls[s] for s in members["sample_id"]], width=72)
        else:
            st.caption("stored without images")

# ------------------------------------------------------------------------------------------- storage
st.subheader("Storage")
s1, s2 = st.columns([3, 2])
with s1:
    if len(by_layer):
        st.altair_chart(storage_chart(by_layer), width="stretch", height=storage_chart_height(len(by_layer)),
                        key="overview_storage")
    else:
        st.caption("No activations stored.")
with s2:
    kinds = by_kind.assign(size=[data.human_bytes(float(b)) for b in by_kind["bytes"]])
    st.dataframe(kinds[["kind", "files", "size"]], hide_index=True, width="stretch")
    pruned = st.session_state.pop("pruned_caches", None)
    if pruned is not None:
        st.success(f"Removed {pruned} stale cache files.", icon=":material/delete_sweep:")
    stale_files, stale_bytes = data.stale_caches(path)
    if stale_files:
        st.caption(f"{stale_files} cache files ({data.human_bytes(float(stale_bytes))}) were computed from data "
                   "that has changed since; no map or comparison uses them any more.")
        st.button("Remove stale caches", icon=":material/delete_sweep:", key="prune_caches",
                  on_click=lambda: st.session_state.update(pruned_caches=data.prune_caches(path)))

bad = data.skipped(path)
if bad:
    with warning_slot.container():
        st.warning(f"{len(bad)} corrupt part(s) were skipped while reading this store; everything else is "
                   f"shown. Check it with `python -m store verify {path}`.", icon=":material/warning:")
        with st.expander("Skipped parts"):
            st.code("\n".join(bad), language=None)
