"""What the Compare runs page reads and remembers: its URL state, the background jobs of its joint map
(`pipeline.project.Projector.project_runs`) and of its metrics (`pipeline.distribution.compare_runs`), the map's
view files, colours and link lines, and the downloads. What is computed is `pipeline`'s (steps per run, linked
samples, default runs and the checkpoint plan in `pipeline.run_pairs`); nothing here draws.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import streamlit as st

from app import data, job_progress, static_files, url, views
from pipeline import run_pairs

SEP = url.SEP  # list separator in the URL
URL_LOADED = "cr.url_loaded"
URL = "cr.url"  # the page's URL values, read once per session
CLASS = "cr.class"  # the class the map is filtered to (None: every class)
CANCELLED = "cr.cancelled"  # job keys this session cancelled: not started again until asked
METHODS = ("umap", "pca", "tsne")
K_RANGE = (1, 50)
ALL = "all"  # the step choice "each run's last step" is run_pairs.LAST; ALL: every class on the map


@dataclass(frozen=True)
class Settings:
    """The page's choices (its URL round-trips them)."""

    model: str | None = None
    layer: str | None = None
    runs: tuple[str, ...] = ()  # empty: the default runs (`run_pairs.default_runs`)
    step: str = run_pairs.LAST  # "last" or a step number (as text)
    method: str = "umap"
    links: bool = True
    k: int = 5
    over_training: bool = True  # one checkpoint at a time when two or more checkpoint runs are selected
    checkpoint: str | None = None  # the checkpoint run the slider is on


_URL_NAMES = {"model": "crm", "layer": "crl", "runs": "crr", "step": "crs", "method": "crmeth", "links": "crlk",
              "k": "crk", "over_training": "crot", "checkpoint": "crck"}


# ------------------------------------------------------------------------------------------------- URL

def parse_params(q: dict) -> tuple[Settings, str | None]:
    """The page's values of a URL (user input: unknown choices fall back to the defaults) and its class."""
    d = Settings()
    values: dict = {}
    for name, param in _URL_NAMES.items():
        raw = q.get(param)
        if raw in (None, ""):
            continue
        raw = str(raw)
        if name == "runs":
            values[name] = tuple(r for r in raw.split(SEP) if r)
        elif name in ("links", "over_training"):
            values[name] = raw not in ("0", "false", "no")
        elif name == "k":
            k = url.parse_int(q, param)
            if k is not None:
                values[name] = min(max(k, K_RANGE[0]), K_RANGE[1])
        elif name == "method":
            values[name] = raw if raw in METHODS else d.method
        elif name == "step":
            values[name] = raw if raw == run_pairs.LAST or raw.isdigit() else d.step
        else:
            values[name] = raw
    return Settings(**values), (str(q["crc"]) if q.get("crc") else None)


def load_url_once() -> Settings:
    """The page's URL values, read on its first run in this session (the class goes into the session)."""
    q = url.read_once(URL_LOADED)
    if q is not None:
        settings, cls = parse_params(q)
        st.session_state[URL] = settings
        st.session_state[CLASS] = cls
    return st.session_state.get(URL) or Settings()


def to_params(s: Settings) -> dict[str, str]:
    from app import state

    d, out = Settings(), {}
    for name, param in _URL_NAMES.items():
        value = getattr(s, name)
        if value == getattr(d, name) or value is None:
            continue
        if name == "runs":
            out[param] = SEP.join(value)
        elif isinstance(value, bool):
            out[param] = "1" if value else "0"
        else:
            out[param] = str(value)
    if get_class():
        out["crc"] = get_class()
    return state.with_store(out)


def sync_url(s: Settings) -> None:
    url.sync(to_params(s))


def get_class() -> str | None:
    return st.session_state.get(CLASS)


def set_class(value: str | None) -> None:
    st.session_state[CLASS] = value if value not in (None, "", ALL) else None


# ----------------------------------------------------------------------------------------- store reads

@st.cache_data(show_spinner=False, max_entries=32)
def _run_steps(resolved: str, model: str, layer: str, version: str) -> pd.DataFrame:
    return run_pairs.run_steps(data.open_store(resolved), model, layer)


def run_steps(path: str, model: str, layer: str) -> pd.DataFrame:
    """Every run's recorded steps on `layer` (step, sigma, timestep), read once per data version."""
    return _run_steps(data.resolve(path), model, layer, data.version(path, model, layer))


def runs_info(path: str, model: str) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """(`Store.runs()`, `Store.run_kinds()`, `Store.checkpoint_runs(model)`), read once per store version."""
    return _runs_of(data.resolve(path), model, data.store_version(path))


@st.cache_data(show_spinner=False, max_entries=16)
def _runs_of(resolved: str, model: str, version: str):
    store = data.open_store(resolved)
    return store.runs(), store.run_kinds(), store.checkpoint_runs(model)


def run_table(path: str, model: str, layer: str, runs: list[str], steps: dict[str, int]) -> pd.DataFrame:
    """One row per run shown: its kind, samples, the step it is measured at with that step's sigma (and
    timestep), and its checkpoint's training step."""
    table = run_steps(path, model, layer)
    manifests, kinds, _ = runs_info(path, model)
    done = dict(zip(manifests["run_id"].astype(str), manifests["num_done"], strict=True))
    ckpt = dict(zip(manifests["run_id"].astype(str), manifests["checkpoint_step"], strict=True))
    rows = []
    for r in runs:
        at = table[(table["run_id"] == r) & (table["step"] == steps.get(r, -1))]
        rows.append({"run": r, "kind": kinds.get(r, "generated"), "samples": done.get(r),
                     "steps recorded": int((table["run_id"] == r).sum()), "measured at step": steps.get(r),
                     "σ": float(at["sigma"].iloc[0]) if len(at) else np.nan,
                     "timestep": float(at["timestep"].iloc[0]) if len(at) else np.nan,
                     "checkpoint step": ckpt.get(r)})
    out = pd.DataFrame(rows)
    if out["timestep"].isna().all():
        out = out.drop(columns="timestep")
    if out["checkpoint step"].isna().all():
        out = out.drop(columns="checkpoint step")
    return out


# ----------------------------------------------------------------------------------------------- jobs

CANCELS = job_progress.Cancels(CANCELLED)  # this page's cancelled jobs (its Cancel and "after all" buttons)


def _engine():
    """The projection engine; one without per-run maps (the tests' instant stand-in) leaves them to the real
    one."""
    engine = data.projector()
    if hasattr(engine, "project_runs"):
        return engine
    from pipeline.project import default_projector

    return default_projector()


def map_params(s: Settings) -> dict:
    """The map's projection parameters: Explore's (feature, metric, the method's own) with this page's method."""
    from app import state

    return data.projection_params(replace(state.get_view(), method=s.method))


def map_key(path: str, s: Settings, runs: list[str], steps: dict[str, int]) -> tuple:
    params = map_params(s)
    return ("compare-runs-map", data.resolve(path), data.version(path, s.model, s.layer, runs), s.model, s.layer,
            tuple(sorted(steps.items())), tuple(sorted(params.items())))


def map_job(path: str, s: Settings, runs: list[str], steps: dict[str, int], holder: str | None = None) -> data.Job:
    """The joint map of `runs`, each at its step in `steps` (result: a `pipeline.project.Projection`)."""
    params = map_params(s)

    def work(job: data.Job):
        return _engine().project_runs(data.open_store(path), s.model, s.layer, dict(steps), params,
                                      progress=job.report, cancel=job.cancel)

    return CANCELS.start(map_key(path, s, runs, steps), work, holder)


def metrics_key(path: str, s: Settings, runs: list[str]) -> tuple:
    return ("compare-runs-metrics", data.resolve(path), data.version(path, s.model, s.layer, runs), s.model,
            s.layer, tuple(runs), s.step, s.k)


def metrics_job(path: str, s: Settings, runs: list[str], holder: str | None = None) -> data.Job:
    """`compare_runs` of `runs` (the first the reference), per class, at the page's step (result: its table)."""
    from pipeline import distribution

    step = s.step if s.step == run_pairs.LAST else int(s.step)

    def work(job: data.Job):
        return distribution.compare_runs(data.open_store(path), s.model, s.layer, runs, step=step, k=s.k,
                                         per_class=True, progress=data.reporter(job))

    return CANCELS.start(metrics_key(path, s, runs), work, holder)


def training_job(path: str, s: Settings, plan: run_pairs.CheckpointPlan, holder: str | None = None) -> data.Job:
    """Every checkpoint's overall metrics against the reference (`run_pairs.over_training`), in training order."""
    runs = [*plan.fixed, *plan.sequence]
    step = s.step if s.step == run_pairs.LAST else int(s.step)
    key = ("compare-runs-training", data.resolve(path), data.version(path, s.model, s.layer, runs), s.model,
           s.layer, plan.fixed, plan.sequence, s.step, s.k)

    def work(job: data.Job):
        return run_pairs.over_training(data.open_store(path), s.model, s.layer, plan, step=step, k=s.k,
                                       progress=data.reporter(job))

    return CANCELS.start(key, work, holder)


JOB_TITLES = {"compare-runs-map": "The joint map", "compare-runs-metrics": "The metrics",
              "compare-runs-training": "The metrics over training"}


# --------------------------------------------------------------------------------------------- the map

def _digest(values) -> str:
    return hashlib.sha1("\n".join(map(str, values)).encode()).hexdigest()[:12]


@st.cache_resource(show_spinner=False, max_entries=24)
def _view(key: tuple, _job: data.Job, _path: str, model: str, layer: str, step_info: tuple) -> views.View:
    proj = _job.result
    view = views.make_view(store_key=static_files.store_key(data.resolve(_path)), projection_key=str(proj.key),
                           model=model, layer=layer, step=proj.step, sample_ids=proj.sample_ids, xy=proj.xy,
                           samples=data.model_samples(_path, model), quality=dict(proj.quality or {}),
                           source=str(proj.source), step_info=dict(step_info), extra_key="compare-runs|" + str(key),
                           seconds=getattr(proj, "seconds", None))
    views.write_view_files(view)
    return view


def view_of(path: str, s: Settings, job: data.Job, steps: dict[str, int]) -> views.View:
    """The View of a finished map job (its files written once)."""
    info: tuple = ()
    shared = set(steps.values())
    if len(shared) == 1:
        step = shared.pop()
        table = run_steps(path, s.model, s.layer)
        sigmas = table.loc[table["run_id"].isin(list(steps)) & (table["step"] == step), "sigma"].dropna()
        agree = len(sigmas.round(6).unique()) == 1  # the hover card's sigma: where the runs agree on it
        info = (("step", int(step)),) + ((("sigma", float(sigmas.iloc[0])),) if agree else ())
    return _view(job.key, job, path, s.model, s.layer, info)


def class_view(path: str, view: views.View, cls: str | None) -> views.View:
    """The map's points of one class (the metrics' class column), or the whole map for None."""
    if cls is None:
        return view
    column = run_pairs.class_column(view.frame)
    keep = view.frame[column].astype(str).eq(str(cls)).to_numpy()
    return data.narrowed_view(path, view, np.flatnonzero(keep), "class")


def color_file(view: views.View, runs_all: list[str]) -> str:
    """The colour file of the map by run: each run's colour fixed by its place among all selected runs (a run
    keeps its colour when the checkpoint slider moves); the legend lists the runs on the map."""
    return _color_file(view.key, tuple(runs_all), view)


@st.cache_resource(show_spinner=False, max_entries=64)
def _color_file(view_key: str, runs_all: tuple, _view: views.View) -> str:
    colors = run_pairs.run_colors(runs_all)
    values = _view.frame["run_id"].astype(str)
    shown = tuple(r for r in runs_all if r in set(values))  # the legend names the runs on the map
    coloring = views.Coloring(f"runs-{_digest([*runs_all, '|', *shown])}", "run", "category", values, order=shown,
                              colors=tuple(colors[r] for r in shown))
    return views.write_color_file(_view, coloring)


@st.cache_data(show_spinner=False, max_entries=32)
def _groups(resolved: str, model: str, runs: tuple, version: str) -> list[list[str]]:
    _, kinds, _ = _runs_of(resolved, model, data.store_version(resolved))
    return run_pairs.link_groups(data.model_samples(resolved, model), list(runs), kinds)


def link_groups(path: str, model: str, runs: list[str]) -> list[list[str]]:
    """Samples of the runs that share seed and class (`run_pairs.link_groups`), once per data version."""
    return _groups(data.resolve(path), model, tuple(runs), data.version(path, model))


MAX_LINKS = 150  # more link lines than this hide the map: an even sample of them (a class shows all of its)


def links_for(view: views.View, groups: list[list[str]], limit: int = MAX_LINKS) -> tuple[list[dict], int]:
    """(the map component's links: thin dotted lines, its ``set`` style; how many groups have two or more
    points on this view). Beyond `limit` groups, an evenly spread `limit` of them are drawn."""
    shown = [ids for g in groups if len(ids := [i for i in g if i in view.position]) > 1]
    total = len(shown)
    if total > limit:
        shown = [shown[i] for i in np.linspace(0, total - 1, limit).round().astype(int)]
    return [{"kind": "set", "ids": ids, "labels": [""] * len(ids)} for ids in shown], total


# ------------------------------------------------------------------------------------------- downloads

def file_stem(s: Settings, runs: list[str], cls: str | None) -> str:
    safe = lambda t: "".join(c if c.isalnum() or c in "._-" else "_" for c in str(t))  # noqa: E731
    stem = f"compare-runs-{safe(s.model)}-{safe(s.layer)}-{len(runs)}runs"
    return stem + (f"-{safe(cls)}" if cls else "")


def metrics_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=False).encode()


def map_title(view: views.View, steps: dict[str, int], cls: str | None) -> tuple[str, str]:
    """(title, subtitle) of an exported map: model, layer, class and points; each run's step."""
    title = f"{view.model} · {view.layer} · {len(view):,} samples" + (f" · class {cls}" if cls else "")
    return title, " · ".join(f"{r} at step {s}" for r, s in steps.items())


def map_png(view: views.View, runs_all: list[str], steps: dict[str, int], cls: str | None) -> bytes:
    title, subtitle = map_title(view, steps, cls)
    runs = [r for r in runs_all if r in set(view.frame["run_id"].astype(str))]
    colors = run_pairs.run_colors(runs_all)
    return run_pairs.map_png(view.xy, view.frame, runs, title, subtitle, colors=colors)


def map_html(path: str, view: views.View, runs_all: list[str], steps: dict[str, int], cls: str | None,
             groups: list[list[str]]) -> bytes:
    from pipeline import figures

    title, subtitle = map_title(view, steps, cls)
    runs = [r for r in runs_all if r in set(view.frame["run_id"].astype(str))]
    fig = run_pairs.map_figure(view.xy, view.frame, runs, f"{title}<br><sup>{subtitle}</sup>", links=groups,
                               colors=run_pairs.run_colors(runs_all))
    thumbs = data.open_store(path).thumbs(view.sample_ids.tolist()) if len(view) <= figures.MAX_HTML_THUMBS \
        else None
    return figures.map_html(fig, thumbs)
