"""What the Compare layers page reads and remembers: its URL state, the background jobs of its two analyses
(`pipeline.compare`), the projections of its two maps and their colourings, and the disagreement table:
`pipeline.compare` ranks and groups the results, this module adds the app's labels, thumbnails and links.

The analyses run in the app's job registry (`app.data.jobs`) like the projections, so a slow first
computation shows progress while the page stays usable; `pipeline.compare` caches results in the store under
explicit keys, so a second visit is instant. Nothing here draws.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from urllib.parse import urlencode

import pandas as pd

from app import data, state, url, views
from app.state import ViewSettings

SEP = url.SEP  # list separator in the URL
COLOR_MODES = ("label", "agreement")
K_RANGE = (2, 50)
DEFAULT_K = 10
URL_LOADED = "cmp.url_loaded"
URL_VALUES = "cmp.url"  # the URL's values, read once per session, consumed as widget defaults
SELECTED = "cmp.selected"  # sample clicked on either map
EXPLORE_URL_PATH = "explore"  # app.navigation's url_path of Explore


@dataclass(frozen=True)
class CompareSettings:
    """Everything that defines the page's view; all of it round-trips through the URL."""

    model: str
    runs: tuple[str, ...]
    step: int
    layers: tuple[str, ...]
    layer_a: str | None = None
    layer_b: str | None = None
    k: int = DEFAULT_K
    color: str = "label"


# ------------------------------------------------------------------------------------------------- URL

def load_url_once() -> dict:
    """The page's query values of the URL that opened this session (read on the first run of this page)."""
    return url.load_once(URL_LOADED, URL_VALUES, parse_params)


def parse_params(q: dict) -> dict:
    """Parse the page's query parameters; malformed numbers are left out (the URL is user input)."""
    return {**url.pick(q, ("model",), url.parse_str), **url.pick(q, ("runs", "layers"), url.parse_list, SEP),
            **url.pick(q, ("a", "b"), url.parse_str), **url.pick(q, ("step", "k"), url.parse_int),
            **url.pick(q, ("color",), url.parse_choice, COLOR_MODES)}


def to_params(s: CompareSettings, all_layers: list[str]) -> dict[str, str]:
    """The query parameters of a view (all layers chosen: left out, to keep links short)."""
    params = {"model": s.model, "step": str(s.step)}
    if s.runs:
        params["runs"] = SEP.join(s.runs)
    if list(s.layers) != list(all_layers):
        params["layers"] = SEP.join(s.layers)
    if s.layer_a and s.layer_b:
        params["a"], params["b"] = s.layer_a, s.layer_b
    if s.k != DEFAULT_K:
        params["k"] = str(s.k)
    if s.color != "label":
        params["color"] = s.color
    return state.with_store(params)


def sync_url(s: CompareSettings, all_layers: list[str]) -> None:
    url.sync(to_params(s, all_layers))


def explore_link(s: CompareSettings, layer: str, sample_id: str) -> str:
    """A link (relative to this page) that opens ``sample_id`` selected on Explore's map of ``layer``."""
    view = map_settings(s, layer)
    params = state.view_to_params(view)
    params["sel"] = sample_id
    path = state.store_path()
    if not state.is_default_store(path):
        params["store"] = path
    return f"{EXPLORE_URL_PATH}?{urlencode(params)}"


def open_in_explore(s: CompareSettings, layer: str, sample_id: str) -> tuple[ViewSettings, dict]:
    """Put Explore's view and selection in the session for ``sample_id`` on ``layer``; returns the view and
    the query parameters to switch pages with."""
    view = map_settings(s, layer)
    state.set_view(view)
    state.select(sample_id)
    return view, {**state.view_to_params(view), "sel": sample_id}


# ------------------------------------------------------------------------------------------------- jobs

def cka_job(path: str, model: str, layers: tuple[str, ...], step: int, runs: tuple[str, ...]) -> data.Job:
    """The CKA matrix of `layers` at `step` (`pipeline.compare.layer_similarity`), as a job (one per store
    version: Compare layers and Motion's depth mode share it)."""
    from pipeline import compare

    key = ("compare-cka", data.resolve(path), data.layer_versions(path, model, layers, runs), model, layers, step,
           runs)

    def work(job: data.Job):
        return compare.layer_similarity(data.open_store(path), model, list(layers), step,
                                        run_ids=list(runs) or None, progress=job.report)

    return data.start_job(key, work)


def similarity_job(path: str, s: CompareSettings) -> data.Job:
    """The CKA matrix of the chosen layers, as a job."""
    return cka_job(path, s.model, s.layers, s.step, s.runs)


def agreement_job(path: str, s: CompareSettings) -> data.Job:
    """Per-sample neighbour agreement of the chosen pair (`pipeline.compare.neighbour_agreement`), as a job."""
    from pipeline import compare

    pair = (s.layer_a, s.layer_b)
    key = ("compare-knn", data.resolve(path), data.layer_versions(path, s.model, pair, s.runs), s.model, pair, s.step,
           s.runs, s.k)

    def work(job: data.Job):
        return compare.neighbour_agreement(data.open_store(path), s.model, s.layer_a, s.layer_b, s.step, k=s.k,
                                           run_ids=list(s.runs) or None, progress=job.report)

    return data.start_job(key, work)


def map_settings(s: CompareSettings, layer: str) -> ViewSettings:
    """The Explore view of one layer's map: this page's model, runs and step with Explore's current projection
    parameters, so both pages share one cached projection."""
    base = state.get_view()
    projection = {name: getattr(base, name) for name in state.PROJECTION_FIELDS}
    return replace(ViewSettings(), model=s.model, runs=tuple(s.runs), layer=layer, step=int(s.step),
                   **projection).validated()


def map_job(path: str, s: CompareSettings, layer: str) -> data.Job:
    return data.request_projection(path, map_settings(s, layer), None, 0)


# ------------------------------------------------------------------------------------------- colouring

def agreement_values(view: views.View, agreement: pd.DataFrame) -> pd.Series:
    """The overlap of every point of a view, in the view's order (NaN for samples without one)."""
    return agreement.set_index("sample_id")["overlap"].reindex(view.sample_ids).reset_index(drop=True)


def color_file(path: str, view: views.View, s: CompareSettings, agreement: pd.DataFrame | None,
               agreement_key: tuple | None) -> str:
    """The colour file of a map: class label / prompt, or the pair's neighbour agreement."""
    if s.color == "agreement" and agreement is not None:
        short = hashlib.sha1(repr(agreement_key).encode()).hexdigest()[:12]
        coloring = views.Coloring(f"agree-{short}", f"kNN agreement (k={s.k})", "numeric",
                                  agreement_values(view, agreement))
        return views.write_color_file(view, coloring)
    return data.color_file_for(path, view, map_settings(s, view.layer))


# ------------------------------------------------------------------------------------------------ table

def sample_labels(path: str, model: str) -> pd.Series:
    """Each sample's label (class or prompt), indexed by sample_id."""
    return data.model_samples(path, model).set_index("sample_id")["label"]


def agreement_by_label(path: str, model: str, agreement: pd.DataFrame) -> pd.DataFrame:
    """Mean neighbour agreement and sample count per label, least agreeing first
    (`pipeline.compare.agreement_by_label` with the model's labels)."""
    from pipeline import compare

    return compare.agreement_by_label(agreement, sample_labels(path, model))


def thumb_data_urls(path: str, sample_ids: list[str]) -> list[str | None]:
    """Thumbnails as data URLs (a handful, for a table: no static files involved)."""
    out = []
    for raw in data.open_store(path).thumbs(sample_ids):
        out.append(f"data:image/webp;base64,{base64.b64encode(raw).decode()}" if raw else None)
    return out


def disagreement_table(path: str, s: CompareSettings, agreement: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` samples whose neighbourhoods differ most between the two layers
    (`pipeline.compare.most_disagreeing`: lowest overlap first, one label in turn among ties, then store
    order) with their thumbnail, label (the sample id where there is none), overlap and links that open them
    in Explore on either layer."""
    from pipeline import compare

    worst = compare.most_disagreeing(agreement, sample_labels(path, s.model), n)
    ids = worst["sample_id"].tolist()
    labels = worst["label"]
    return pd.DataFrame({
        "thumbnail": thumb_data_urls(path, ids),
        "label": [str(lab) if pd.notna(lab) else sid for sid, lab in zip(ids, labels, strict=True)],
        "overlap": worst["overlap"].to_numpy(),
        "sample_id": ids,
        f"on {s.layer_a}": [explore_link(s, s.layer_a, sid) for sid in ids],
        f"on {s.layer_b}": [explore_link(s, s.layer_b, sid) for sid in ids],
    })
