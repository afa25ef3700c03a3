"""The Explore panel's what if (issue 13): regenerate, interpolate, generate from neighbours, steer.

`pipeline.edit.Editor` does every operation, in a background job (`app.data.run_edit`) on one generator per
run shared by the server's sessions. This module draws the controls for the selected sample, says where its
generator loads from (or why it cannot here), shows each operation's equivalent ``python -m pipeline edit``
command, and shows the results beside their parents; on the map they are placed into the current projection
by the projection engine (they are samples of the store) and linked to their parents (`marks`).
"""

from __future__ import annotations

import math
import shlex
import threading
import time

import pandas as pd
import streamlit as st

from app import data, state, views
from pipeline.features import split_point_id

SET_MAX = 20  # samples a class contributes to a steering set (the set is recomputed by running them again)
ALPHAS = "0, 0.5, 1, 2"
FRAMES = 8
THUMBS_PER_ROW = 4
PLACE_WAIT_S = 60.0  # an edit's job waits this long for the map to place its results (then the page shows it)


# ---------------------------------------------------------------------------------------------- helpers


def sample_of(point: str) -> str:
    """The sample id of a map point (an all-steps map's points are ``<sample_id>@<step>``)."""
    return split_point_id(point)[0]


def edit_run(run_id: str) -> str:
    """The run the results of an edit of `run_id`'s samples go to (`pipeline.edit`: ``edit-<parent run>``)."""
    return run_id if run_id.startswith("edit-") else f"edit-{run_id}"


def command(path: str, op: str, args: dict) -> str:
    """The ``python -m pipeline edit`` command line that does what the panel's `op` with `args` does."""
    q = shlex.quote
    parts = ["python", "-m", "pipeline", "edit", "--store", q(path), op]
    ids = lambda v: q(",".join(v))  # noqa: E731
    if op == "regenerate":
        parts += ["--sample", q(args["sample_id"])]
        if args.get("prompt") is not None:
            parts += ["--prompt", q(args["prompt"])]
        elif args.get("label") is not None:
            parts += ["--label", str(args["label"])]
        if args.get("seed") is not None:
            parts += ["--seed", str(args["seed"])]
    elif op == "interpolate":
        parts += ["--from", q(args["from_id"]), "--to", q(args["to_id"]), "--frames", str(args["frames"])]
    elif op == "patch":
        parts += ["--sample", q(args["sample_id"]), "--layer", q(args["layer"]), "--set", ids(args["set_ids"])]
        if args.get("steps") is not None:
            parts += ["--steps", ",".join(map(str, args["steps"]))]
    elif op == "steer":
        parts += ["--sample", q(args["sample_id"]), "--layer", q(args["layer"]), "--from-set", ids(args["from_ids"]),
                  "--to-set", ids(args["to_ids"]), "--alpha", ",".join(f"{a:g}" for a in args["alphas"])]
        if args.get("steps") is not None:
            parts += ["--steps", ",".join(map(str, args["steps"]))]
    return " ".join(parts)


def parse_alphas(text: str) -> list[float]:
    """'0, 0.5, 1, 2' -> [0.0, 0.5, 1.0, 2.0]; ValueError with a message for anything else."""
    items = [t for t in text.replace(";", ",").replace(" ", ",").split(",") if t]
    if not items:
        raise ValueError("give at least one α, e.g. 0, 0.5, 1, 2")
    out = []
    for t in items:
        try:
            value = float(t)
        except ValueError:
            raise ValueError(f"α values are numbers separated by commas: {t!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"α must be a finite number, got {t!r}")
        out.append(value)
    return out


def _editable(samples: pd.DataFrame, ids: list[str], kinds: dict[str, str] | None = None) -> tuple[list[str], int]:
    """`ids` without what an edit cannot take as parent or set member: edit results (their seed and label cannot
    reproduce them; a regenerated sample can) and encoded images (real or encoded runs; `kinds`: run id -> kind); and
    how many went."""
    from pipeline.edit import refusal

    meta = samples.set_index("sample_id")
    ops = meta["edit_op"] if "edit_op" in meta else pd.Series(None, index=meta.index, dtype=object)
    kinds = kinds or {}
    kept = [s for s in ids if s in meta.index
            and refusal(s, run := meta.at[s, "run_id"], kinds.get(run), None if pd.isna(ops[s]) else ops[s]) is None]
    return kept, len(ids) - len(kept)


def _class_options(samples: pd.DataFrame) -> dict[int, str]:
    """Class id -> label of the model's classes (ImageNet: all 1000; others: those in the store)."""
    known = samples.dropna(subset=["class_id"]).drop_duplicates("class_id").sort_values("class_id")
    options = {int(c): str(lab) for c, lab in zip(known["class_id"], known["label"], strict=True)}
    if len(samples) and samples["model"].iloc[0] == "imagenet":
        from pipeline import imagenet_classes

        options = {i: imagenet_classes.class_label(i) for i in range(1000)}
    return options


# ------------------------------------------------------------------------------------------------ panel


def panel(path: str, view: views.View, settings, sel: state.Selection, neighbours, point: str) -> None:
    """The what-if part of the selection panel, for the selected point `point`."""
    sample = sample_of(point)
    source = data.edit_source(path, view.model, sample)
    with st.container(border=True, key="edit_panel"):
        st.markdown("#### What if")
        _provenance(path, view, sample)
        if not source.ok:
            st.warning(f"Edits are not available for this sample: {source.why_not}.", icon=":material/block:")
            if source.run_id and not str(source.why_not).startswith(sample):
                _show_command(path, "regenerate", {"sample_id": sample})
            _results(path, view, settings)  # the session's newest edit stays in view (a result selected)
            return
        if not _generator(path, source):
            return
        samples = data.model_samples(path, view.model)
        regenerate, interpolate, neighbours_tab, steer = st.tabs(
            ["Regenerate", "Interpolate", "From neighbours", "Steer"], key="edit_tab", on_change="rerun")
        with regenerate:
            _regenerate(path, source, samples)
        with interpolate:
            _interpolate(path, source, samples)
        with neighbours_tab:
            _from_neighbours(path, source, samples, settings, neighbours)
        with steer:
            _steer(path, source, samples, settings)
        _results(path, view, settings)


def _provenance(path: str, view: views.View, sample: str) -> None:
    """What edit made the selected sample, with its parents one click away."""
    samples = data.model_samples(path, view.model)
    if "edit_op" not in samples:
        return
    row = samples.loc[samples["sample_id"] == sample]
    if not len(row) or not isinstance(row["edit_op"].iloc[0], str):
        return
    r = row.iloc[0]
    bits = [f"**{r['edit_op']}**"]
    if isinstance(r.get("edit_layer"), str):
        bits.append(f"at `{r['edit_layer']}`")
    if pd.notna(r.get("edit_frame")):
        bits.append(f"frame {int(r['edit_frame'])}")
    if pd.notna(r.get("edit_alpha")):
        bits.append(f"α = {float(r['edit_alpha']):g}")
    if isinstance(r.get("edit_change"), str):
        bits.append(f"({r['edit_change']})")
    st.caption("This sample is the result of an edit: " + " ".join(bits))
    parents = [p for p in str(r["edit_parents"]).split(",") if p]
    cols = st.columns(max(1, len(parents)))
    for c, parent in zip(cols, parents, strict=False):
        target = view.locate(parent)
        c.button(f"Parent {parent}", key=f"edit_parent_{parent}", icon=":material/my_location:", type="tertiary",
                 on_click=state.select, args=(target,), disabled=target is None,
                 help="Select this parent" if target else "Not in this view")


def _generator(path: str, source: data.EditSource) -> bool:
    """Where the run's generator loads from and whether it is loaded; False when it cannot be (the why and
    the command shown)."""
    where = "the shipped demo weights" if source.shipped else f"`{source.checkpoint}`"
    job = data.generator_job(path, source.sample_id, source.run_id, start=source.shipped)
    if job is not None and job.error:
        st.error(f"The generator of run `{source.run_id}` cannot be loaded from {where}: {job.error}",
                 icon=":material/error:")
        st.caption("Run the edit where the checkpoint and a device are available, for example:")
        _show_command(path, "regenerate", {"sample_id": source.sample_id})
        st.button("Try again", key="edit_reload", icon=":material/refresh:", on_click=data.generator_job,
                  args=(path, source.sample_id, source.run_id), kwargs={"retry": True})
        return False
    if job is None:
        st.caption(f"Generator of run `{source.run_id}`: {source.model} from {where}, not loaded yet (the first "
                   "edit loads it; a real checkpoint can take a while).")
        st.button("Load it now", key="edit_load", icon=":material/download:",
                  on_click=data.generator_job, args=(path, source.sample_id, source.run_id))
    elif job.running:
        _loading(job.key, f"Generator of run `{source.run_id}`: loading {source.model} from {where}…")
    else:
        device = (job.result or {}).get("device") or "?"
        st.caption(f"Generator of run `{source.run_id}`: {source.model} from {where}, on {device}. Results are "
                   f"samples of run `{edit_run(source.run_id)}`.")
    return True


@st.fragment(run_every=0.5)
def _loading(job_key: tuple, text: str) -> None:
    """The generator loading, with its time; the page runs again once it has loaded (or failed)."""
    job = data.jobs().find(job_key)
    if job is None or not job.running:
        st.rerun(scope="app")
    st.caption(f"{text} ({job.message}, {time.time() - job.started:.0f} s)")


def _show_command(path: str, op: str, args: dict) -> None:
    st.code(command(path, op, args), language="bash", wrap_lines=True)


def _start(path: str, op: str, args: dict, title: str, parents: list[str], run_id: str) -> None:
    """A button's callback: start the edit (waits briefly: small edits end within this run). The generator's
    load runs as its own job too (the panel shows its progress; the edit waits for the same load)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    holder = ctx.session_id if ctx is not None else "local"
    request = st.session_state.get(state.PROJECTION_REQUEST)
    place = None
    if request is not None:  # place the results into the map at once, in the edit's job: no wait for a rerun
        settings, wanted, refit = request

        def place():  # beside it, the samples the view of the placed map joins are read into the cache
            warm = threading.Thread(target=data.warm_model, args=(path, settings.model, settings.layer),
                                    daemon=True, name="edit-warm")
            warm.start()
            job = data.request_projection(path, settings, wanted, refit, holder=holder)
            if job.thread is not None:
                job.thread.join(PLACE_WAIT_S)
            warm.join(PLACE_WAIT_S)

    st.session_state[state.EDIT_ERROR] = None
    data.generator_job(path, parents[0], run_id)
    job = data.run_edit(path, op, args, holder=holder, then=place)
    st.session_state[state.EDIT_JOB] = {"key": job.key, "op": op, "title": title, "parents": parents,
                                        "run": edit_run(run_id), "command": command(path, op, args)}


def _button(path: str, source: data.EditSource, op: str, args: dict | None, label: str, title: str,
            parents: list[str], key: str, why_not: str | None = None) -> None:
    busy = st.session_state.get(state.EDIT_JOB) is not None
    st.button(label, key=key, type="primary", width="stretch", icon=":material/auto_fix_high:",
              disabled=args is None or why_not is not None or busy,
              help=why_not or ("Another edit is running" if busy else None),
              on_click=_start, args=(path, op, args or {}, title, parents, source.run_id))
    if why_not:
        st.caption(why_not)
    if args is not None:
        _show_command(path, op, args)


# ---------------------------------------------------------------------------------------------- the tabs


def _regenerate(path, source: data.EditSource, samples) -> None:
    row = samples.loc[samples["sample_id"] == source.sample_id].iloc[0]
    text = st.text_input("Seed", value=str(int(row["seed"])), key=f"edit_seed_{source.sample_id}",
                         help="The noise seed (a whole number, 0 or more); the sample's own gives its noise again.")
    seed, why = _seed(text)
    if source.conditioning == "prompt":
        prompt = st.text_input("Prompt", value=row["prompt"] if isinstance(row["prompt"], str) else "",
                               key=f"edit_prompt_{source.sample_id}")
        args = {"sample_id": source.sample_id, "prompt": prompt, "seed": seed}
        title = f"“{prompt}”, seed {seed}"
        why = why or (None if prompt.strip() else "Give a prompt.")
    else:
        options = _class_options(samples) or {0: "0"}
        current = int(row["class_id"]) if pd.notna(row["class_id"]) else next(iter(options))
        label = st.selectbox("Class", list(options), index=list(options).index(current) if current in options
                             else 0, format_func=lambda c: options.get(c, str(c)),
                             key=f"edit_class_{source.sample_id}")
        args = {"sample_id": source.sample_id, "label": int(label), "seed": seed}
        title = f"{options.get(int(label), label)}, seed {seed}"
    _button(path, source, "regenerate", None if why else args, "Regenerate", f"Regenerated as {title}",
            [source.sample_id],
            "edit_go_regenerate", why)


def _seed(text: str) -> tuple[int | None, str | None]:
    try:
        seed = int(text.strip())
    except ValueError:
        return None, f"The seed is a whole number, 0 or more: {text.strip()!r} is not."
    return (seed, None) if seed >= 0 else (None, f"The seed is a whole number, 0 or more, not {seed}.")


def _interpolate(path, source: data.EditSource, samples) -> None:
    end = st.session_state.get(state.EDIT_END)
    end = sample_of(end) if end else None
    picking = bool(st.session_state.get(state.EDIT_PICK))
    if picking:
        st.info("Click a point on the map: it becomes the end point.", icon=":material/ads_click:")
        st.button("Stop picking", key="edit_pick_stop", on_click=state.pick_edit_end, args=(False,),
                  width="stretch")
    else:
        if end:
            r = samples.loc[samples["sample_id"] == end]
            label = r["label"].iloc[0] if len(r) else end
            st.markdown(f"From this sample to **{label}**  \n:gray[{end}]")
        else:
            st.markdown("From this sample to an end point picked on the map.")
        st.button("Pick the end point" if not end else "Pick another end point", key="edit_pick",
                  icon=":material/ads_click:", on_click=state.pick_edit_end, width="stretch",
                  help="Then click a point on the map (until then a click there does not change the neighbours).")
    frames = st.slider("Frames (both ends included)", 2, 16, FRAMES, key="edit_frames")
    why = None
    if not end:
        why = "Pick the end point on the map first."
    elif end == source.sample_id:
        why = "The end point is the selected sample: pick another."
    else:
        r = samples.loc[samples["sample_id"] == end]
        if not len(r):
            why = f"{end} is not a sample of {source.model}."
        elif str(r["run_id"].iloc[0]) != source.run_id:
            why = (f"Interpolation needs two samples of one run: the end point is in run `{r['run_id'].iloc[0]}`, "
                   f"the selected sample in `{source.run_id}`.")
        elif _editable(samples, [end], data.run_kinds(path))[1]:
            why = f"{end} is an edit result or a real image: pick a generated sample."
    args = None if why else {"from_id": source.sample_id, "to_id": end, "frames": int(frames)}
    _button(path, source, "interpolate", args, "Interpolate", f"Interpolation in {frames} frames to {end}",
            [source.sample_id, end] if end else [source.sample_id], "edit_go_interpolate", why)


def _steps_choice(source: data.EditSource, key: str) -> list[int] | None:
    if source.num_steps <= 1:
        return None
    chosen = st.multiselect("At steps", list(range(source.num_steps)), key=key, placeholder="all steps",
                            help="The sampling steps whose activation is changed (empty: every step).")
    return sorted(int(s) for s in chosen) or None


def _from_neighbours(path, source: data.EditSource, samples, settings, nb) -> None:
    members = list(dict.fromkeys(sample_of(s) for s in [*(nb.knn if nb else []), *(nb.manual if nb else [])]))
    members, dropped = _editable(samples, members, data.run_kinds(path))
    n_knn, n_manual = (len(nb.knn), len(nb.manual)) if nb else (0, 0)
    st.markdown(f"The set: the **{n_knn} nearest + {n_manual} manual** neighbours above"
                + (f" ({dropped} edit result{'s' if dropped != 1 else ''} or real image{'s' if dropped != 1 else ''} "
                   "left out)" if dropped else "")
                + f". Layer **{settings.layer}** (the map's) is replaced by their mean, then the rest of the "
                "network runs on, from this sample's noise and condition.")
    steps = _steps_choice(source, "edit_patch_steps")
    why = None if members else "No neighbours: press Find neighbours, or click points to add some."
    args = None if why else {"sample_id": source.sample_id, "layer": settings.layer, "set_ids": members,
                             "steps": steps}
    _button(path, source, "patch", args, "Generate from these neighbours",
            f"Generated from {len(members)} neighbours at {settings.layer}", [source.sample_id],
            "edit_go_patch", why)


def _steer(path, source: data.EditSource, samples, settings) -> None:
    run = samples[(samples["run_id"] == source.run_id)]
    if "edit_op" in run:
        run = run[run["edit_op"].isna()]
    row = samples.loc[samples["sample_id"] == source.sample_id].iloc[0]
    if source.conditioning == "prompt":  # sets by prompt category
        column, group = "category", "a category"
        options = {c: str(c) for c in sorted(run["category"].dropna().unique())}
        own = row["category"] if pd.notna(row["category"]) else next(iter(options), None)
    else:
        column, group = "class_id", "a class"
        options = _class_options(run)
        own = int(row["class_id"]) if pd.notna(row["class_id"]) else next(iter(options), None)
    lasso = [sample_of(s) for s in st.session_state.get(state.LASSO) or []]
    kept = state.edit_sets()
    sets, names = {}, {}
    cols = st.columns(2, gap="small")
    for col, name, what in zip(cols, "AB", ("from", "towards"), strict=True):
        with col:
            kinds = ["class", "lasso"] if options else ["lasso"]
            kind = st.radio(f"Set {name} ({what})", kinds, horizontal=True, key=f"edit_kind_{name}",
                            format_func={"class": group, "lasso": "a lasso set"}.get)
            if kind == "class":
                default = own if name == "A" else next((c for c in options if c != own), own)
                cid = st.selectbox(f"Set {name}", list(options), index=list(options).index(default)
                                   if default in options else 0, format_func=options.get,
                                   key=f"edit_class_{name}_{source.sample_id}", label_visibility="collapsed")
                ids = run.loc[run[column] == cid, "sample_id"].head(SET_MAX).tolist()
                sets[name], names[name] = ids, options[cid]
                st.caption(f"{len(ids)} samples of {options[cid]} in run {source.run_id}")
            else:
                st.button(f"Use the lasso selection ({len(lasso)})", key=f"edit_take_{name}", disabled=not lasso,
                          on_click=state.keep_edit_set, args=(name, lasso), width="stretch",
                          help="Draw a lasso or box on the map (toolbar), then keep it here.")
                ids, dropped = _editable(samples, kept.get(name, []), data.run_kinds(path))
                sets[name], names[name] = ids, f"lasso set {name}"
                st.caption(f"{len(ids)} samples kept" + (f" ({dropped} edit results or real images left out)"
                                                         if dropped else "")
                           if name in kept else "none kept yet")
    alphas_text = st.text_input("α values", ALPHAS, key="edit_alphas",
                                help="α = 0 is the sample itself; 1 adds mean(B) − mean(A) once.")
    steps = _steps_choice(source, "edit_steer_steps")
    why = None
    try:
        alphas = parse_alphas(alphas_text)
    except ValueError as exc:
        why, alphas = str(exc), []
    if not why and (not sets.get("A") or not sets.get("B")):
        why = "Both sets need samples."
    st.caption(f"Adds α·(mean(B) − mean(A)) to **{settings.layer}** (the map's layer) at "
               f"{'every step' if steps is None else 'steps ' + ', '.join(map(str, steps))}.")
    args = None if why else {"sample_id": source.sample_id, "layer": settings.layer, "from_ids": sets["A"],
                             "to_ids": sets["B"], "alphas": alphas, "steps": steps}
    _button(path, source, "steer", args, "Steer", f"Steered from {names.get('A')} towards {names.get('B')} at "
            f"{settings.layer}", [source.sample_id], "edit_go_steer", why)


# -------------------------------------------------------------------------------------------- results


def settle() -> dict | None:
    """Take in the edit this session waits for once it has ended: its results become the session's newest edit
    (returned: ``{key, op, title, parents, run, ids, seconds}``, `run` the run they went to) or its error is
    kept for the panel (None returned, as while it runs or when there is none). Called first thing in a run."""
    waiting = st.session_state.get(state.EDIT_JOB)
    if waiting is None:
        return None
    job = data.jobs().find(waiting["key"])
    if job is not None and job.running:
        return None
    st.session_state[state.EDIT_JOB] = None
    if job is None:
        return None
    if job.error:
        st.session_state[state.EDIT_ERROR] = {"error": job.error, "command": waiting["command"]}
        return None
    record = {"key": job.key, "op": waiting["op"], "title": waiting["title"], "parents": waiting["parents"],
              "run": waiting.get("run"), "ids": list(job.result or []),
              "seconds": (job.finished or time.time()) - job.started}
    state.add_edit_result(record)
    return record


def _results(path: str, view: views.View, settings) -> None:
    waiting = st.session_state.get(state.EDIT_JOB)
    if waiting is not None:
        _progress(waiting["key"])
        return
    failed = st.session_state.get(state.EDIT_ERROR)
    if failed:
        st.error(f"The edit failed: {failed['error']}", icon=":material/error:")
        st.caption("The same edit from the command line:")
        st.code(failed["command"], language="bash", wrap_lines=True)
        return
    records = state.edit_results()
    if records:
        _result_grid(path, view, settings, records[-1])


@st.fragment(run_every=0.3)
def _progress(job_key: tuple) -> None:
    """The running edit: its stage and time; the page runs again when it ends. An edit cannot be stopped halfway
    (its results are written as one batch); "Stop waiting" frees the panel, the edit ends in the background."""
    job = data.jobs().find(job_key)
    if job is None or not job.running or st.session_state.get(state.EDIT_JOB) is None:
        st.rerun(scope="app")
    bar, stop = st.columns([5, 2], vertical_alignment="bottom")
    bar.progress(job.progress, text=f"{job.message} · {time.time() - job.started:.1f} s")
    stop.button("Stop waiting", key="edit_stop_waiting", on_click=_stop_waiting, width="stretch",
                help="The edit goes on in the background (its results are written as one batch) and shows on "
                     "the map when done; the panel is free for another one.")


def _stop_waiting() -> None:
    st.session_state[state.EDIT_JOB] = None


def _result_grid(path: str, view: views.View, settings, record: dict) -> None:
    """The newest edit of this session: its parents, then its results (a click selects one on the map)."""
    ids = record["ids"]
    st.markdown(f"**Results** · {record['title']}  \n:gray[{len(ids)} sample{'s' if len(ids) != 1 else ''}, "
                f"{record.get('seconds', 0):.1f} s]")
    samples = data.model_samples(path, view.model).set_index("sample_id")
    present = [s for s in ids if s in samples.index]
    if len(present) < len(ids):
        st.caption("Some results are not in the store any more.")
    runs = {str(samples.loc[s, "run_id"]) for s in present}
    hidden = sorted(r for r in runs if settings.runs and r not in settings.runs)
    if hidden:
        c1, c2 = st.columns([3, 2], vertical_alignment="center")
        c1.caption(f"The results are in run {', '.join(hidden)}, which the Runs filter hides from the map.")
        c2.button("Show that run", key="edit_show_run", on_click=_show_runs, args=(hidden,))
    parents = record.get("parents") or []
    labels = _result_labels(samples, present, record["op"])
    urls = data.thumb_urls(path, [*parents, *present])
    p_urls, r_urls = urls[:len(parents)], urls[len(parents):]
    with st.container(key="edit_results"):
        cols = st.columns(THUMBS_PER_ROW, gap="small")
        names = ["from", "to"] if record["op"] == "interpolate" else ["parent"]
        for c, parent, url, name in zip(cols, parents, p_urls, names, strict=False):
            with c:
                st.image(url, width=56)
                _select_button(view, parent, "edit_sel_parent_", name)
        for lo in range(0, len(present), THUMBS_PER_ROW):
            cols = st.columns(THUMBS_PER_ROW, gap="small")
            for c, sid, url, label in zip(cols, present[lo:lo + THUMBS_PER_ROW], r_urls[lo:lo + THUMBS_PER_ROW],
                                          labels[lo:lo + THUMBS_PER_ROW], strict=False):
                with c:
                    st.image(url, width=56)
                    _select_button(view, sid, "edit_sel_", label)


def _result_labels(samples: pd.DataFrame, ids: list[str], op: str) -> list[str]:
    out = []
    for s in ids:
        r = samples.loc[s]
        if op == "interpolate" and pd.notna(r.get("edit_frame")):
            out.append(f"#{int(r['edit_frame'])}")
        elif op == "steer" and pd.notna(r.get("edit_alpha")):
            out.append(f"α {float(r['edit_alpha']):g}")
        else:
            out.append(str(r["label"]).split(":")[0] if pd.notna(r["label"]) else s)
    return out


def _select_button(view: views.View, sample: str, prefix: str, label: str = "select") -> None:
    target = view.locate(sample)
    st.button(label, key=f"{prefix}{sample}", type="tertiary", on_click=state.select, args=(target,),
              disabled=target is None, help=f"Select {sample} on the map" if target else "Not on this map (yet)")


def _show_runs(runs: list[str]) -> None:
    st.session_state["w_runs"] = list(dict.fromkeys([*st.session_state.get("w_runs", []), *runs]))


# ------------------------------------------------------------------------------------------------- map


def marks(view: views.View, selected: str | None) -> tuple[list[dict], list[str]]:
    """What the map draws for edits: the links of the session's newest edit and of the selected result's own
    edit to their parents, and the result points (ids of this view)."""
    points: list[str] = []
    records = state.edit_results()
    if records:
        points += [p for p in (view.locate(s) for s in records[-1]["ids"]) if p]
    points += data.edit_family(view, selected)
    points = list(dict.fromkeys(points))
    return data.edit_links(view, points), points
