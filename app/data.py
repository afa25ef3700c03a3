"""What the pages read, cached with explicit small keys (store path + data version + parameters).

Nothing here computes: the store reads, the pipeline projects and finds neighbours. This module only
caches their answers per store version and shapes them for the pages. Cached objects are shared between
sessions and must not be mutated by callers.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import static_files, views
from pipeline.project import Cancelled
from store import Store
from store.lru import LRU

log = logging.getLogger(__name__)

BUILD_COMMANDS = """\
# the demo store (the shipped digits model, CPU, under a minute):
python -m pipeline demo --store {path}

# or generate from a checkpoint (see README, "Generating a store"):
python -m pipeline generate --help
"""


@functools.lru_cache(maxsize=256)
def resolve(path: str) -> str:
    return str(Path(path).expanduser().resolve())


VERSION_TTL_S = 2.0  # a batch committed by a running generation shows up within this delay


@st.cache_data(show_spinner=False, ttl=VERSION_TTL_S, max_entries=256)
def _version(resolved: str, model: str | None, layer: str | None, runs: tuple | None, scope: str | None) -> str:
    return _open_store(resolved).data_version(model, layer, list(runs) if runs is not None else None, scope=scope)


def version(path: str, model: str, layer: str | None = None, runs=None) -> str:
    """``Store.data_version`` of a model (or a layer), remembered for two seconds: a page run asks it several
    times, and each call lists and stats every part of the model."""
    return _version(resolve(path), model, layer, tuple(sorted(runs)) if runs else None, None)


def layer_versions(path: str, model: str, layers, runs) -> tuple:
    """The data version of each of `layers` (of `runs`; empty: every run), for the key of a job that reads them."""
    return tuple(version(path, model, layer, list(runs) or None) for layer in layers)


@st.cache_resource(show_spinner=False, max_entries=8)
def _open_store(resolved: str) -> Store:
    return Store(resolved)


def open_store(path: str) -> Store:
    """One shared `Store` per folder (it is thread-safe: one DuckDB cursor per query)."""
    return _open_store(resolve(path))


@dataclass(frozen=True)
class StoreStatus:
    path: str
    kind: str  # "missing", "not a folder", "empty" or "ok"
    models: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def store_status(path: str) -> StoreStatus:
    p = Path(path).expanduser()
    if not p.exists():
        return StoreStatus(path, "missing")
    if not p.is_dir():
        return StoreStatus(path, "not a folder")
    try:
        models = tuple(open_store(path).models())
    except Exception as exc:  # an unreadable folder is reported, never a traceback
        log.warning("cannot read store %s: %s", path, exc)
        return StoreStatus(path, "empty")
    return StoreStatus(path, "ok" if models else "empty", models)


def store_version(path: str) -> str:
    """Changes whenever a batch is committed or a manifest rewritten anywhere in the store."""
    return _version(resolve(path), None, None, None, "store")


@st.cache_data(show_spinner=False, max_entries=16)
def runs_frame(resolved: str, version: str) -> pd.DataFrame:
    return open_store(resolved).runs()


@st.cache_resource(show_spinner=False, max_entries=16)
def samples_frame(resolved: str, model: str, version: str) -> pd.DataFrame:
    """All samples of a model (no thumbnails), in store order. Shared: do not mutate."""
    return open_store(resolved).samples(model=model)


def model_samples(path: str, model: str) -> pd.DataFrame:
    return samples_frame(resolve(path), model, version(path, model))


@st.cache_data(show_spinner=False, max_entries=32)
def steps_frame(resolved: str, model: str, layer: str | None, version: str) -> pd.DataFrame:
    return open_store(resolved).steps(model, layer)


def model_steps(path: str, model: str, layer: str | None = None) -> pd.DataFrame:
    return steps_frame(resolve(path), model, layer, version(path, model, layer))


def shared_steps(path: str, model: str, layers) -> pd.DataFrame:
    """The steps (rows of `model_steps`) recorded in every one of `layers`."""
    steps = None
    for layer in layers:
        frame = model_steps(path, model, layer)
        steps = frame if steps is None else steps[steps["step"].isin(frame["step"])]
    return steps


@st.cache_data(show_spinner=False, max_entries=16)
def layers_of(resolved: str, model: str, version: str) -> list[str]:
    return open_store(resolved).layers(model)


def model_layers(path: str, model: str) -> list[str]:
    return layers_of(resolve(path), model, version(path, model))


@st.cache_data(show_spinner=False, max_entries=8)
def storage_frame(resolved: str, version: str, by: str) -> pd.DataFrame:
    return open_store(resolved).storage(by=by)


@st.cache_resource(show_spinner=False, max_entries=8)
def thumb_export(resolved: str) -> static_files.ThumbExport:
    """The thumbnail exporter of one store (one background thread at a time)."""
    store = open_store(resolved)
    return static_files.ThumbExport(static_files.store_key(resolved), store.thumbs)


def thumb_urls(path: str, sample_ids: list[str], *, for_image: bool = True) -> list[str]:
    """URLs of thumbnails, exported first (synchronously: call it for a handful of ids, not a map).

    ``for_image``: the ``/app/static/...`` form that ``st.image`` resolves against the server itself;
    else the URL with ``server.baseUrlPath`` for raw HTML.
    """
    resolved = resolve(path)
    thumb_export(resolved).ensure(sample_ids)
    skey = static_files.store_key(resolved)
    names = [static_files.thumb_name(s) + static_files.THUMB_EXT for s in sample_ids]
    if for_image:
        return [f"/app/static/thumbs/{skey}/{n}" for n in names]
    return [static_files.thumb_base_url(skey) + n for n in names]


def skipped(path: str) -> list[str]:
    """Corrupt parts the store skipped so far (each also logged as a warning)."""
    return list(open_store(path).skipped)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# ------------------------------------------------------------------------------------------ projections
# The projection engine (pipeline.project) is asked, never imitated. A fit runs in a worker thread so the
# page keeps answering: the page polls the job and shows its progress; a cached result finishes within the
# first short wait and shows at once.

_projector_override = None
JOB_WAIT_S = 0.4  # how long a page waits for a job before showing progress instead


def set_projector(projector) -> None:
    """Replace the projection engine (tests: a fast deterministic stand-in). None restores the real one."""
    global _projector_override
    _projector_override = projector


@st.cache_resource(show_spinner=False)
def _real_projector():
    from pipeline.project import Projector

    return Projector()


def projector():
    return _projector_override if _projector_override is not None else _real_projector()


def start_warmup(busy=None) -> bool:
    """Compile UMAP's numba code paths in the background once per server process (off the click path); not
    for a stand-in engine. `busy()` true holds back its longest part (see `start_warmup_thread`)."""
    return False if _projector_override is not None else _start_warmup(busy)


@st.cache_resource(show_spinner=False)
def _start_warmup(_busy=None) -> bool:
    try:
        from pipeline.project import start_warmup_thread
    except Exception as exc:  # the app still works, the first fit is just slower
        log.info("no projection warm-up: %s", exc)
        return False
    start_warmup_thread(_busy)
    return True


@dataclass
class Job:
    """One projection request running (or finished) in a worker thread. Sessions that wait for it are its
    ``holders``; when the last one lets go (a newer request, or Cancel), ``cancel`` is set and the work stops
    at its next stage or epoch."""

    key: tuple
    progress: float = 0.0
    message: str = "starting"
    result: object | None = None
    error: str | None = None
    started: float = 0.0
    finished: float | None = None
    thread: threading.Thread | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    holders: set = field(default_factory=set)

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def report(self, fraction: float | None = None, message: str | None = None) -> None:
        if fraction is not None:
            self.progress = max(0.0, min(1.0, float(fraction)))
        if message:
            self.message = str(message)


class _Jobs:
    KEEP = 32

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: LRU[tuple, Job] = LRU(self.KEEP, keep=lambda job: job.running)  # running jobs stay

    def get_or_start(self, key: tuple, work, holder: str | None = None) -> Job:
        """The job of `key`: the running or finished one, else a new one (also for a failed or cancelled
        one). `holder` (a session id) is recorded as waiting for it."""
        with self.lock:
            job = self.jobs.get(key)
            if job is None or job.error is not None or job.cancelled:
                job = self.jobs.put(key, Job(key=key, started=time.time()))
                fresh = True
            else:
                fresh = False
            if holder is not None:
                job.holders.add(holder)
            if not fresh:
                return job

        def run():
            try:
                job.result = work(job)
            except Cancelled:
                job.error = "cancelled"
            except Exception as exc:  # reported in the page with the parameters that failed
                log.warning("job %s failed: %s", key, exc, exc_info=True)
                job.error = f"{exc}" if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            finally:
                job.finished = time.time()

        job.thread = threading.Thread(target=run, daemon=True, name="projection")
        job.thread.start()
        return job

    def find(self, key: tuple) -> Job | None:
        return self.jobs.get(key)

    def release(self, key: tuple | None, holder: str) -> None:
        """`holder` no longer waits for the job of `key`: when nobody does, a running job is cancelled."""
        with self.lock:
            job = self.jobs.get(key) if key is not None else None
            if job is None:
                return
            job.holders.discard(holder)
            if job.running and not job.holders:
                job.cancel.set()


@st.cache_resource(show_spinner=False)
def jobs() -> _Jobs:
    return _Jobs()


def start_job(key: tuple, work, holder: str | None = None, wait_s: float | None = None) -> Job:
    """The job of `key`, started or found for `holder` (see `_Jobs.get_or_start`), after waiting up to
    `wait_s` (default `JOB_WAIT_S`) for it: a cached or quick result shows at once, a slow one as progress."""
    job = jobs().get_or_start(key, work, holder)
    if job.running and job.thread is not None:
        job.thread.join(JOB_WAIT_S if wait_s is None else wait_s)
    return job


def reporter(job: Job):
    """A `progress(fraction, message)` callback for `pipeline` work that reports into `job` and stops the work
    (raises `pipeline.project.Cancelled`) once the job is cancelled."""

    def report(fraction: float, message: str) -> None:
        if job.cancelled:
            raise Cancelled("cancelled")
        job.report(fraction, message)

    return report


def projection_params(settings) -> dict:
    """The projection parameters of a view, as the projection engine takes them: its method's own only."""
    from pipeline.methods import get_method

    own = {name: getattr(settings, name) for name in get_method(settings.method).PARAMS}
    return {"feature": settings.feature, "method": settings.method, **own, "metric": settings.metric}


def projection_job_key(path: str, settings, sample_ids: list[str] | None, refit: int) -> tuple:
    """The explicit key of a view's projection job (data version, view, parameters, filter, refit count)."""
    runs = list(settings.runs) or None
    data_version = version(path, settings.model, settings.layer, runs)
    ids = tuple(sample_ids) if sample_ids is not None else None
    filter_key = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12] if ids is not None else ""
    return (resolve(path), data_version, settings.model, settings.layer, settings.step, tuple(settings.runs),
            tuple(sorted(projection_params(settings).items())), filter_key, refit)


def request_projection(path: str, settings, sample_ids: list[str] | None, refit: int,
                       holder: str | None = None) -> Job:
    """Start (or find) the projection job of a view for the session `holder`; waits briefly so that a cached
    result shows at once."""
    store = open_store(path)
    runs = list(settings.runs) or None
    params = projection_params(settings)
    key = projection_job_key(path, settings, sample_ids, refit)
    ids = tuple(sample_ids) if sample_ids is not None else None

    def work(job: Job):
        return projector().project(store, settings.model, settings.layer, settings.step, params,
                                   run_ids=runs, sample_ids=list(ids) if ids is not None else None,
                                   progress=job.report, force=refit > 0, cancel=job.cancel)

    return start_job(key, work, holder)


@st.cache_resource(show_spinner=False, max_entries=24)
def _view(job_key: tuple, _job: Job, _path: str, model: str, layer: str, step: int | str) -> views.View:
    proj = _job.result
    samples = model_samples(_path, model)
    steps = model_steps(_path, model, layer)
    row = steps[steps["step"] == step] if step != views.ALL_STEPS else steps.iloc[:0]
    info = {"step": step if step == views.ALL_STEPS else int(step)}
    if len(row):
        info["sigma"] = None if pd.isna(row["sigma"].iloc[0]) else float(row["sigma"].iloc[0])
        info["timestep"] = None if pd.isna(row["timestep"].iloc[0]) else float(row["timestep"].iloc[0])
    view = views.make_view(store_key=static_files.store_key(resolve(_path)), projection_key=str(proj.key),
                           model=model, layer=layer, step=step, sample_ids=proj.sample_ids, xy=proj.xy,
                           samples=samples, quality=dict(proj.quality or {}), source=str(proj.source),
                           step_info=info, extra_key=str(job_key), feature=_feature_label(proj),
                           seconds=getattr(proj, "seconds", None), steps=steps,
                           features=getattr(proj, "features", None))
    views.write_view_files(view)
    return view


def _feature_label(proj) -> str:
    """The feature a projection used, with "auto" resolved (``full+pca50``); empty when unknown."""
    resolved = (getattr(proj, "meta", None) or {}).get("feature_resolved")
    if isinstance(resolved, dict) and resolved.get("kind"):
        label = resolved["kind"]
        if resolved.get("standardize"):
            label += "+std"
        if resolved.get("pca"):
            label += f"+pca{resolved['pca']}"
        return label
    params = getattr(proj, "params", None)
    return getattr(getattr(params, "feature", None), "id", "") or ""


def view_for(path: str, settings, job: Job) -> views.View:
    """The View of a finished projection job (built and written once per job)."""
    return _view(job.key, job, path, settings.model, settings.layer, settings.step)


@st.cache_data(show_spinner=False, ttl=10, max_entries=8)
def _stale_caches(resolved: str, version: str) -> tuple[int, int]:
    stale = [e for e in open_store(resolved).derived.scan() if e.stale]
    return len(stale), sum(e.bytes for e in stale)


def stale_caches(path: str) -> tuple[int, int]:
    """(files, bytes) of the caches that data changed since has made stale (see `store.derived`)."""
    return _stale_caches(resolve(path), store_version(path))


def prune_caches(path: str) -> int:
    """Remove the stale caches; returns how many files went."""
    removed = open_store(path).derived.prune()
    _stale_caches.clear()
    storage_frame.clear()
    return len(removed)


@st.cache_data(show_spinner=False, max_entries=64)
def _image(resolved: str, sample_id: str, version: str) -> bytes | None:
    return open_store(resolved).image(sample_id)


def image(path: str, model: str, sample_id: str) -> bytes | None:
    """The sample's full-size PNG (None when missing), read once per store version: a click reruns the page."""
    return _image(resolve(path), sample_id, version(path, model))


@st.cache_data(show_spinner=False, max_entries=32)
def _has_text_embeddings(resolved: str, model: str, version: str) -> bool:
    frame, matrix = open_store(resolved).text_embeddings(model)
    return len(frame) > 0 and matrix.size > 0


def has_text_embeddings(path: str, model: str) -> bool:
    return _has_text_embeddings(resolve(path), model, version(path, model))


def keyword_search(path: str, model: str, text: str, runs=()) -> list[str]:
    """Sample ids matching a keyword query (store.search; raises its SearchError, a ValueError)."""
    return _keyword_search(resolve(path), model, text, tuple(runs), version(path, model))


@st.cache_data(show_spinner=False, max_entries=64)
def _keyword_search(resolved: str, model: str, text: str, runs: tuple, data_version: str) -> list[str]:
    from store import search

    result = search.for_store(open_store(resolved)).keyword(text, model, list(runs) or None,
                                                           limit=search.MAX_LIMIT)
    return result.sample_ids


# -- the Search page's queries (store.search runs them in its sandbox; the page goes through these) -----------

from store.keywords import SearchError  # noqa: E402  (the Search page's error type; light: no DuckDB import)

SEARCH_TIMEOUT_S = 3.0  # the Search page stops a query after this long


def search_modes() -> dict[str, str]:
    """The search modes (``store.search.MODES``, in their order) with their labels."""
    from store import search as store_search

    return {mode: store_search.MODE_LABELS[mode] for mode in store_search.MODES}


def search_columns() -> dict[str, tuple[str, str]]:
    """The columns a SQL condition can use: name -> (type, meaning)."""
    from store import search as store_search

    return dict(store_search.SEARCH_COLUMNS)


def search(path: str, mode: str, text: str, model: str | None = None, runs=(), limit: int | None = None,
           timeout_s: float = SEARCH_TIMEOUT_S):
    """A search of the store's samples (``store.search``; ``limit`` rows at most, by default its
    ``DEFAULT_LIMIT``): its ``SearchResult``. Every failure comes back as a
    ``SearchError``: the query's own (syntax, refused, timeout, with a position for a caret), a bad parameter,
    or an unexpected failure (logged with its traceback; the page never shows one)."""
    from store import search as store_search

    try:
        limit = store_search.DEFAULT_LIMIT if limit is None else limit
        searcher = store_search.for_store(open_store(path))
        return searcher.run(mode, text, model, list(runs) or None, limit=limit, timeout_s=timeout_s)
    except SearchError:
        raise
    except ValueError as exc:
        raise SearchError(str(exc), None, text, kind="error") from exc
    except Exception as exc:
        log.exception("search failed: %r", (mode, text, model, runs, limit))
        message = f"the search failed: {type(exc).__name__}: {exc}"
        raise SearchError(message, None, text, kind="error") from exc


def search_ids(path: str, mode: str, text: str, model: str | None = None, runs=(),
               timeout_s: float = SEARCH_TIMEOUT_S) -> list[str]:
    """Every sample id that a search matches, beyond any row limit, in store order
    (``store.search.run_saved``); raises ``SearchError`` (a ValueError) for a bad query."""
    from store import search as store_search

    return store_search.run_saved(open_store(path), mode, text, model=model, run_ids=list(runs) or None,
                                  timeout_s=timeout_s)


def prompt_cluster_labels(path: str, model: str, k: int, runs=()) -> tuple[pd.Series, str] | None:
    """Cluster label of every sample (indexed by sample_id) and the clustering's key, or None."""
    from pipeline import clusters

    try:
        found = clusters.prompt_clusters(open_store(path), model, k, list(runs) or None)
    except (clusters.NoTextEmbeddings, ValueError) as exc:
        log.info("no prompt clusters for %s: %s", model, exc)
        return None
    return found.labels(), found.key


@st.cache_resource(show_spinner=False, max_entries=64)
def _color_file(view_key: str, _view: views.View, _path: str, color_by: str, n_clusters: int,
                runs: tuple) -> str:
    coloring = _coloring(_path, _view, color_by, n_clusters, runs)
    return views.write_color_file(_view, coloring)


def color_file_for(path: str, view: views.View, settings) -> str:
    """The colour file of the chosen colouring (written once per view and colouring; reruns are free)."""
    return _color_file(view.key, view, path, settings.color_by, settings.n_clusters, tuple(settings.runs))


def coloring_for(path: str, view: views.View, settings) -> views.Coloring:
    """The colouring chosen in the sidebar for this view (falls back to class label)."""
    return _coloring(path, view, settings.color_by, settings.n_clusters, tuple(settings.runs))


def _coloring(path: str, view: views.View, color_by: str, n_clusters: int, runs: tuple) -> views.Coloring:
    clusters = prompt_cluster_labels(path, view.model, n_clusters, runs) if color_by == "cluster" else None
    return views.coloring(view, color_by, clusters) or views.coloring(view, "label")


@dataclass(frozen=True)
class Neighbours:
    """The neighbour panel of the selected sample: its k nearest minus the ones the user removed (removed ones
    are not replaced: "Find neighbours" brings them back), and the manual neighbours."""

    knn: list[str]
    knn_distances: list[float]
    manual: list[str]
    manual_distances: list[float]


def trajectory(view: views.View, point: str | None) -> dict | None:
    """What the map draws for the selected point of an all-steps view: its sample's points in step order
    (``ids``) and their step numbers (``labels``); None elsewhere."""
    ids = view.trajectory(point)
    if not ids:
        return None
    steps = view.frame["step"].to_numpy()
    return {"ids": ids, "labels": [str(int(steps[view.position[p]])) for p in ids]}


def neighbours_of(path: str, view: views.View, settings, selection) -> Neighbours:
    removed = set(selection.knn_removed)
    ids, dists = nearest(path, view, settings, selection.selected, settings.k)
    kept = [(s, float(d)) for s, d in zip(ids, dists, strict=True)
            if s != selection.selected and s not in removed]
    manual = [s for s in selection.manual if s in view.position]
    manual_d = distances(path, view, settings, selection.selected, manual) if manual else []
    return Neighbours(knn=[s for s, _ in kept], knn_distances=[d for _, d in kept], manual=manual,
                      manual_distances=[float(d) for d in manual_d])


def nearest(path: str, view: views.View, settings, sample_id: str, k: int) -> tuple[list[str], list[float]]:
    """The k nearest samples of ``sample_id`` in the view (activation space or map space) with distances."""
    from pipeline import neighbors

    return neighbors.nearest(open_store(path), view.features, view.projection_key, view.sample_ids, view.xy,
                             sample_id, k, space=settings.space, metric=settings.metric)


def distances(path: str, view: views.View, settings, sample_id: str, others: list[str]) -> list[float]:
    """Distances from ``sample_id`` to ``others`` in the same space as ``nearest``."""
    from pipeline import neighbors

    return neighbors.distances(open_store(path), view.features, view.projection_key, view.sample_ids, view.xy,
                               sample_id, others, space=settings.space, metric=settings.metric)


# ------------------------------------------------------------------------------------------ edits (#13)
# What if, from the Explore panel: `pipeline.edit.Editor` does the work in a background `Job` (the registry of
# the projection jobs), on one process-wide generator per run, shared by sessions. The results are samples of
# the store: once written, the data version changes and the map places them (transform, not refit).

EDIT_WAIT_S = 2.0  # how long a click waits for an edit before the panel shows its progress instead
PLACING_WAIT_S = 3.0  # more, once the results are written and only their placement into the map is left
PLACING = 0.8  # an edit job's progress once its results are written and are being placed into the map
_EDIT_STAGES = (("loading", 0.1), ("recomputing", 0.3), ("generating", 0.6))  # Editor.progress -> fraction


@dataclass(frozen=True)
class EditSource:
    """What an edit of a sample starts from: its model and run, where the run's generator loads from, and
    why this server cannot edit it (None: it can, as far as can be told without loading the generator)."""

    sample_id: str
    model: str
    run_id: str
    checkpoint: str  # as the run manifest names it
    conditioning: str  # "class" or "prompt" (the model family's), "" for a model this code does not know
    num_steps: int
    device: str  # the device the run was generated on (its manifest)
    why_not: str | None = None

    @property
    def ok(self) -> bool:
        return self.why_not is None

    @property
    def shipped(self) -> bool:
        return not self.checkpoint or _shipped(self.checkpoint)


@st.cache_data(show_spinner=False, max_entries=64)
def _manifest(resolved: str, run_id: str, version: str) -> dict | None:
    return open_store(resolved).manifest(run_id)


def edit_source(path: str, model: str, sample_id: str) -> EditSource:
    """Where an edit of `sample_id` would load its generator from; `why_not` says what rules it out here (an
    edit result as parent, a model family this code does not know, a local checkpoint that is not there).
    Hub checkpoints and devices are checked when the generator loads (`load_generator`)."""
    import json

    from pipeline import families

    samples = model_samples(path, model)
    row = samples.loc[samples["sample_id"] == sample_id]
    if not len(row):
        return EditSource(sample_id, model, "", "", "", 0, "", f"{sample_id} is not a sample of {model}")
    row = row.iloc[0]
    run_id = str(row["run_id"])
    manifest = _manifest(resolve(path), run_id, version(path, model)) or {}
    settings = manifest.get("settings") or {}
    settings = json.loads(settings) if isinstance(settings, str) else dict(settings)
    checkpoint = str(manifest.get("checkpoint") or "")
    name = settings.get("model_family") or model  # teachers and students are stored under their model's key
    family = families.get_family(name) if name in families.MODELS else None
    from pipeline.edit import refusal

    op, parents = row.get("edit_op"), row.get("edit_parents")
    why = refusal(sample_id, run_id, settings.get("kind"), op if isinstance(op, str) else None,
                  parents if isinstance(parents, str) else None)
    if why is None and family is None:
        why = (f"model {model!r} is not one this code can generate (it knows {', '.join(families.MODELS)}), so "
               "its samples cannot be edited here")
    elif why is None and checkpoint and not checkpoint.startswith("hf://") and not _shipped(checkpoint):
        from pipeline.checkpoints import resolve_checkpoint

        try:
            resolve_checkpoint(checkpoint)
        except (FileNotFoundError, OSError) as exc:
            why = f"the checkpoint of run {run_id} is not on this server: {exc}"
    n_steps = len(settings.get("sigmas") or settings.get("timesteps") or []) or int(settings.get("steps") or 1)
    return EditSource(sample_id, model, run_id, checkpoint, family.conditioning if family else "", n_steps,
                      str(manifest.get("device") or ""), why)


@st.cache_data(show_spinner=False, max_entries=16)
def _run_kinds(resolved: str, version: str) -> dict[str, str]:
    return open_store(resolved).run_kinds()


def run_kinds(path: str) -> dict[str, str]:
    """Run id -> its kind (`store.schema.RUN_KINDS`: generated, real, edit, teacher, student ...)."""
    return _run_kinds(resolve(path), store_version(path))


def _shipped(checkpoint: str) -> bool:
    from pipeline.adapters.edm import SHIPPED_DEMO, SHIPPED_DEMO_STUDENT

    return checkpoint in (SHIPPED_DEMO, SHIPPED_DEMO_STUDENT)


@st.cache_resource(show_spinner=False)
def generator_cache():
    """The process-wide generator cache (`pipeline.edit.GeneratorCache`), shared by sessions: a run's generator
    loads once per server, whichever session edits it."""
    from pipeline.edit import GeneratorCache

    return GeneratorCache()


def _edit_progress(job: Job):
    def report(message: str) -> None:
        text = str(message)
        fraction = next((f for word, f in _EDIT_STAGES if word in text), None)
        job.report(max(job.progress, fraction) if fraction is not None else None, text)

    return report


def _editor(path: str, job: Job):
    """A fresh `Editor` (one per job: an Editor is for one thread) on the shared generators, reporting to `job`."""
    from pipeline.edit import Editor

    return Editor(resolve(path), generators=generator_cache(), progress=_edit_progress(job))


def generator_job(path: str, sample_id: str, run_id: str, start: bool = True, retry: bool = False) -> Job | None:
    """The job that loads the generator of `run_id` (`Editor.adapter` of the sample's run), started when
    `start` and not started yet (None when not started). Its error says why the run cannot be edited; a failed
    load is tried again only when `retry`."""
    key = ("edit-load", resolve(path), run_id)
    job = jobs().find(key)
    if job is not None and (job.error is None or not retry) or not (start or retry):
        return job

    def work(job: Job):
        editor = _editor(path, job)
        (parent,) = editor.parents([sample_id])
        adapter = editor.adapter(parent)
        freeze_long_lived()
        return {"device": str(editor.device), "checkpoint": str((adapter.identity() or {}).get("checkpoint") or "")}

    return jobs().get_or_start(key, work)


_FROZEN = threading.Event()


def freeze_long_lived() -> bool:
    """Move every object alive now out of the garbage collector's reach (`gc.freeze`), once per process.

    Streamlit forces a full collection after each script run (``runner.postScriptGC``); once torch and a
    generator are loaded that walk takes 0.3-0.5 s of the GIL on 2 cores, right when the browser fetches the
    map that shows an edit's results. Modules, weights and the app's caches live as long as the server, so a
    collection never frees them; objects made later are collected as before. True when this call froze."""
    import gc

    if _FROZEN.is_set():
        return False
    _FROZEN.set()
    gc.collect()
    gc.freeze()
    return True


def run_edit(path: str, op: str, args: dict, holder: str | None = None, then=None) -> Job:
    """Start (or find) the edit `op` (an `Editor` method: regenerate, interpolate, patch, steer) with `args`;
    waits up to `EDIT_WAIT_S` for it, and up to `PLACING_WAIT_S` more once only the placement is left. Its result
    is the list of result sample ids; its error a message.
    `then()` runs in the job once the results are written (the page places them into its map there)."""
    import json

    key = ("edit", resolve(path), op, json.dumps(args, sort_keys=True, default=str))

    def work(job: Job):
        ids = list(getattr(_editor(path, job), op)(**args))
        _version.clear()  # the results show on the next run, not after the data version's time to live
        if then is not None:
            job.report(PLACING, "placing the results into the map")
            then()
        job.report(1.0, f"{len(ids)} result{'s' if len(ids) != 1 else ''}")
        return ids

    job = start_job(key, work, holder, wait_s=EDIT_WAIT_S)
    if job.running and job.progress >= PLACING and job.thread is not None:
        # only the placement is left (a fraction of a second): the click's own run shows the results; the
        # progress bar's polling and the page run after it would take longer than waiting for it here
        job.thread.join(PLACING_WAIT_S)
    return job



def warm_model(path: str, model: str, layer: str) -> None:
    """Read `model`'s samples and `layer`'s steps into the app's caches at the store's current data version.
    An edit's job does it beside the placement of its results (`edit_panel._start`): the run that draws them
    would otherwise read them first (0.2-0.5 s of its view on a loaded 2-core machine)."""
    try:
        model_samples(path, model)
        model_steps(path, model, layer)
    except Exception as exc:  # the run that needs them reads them (and reports what is wrong)
        log.info("could not read %s ahead of the edit's map: %s", model, exc)


EDIT_GROUP_COLUMNS = ("edit_op", "edit_parents", "edit_layer", "edit_steps", "edit_set", "edit_from_set")


def edit_family(view: views.View, point: str | None) -> list[str]:
    """The results of the edit that made `point` (an interpolation's frames, a steering series; a regenerated
    or patched sample alone), as ids of this view; [] when `point` is not an edit result."""
    if point is None or point not in view.position or "edit_op" not in view.frame:
        return []
    f = view.frame
    row = f.iloc[view.position[point]]
    if not isinstance(row["edit_op"], str):
        return []
    same = pd.Series(True, index=f.index)
    for col in EDIT_GROUP_COLUMNS:
        if col in f:
            value = row[col]
            same &= f[col].eq(value) if isinstance(value, str) else f[col].isna()
    if view.all_steps:
        same &= f["step"].eq(row["step"])
    return view.sample_ids[same.to_numpy()].tolist()


def edit_links(view: views.View, points: list[str]) -> list[dict]:
    """The map's links of edit results to their parents (`scatter_map`'s ``links``): an interpolation as a path
    from its first parent through its frames to the second, a steering series as a path from the parent by
    alpha, a regenerated or patched sample as a line from its parent (a patch also with a spoke to each member
    of its set). `points` are ids of this view; parents and members outside it are left out."""
    if "edit_op" not in view.frame:
        return []
    f = view.frame
    cols = [c for c in (*EDIT_GROUP_COLUMNS, "edit_frame", "edit_alpha") if c in f]
    kept = [p for p in points if p in view.position]
    rows = f[cols].iloc[[view.position[p] for p in kept]].copy()  # (the few columns first: the frame is wide)
    rows["_id"] = kept
    rows = rows[rows["edit_op"].notna()]
    out = []
    group_cols = [c for c in EDIT_GROUP_COLUMNS if c in rows]
    for _, group in rows.groupby(group_cols, dropna=False, sort=False):
        op = group["edit_op"].iloc[0]
        parents = [view.locate(p) for p in str(group["edit_parents"].iloc[0]).split(",") if p]
        if op == "interpolate":
            group = group.sort_values("edit_frame")
            ids = [parents[0], *group["_id"], parents[-1]] if parents else list(group["_id"])
            labels = ["", *(str(int(k)) for k in group["edit_frame"]), ""] if parents else \
                [str(int(k)) for k in group["edit_frame"]]
            out.append({"kind": "interpolate", "ids": ids, "labels": labels})
        elif op == "steer":
            group = group.sort_values("edit_alpha")
            out.append({"kind": "steer", "ids": [parents[0], *group["_id"]] if parents else list(group["_id"]),
                        "labels": ([""] if parents else []) + [f"α {float(a):g}" for a in group["edit_alpha"]]})
        else:
            for _, r in group.iterrows():
                if parents:
                    out.append({"kind": op, "ids": [parents[0], r["_id"]], "labels": ["", op]})
                if op == "patch" and isinstance(r.get("edit_set"), str):
                    for member in r["edit_set"].split(","):
                        out.append({"kind": "set", "ids": [r["_id"], view.locate(member)], "labels": ["", ""]})
    for link in out:  # parents or members not in this view: drop them from the line
        keep = [k for k, i in enumerate(link["ids"]) if i is not None]
        link["ids"] = [link["ids"][k] for k in keep]
        link["labels"] = [link["labels"][k] for k in keep]
    return [link for link in out if len(link["ids"]) > 1]


# ------------------------------------------------------------------------------------------ narrowed maps

@st.cache_resource(show_spinner=False, max_entries=48)
def _narrowed(key: str, _view: views.View, _path: str, _rows: tuple) -> views.View:
    rows = np.asarray(_rows, dtype=np.int64)
    sub = views.make_view(store_key=_view.store_key, projection_key=_view.projection_key, model=_view.model,
                          layer=_view.layer, step=_view.step, sample_ids=_view.sample_ids[rows], xy=_view.xy[rows],
                          samples=model_samples(_path, _view.model), quality=_view.quality,
                          source=_view.source, step_info=_view.step_info, extra_key=key, feature=_view.feature,
                          seconds=_view.seconds, steps=model_steps(_path, _view.model, _view.layer),
                          features=_view.features)
    views.write_view_files(sub)
    return sub


def narrowed_view(path: str, view: views.View, rows, why: str) -> views.View:
    """Some of a map's points (`rows` of `view`) as a view of their own, on the same coordinates (its files
    written once): the map drawn filtered. `why` (e.g. "facets", "class") and the rows name it."""
    rows = tuple(int(r) for r in rows)
    digest = hashlib.sha1("\n".join(map(str, rows)).encode()).hexdigest()[:12]
    return _narrowed(f"{view.key}|{why}|{digest}", view, path, rows)
