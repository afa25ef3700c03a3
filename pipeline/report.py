"""A report to share: one self-contained HTML file (it opens offline: plotly.js, images and styles are inlined,
nothing is fetched) and a PNG of the map, of one model, layer and step of a store.

The HTML holds, in order: the interactive map (`pipeline.project`, coloured by class label, or by category
for prompt models; hovering a point shows its thumbnail), the class separation (`pipeline.analysis`: per-class
kNN purity and silhouette, the confusion heatmap, the most-mixed pairs), the clusters with their medoid
images, the outlier gallery, the CKA of the layers recorded at that step (`pipeline.compare`), the runs of
the model side by side with the distribution metrics between them (`pipeline.distribution`: each run that
recorded the step against the `real` run, or the first run when there is none), and their manifests. Every result comes from the same cached functions the app and
the command line use, so a second report of the same data reads them from the store's cache.

A part that cannot be computed for this store (one layer only: no CKA; too few samples) is replaced by a
sentence that says why, and listed in `Report.absent`.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import figures
from pipeline.features import default_step

__all__ = ["Report", "ReportError", "render_report", "write_report", "png_path_for", "OUTLIERS_SHOWN",
           "CONFUSION_CLASSES_SHOWN"]

Progress = Callable[[float, str], None]
K = 10  # neighbours of the class separation and the outlier scores (fewer on a store with fewer samples)
OUTLIERS_SHOWN = 24
CLUSTERS_SHOWN = 30
CONFUSION_CLASSES_SHOWN = 30  # a wider confusion matrix keeps the classes of the most-mixed pairs


class ReportError(ValueError):
    """A report that cannot be made (unknown store, model, layer or step; no map), with a message for the user."""


@dataclass(frozen=True)
class Report:
    """A rendered report: ``html`` (one self-contained file), ``png`` (the map with legend and title), its
    ``title`` and what it could not include (``absent``: one sentence each, also written in the report)."""

    html: bytes
    png: bytes
    title: str
    absent: tuple[str, ...] = ()


# -- entry points --------------------------------------------------------------------------------------------

def png_path_for(html_path: str | os.PathLike) -> Path:
    """The PNG that goes with a report: ``report.png`` beside ``report.html``."""
    return Path(html_path).with_suffix(".png")


def write_report(store, model: str, layer: str, step: int | None = None, *, out: str | os.PathLike,
                 feature=None, method: str = "umap", progress: Progress | None = None,
                 cancel: threading.Event | None = None) -> tuple[Path, Path]:
    """Render the report and write it to ``out`` (HTML) and `png_path_for(out)` (PNG), each atomically (a
    reader sees the old file or the new one, never a part). Returns (html path, png path)."""
    from store.atomic import staging_path

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"the report is an HTML file: --out must end in .html, got {str(out)!r}")
    if out.is_dir():
        raise ReportError(f"{str(out)!r} is a folder: give the report's file name, e.g. {out / 'report.html'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create the folder of {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK):
        raise ReportError(f"cannot write the report: the folder {str(out.parent)!r} is not writable")
    report = render_report(store, model, layer, step, feature=feature, method=method, progress=progress,
                           cancel=cancel)
    png = png_path_for(out)
    for path, data in ((png, report.png), (out, report.html)):
        tmp = staging_path(path)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return out, png


def render_report(store, model: str, layer: str, step: int | None = None, *, feature=None, method: str = "umap",
                  progress: Progress | None = None, cancel: threading.Event | None = None) -> Report:
    """The report of (model, layer, step) of `store` (a `store.Store` or its folder); `step` None is the
    last recorded, a negative step counts from the last. `feature` and `method` choose the activation
    features (None: the layer's default) and the map's projection method. `progress(fraction, message)` is
    called as it works. Setting `cancel` stops the work at the next stage or map epoch with
    `pipeline.project.Cancelled`. Raises `ReportError`."""
    from pipeline import analysis, compare
    from pipeline.project import Cancelled, ProjectionError, ProjectionParams, default_projector

    say = _Progress(progress, cancel)
    store = _open(store)
    step = _resolve(store, model, layer, step)
    absent: list[str] = []
    steps = store.steps(model, layer)
    at = steps[steps["step"] == step].iloc[0]

    say(0.0, f"map of {model}/{layer} at step {step} ({method})")
    try:
        params = ProjectionParams(feature=feature, method=method)
        proj = default_projector().project(store, model, layer, step, params, progress=say.within(0.0, 0.35, "map"),
                                           cancel=cancel)
    except Cancelled:
        raise
    except ProjectionError as exc:
        raise ReportError(f"no map of {model}/{layer} at step {step}: {exc}") from None
    ids = np.asarray(proj.sample_ids).astype(str)
    meta = store.samples(model=model, sample_ids=list(ids)).drop_duplicates("sample_id").set_index("sample_id")
    meta = meta.reindex(ids).reset_index()
    prompts = "prompt" in meta.columns and meta["prompt"].notna().any()
    by = "category" if prompts else "label"
    codes, names, colors = _categories(meta, by)
    k = min(K, len(ids) - 1)
    common = dict(step=step, feature=feature)

    say(0.35, "class separation")
    sep = _try(absent, "class separation", lambda: analysis.class_separation(
        store, model, layer, k=k, by=by, progress=say.within(0.35, 0.55, "class separation"), **common))
    say(0.55, "clusters")
    clu = _try(absent, "clusters", lambda: analysis.clusters(
        store, model, layer, progress=say.within(0.55, 0.7, "clusters"), **common))
    say(0.7, "outliers")
    out = _try(absent, "outliers", lambda: analysis.outliers(
        store, model, layer, k=k, progress=say.within(0.7, 0.8, "outliers"), **common))

    say(0.8, "CKA of the recorded layers")
    cka_layers = [x for x in store.layers(model) if step in set(store.steps(model, x)["step"].astype(int))]
    cka = None
    if len(cka_layers) < 2:
        absent.append(f"CKA: it compares layers, and {model} recorded one layer only ({layer}) at step {step}")
    else:
        cka = _try(absent, "CKA", lambda: compare.layer_similarity(
            store, model, cka_layers, step, feature=feature, progress=say.within(0.8, 0.9, "CKA")))

    say(0.9, "runs")
    runs = store.runs()
    runs = runs[runs["model"] == model].sort_values("run_id").reset_index(drop=True)
    per_run = _per_run(store, model, layer, step, feature, meta, runs, k, by, absent, say)
    between = _between_runs(store, model, layer, step, feature, meta, runs, absent, say.within(0.95, 0.97, "runs"))

    say(0.97, "thumbnails and the page")
    thumbs = store.thumbs(list(ids)) if len(ids) <= figures.MAX_HTML_THUMBS else None
    thumb_of = dict(zip(ids, thumbs, strict=True)) if thumbs is not None else {}
    wanted = ([m for ms in clu.table["medoids"] for m in ms] if clu is not None else []) + (
        out["sample_id"].head(OUTLIERS_SHOWN).tolist() if out is not None else [])
    missing = [s for s in dict.fromkeys(wanted) if s not in thumb_of]
    thumb_of.update(zip(missing, store.thumbs(missing), strict=True))

    sigma = at.get("sigma")
    where = f"step {step}" + (f" · σ {float(sigma):.3g}" if sigma is not None and pd.notna(sigma) else "")
    title = f"{model} · {layer} · {where} · {len(ids):,} samples"
    fig = figures.map_figure(proj.xy[:, 0], proj.xy[:, 1], figures.hover_text(meta), f"{title} · colour: {by}",
                             codes=codes, names=names, colors=colors)
    if thumbs is None:
        absent.append(f"hover thumbnails: they are inlined for maps of up to {figures.MAX_HTML_THUMBS:,} points, "
                      f"this one has {len(ids):,}")
    context = dict(store=store, model=model, layer=layer, step=step, at=at, proj=proj, by=by, k=k,
                   feature=feature, method=method, thumb_of=thumb_of, cka_layers=cka_layers)
    page = _page(title, context, fig, thumbs, sep, clu, out, cka, runs, per_run, between, absent)
    png = figures.map_png(proj.xy[:, 0], proj.xy[:, 1], codes, names, colors, title,
                          subtitle=f"{proj.params.method} map of the activations ({_feature_id(proj)}) · store "
                                   f"{Path(store.root).name}", legend_title=f"colour: {by}")
    say(1.0, "done")
    return Report(page.encode(), png, title, tuple(absent))


# -- helpers -------------------------------------------------------------------------------------------------

class _Progress:
    """Reports progress, and raises `Cancelled` at any report once `cancel` is set."""

    def __init__(self, callback: Progress | None, cancel: threading.Event | None = None):
        self.callback, self.cancel = callback, cancel

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            from pipeline.project import Cancelled

            raise Cancelled("cancelled")
        if self.callback is not None:
            self.callback(max(0.0, min(1.0, float(fraction))), message)

    def within(self, lo: float, hi: float, stage: str) -> Progress:
        """A callback for one stage: its 0..1 mapped into [lo, hi], its messages prefixed by the stage."""
        return lambda fraction, message: self(lo + (hi - lo) * max(0.0, min(1.0, float(fraction))),
                                              f"{stage}: {message}")


def _feature_id(proj) -> str:
    """The features the map was made from, resolved ("full+pca50" rather than "auto") where it says."""
    from pipeline.features import FeatureError, FeatureSpec

    try:
        return FeatureSpec.parse(proj.meta["feature_resolved"]).id
    except (KeyError, TypeError, FeatureError):
        return proj.params.feature.id


def _open(store):
    from store import Store

    if isinstance(store, str | os.PathLike):
        if not Path(store).is_dir():
            raise ReportError(f"store folder {str(store)!r} does not exist")
        return Store(store)
    return store


def _resolve(store, model: str, layer: str, step) -> int:
    """The step the report is of: the given one if recorded (negative: from the last), None: the step maps open
    on (`features.default_step`: the latest step at least half the runs record)."""
    models = store.models()
    if model not in models:
        raise ReportError(f"unknown model {model!r} in store {str(store.root)!r}; valid: {models}"
                          if models else f"the store {str(store.root)!r} holds no model yet")
    layers = store.layers(model)
    if layer not in layers:
        raise ReportError(f"unknown layer {layer!r} of model {model!r}; valid: {layers}")
    steps = store.steps(model, layer)
    recorded = sorted(int(s) for s in steps["step"].unique())
    if not recorded:
        raise ReportError(f"no activations recorded for {model}/{layer}")
    if step is None:
        return default_step(steps)
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise ReportError(f"a report is of one step (an integer), got {step!r}; steps recorded: {recorded}")
    if step < 0:
        if -step > len(recorded):
            raise ReportError(f"step {step} out of range; steps recorded for {model}/{layer}: {recorded}")
        return recorded[step]
    if int(step) not in recorded:
        raise ReportError(f"step {step} is not recorded for {model}/{layer}; steps recorded: {recorded}")
    return int(step)


def _try(absent: list[str], what: str, compute):
    """`compute()`, or None with the reason in `absent` when the analysis refuses this data."""
    from pipeline.analysis import AnalysisError
    from pipeline.compare import CompareError

    try:
        return compute()
    except (AnalysisError, CompareError) as exc:
        absent.append(f"{what}: {exc}")
        return None


def _natural(text: str):
    head = text.split(":", 1)[0].strip()
    return (0, int(head), text) if head.isdigit() else (1, 0, text)


def _categories(meta: pd.DataFrame, by: str) -> tuple[np.ndarray, list[str], list[str]]:
    """(code per sample, names, colours) of the colouring by `by`: classes in class-id order, categories
    in natural order, missing values as "(none)" in grey."""
    values = meta[by].astype("object").where(meta[by].notna(), "(none)").astype(str)
    if by == "label" and meta["class_id"].notna().any():
        order = list(dict.fromkeys(meta.assign(_v=values).sort_values("class_id", kind="stable")["_v"]))
    else:
        order = sorted(pd.unique(values), key=_natural)
    code_of = {v: i for i, v in enumerate(order)}
    colors = figures.palette(len(order))
    if "(none)" in code_of:
        colors[code_of["(none)"]] = figures.MISSING_COLOR
    return values.map(code_of).to_numpy(dtype=np.int64), order, colors


def _per_run(store, model, layer, step, feature, meta, runs, k, by, absent, say: _Progress) -> pd.DataFrame:
    """Per run of the model: its samples, those at this step, and its class separation measured on its own
    samples (mean kNN purity, its chance level, mean silhouette), where two or more runs have this step."""
    from pipeline import analysis

    everything = store.samples(model=model, columns=["sample_id", "run_id"])
    total = everything.groupby("run_id").size()
    here = meta.groupby("run_id").size()
    rows = []
    at_step = [r for r in runs["run_id"] if here.get(r, 0) > 0]
    for run in runs["run_id"]:
        row = {"run": run, "samples": int(total.get(run, 0)), f"at step {step}": int(here.get(run, 0))}
        if len(at_step) >= 2 and run in at_step and here[run] < analysis.MIN_SAMPLES:
            absent.append(f"class separation of run {run}: it has {here[run]} sample(s) at step {step}, too few "
                          f"to measure (at least {analysis.MIN_SAMPLES})")
        elif len(at_step) >= 2 and run in at_step:
            say(0.9 + 0.05 * at_step.index(run) / len(at_step), f"runs: class separation of {run}")
            try:
                sep = analysis.class_separation(store, model, layer, step=step, feature=feature, run_ids=[run],
                                                k=min(k, int(here[run]) - 1), by=by)
                w = sep.table["samples"].to_numpy(dtype=float)
                row["mean purity"] = float(np.average(sep.table["purity"], weights=w))
                row["chance"] = float(np.average(sep.table["chance"], weights=w))
                sil = sep.table["silhouette"].to_numpy(dtype=float)
                ok = np.isfinite(sil)
                row["mean silhouette"] = float(np.average(sil[ok], weights=w[ok])) if ok.any() else np.nan
            except analysis.AnalysisError as exc:
                absent.append(f"class separation of run {run}: {exc}")
        rows.append(row)
    if len(at_step) < 2:
        absent.append(f"per-run class separation: only one run of {model} recorded step {step}")
    return pd.DataFrame(rows)


def _between_runs(store, model, layer, step, feature, meta, runs, absent, say: Progress) -> pd.DataFrame | None:
    """The distribution metrics (`pipeline.distribution`, k = its default, overall) of every run that recorded
    this step against a reference: the run of kind ``real`` among them, else the first. None (the reason in
    `absent`) when fewer than two runs recorded the step; a run too small to measure is named in `absent`."""
    from pipeline import distribution
    from store.schema import run_kind

    here = meta.groupby("run_id").size()
    at_step = [r for r in runs["run_id"] if here.get(r, 0) > 0]
    if len(at_step) < 2:
        absent.append(f"comparison metrics between runs: only one run of {model} recorded step {step}")
        return None
    kinds = dict(zip(runs["run_id"], (run_kind(s) for s in runs["settings"]), strict=True))
    ref = next((r for r in at_step if kinds.get(r) == "real"), at_step[0])
    others = [r for r in at_step if r != ref]
    rows = []
    for i, other in enumerate(others):
        say(i / len(others), f"metrics of {other} against {ref}")
        try:
            rows.append(distribution.compare_runs(store, model, layer, [ref, other], step=step, per_class=False,
                                                  feature=feature))
        except distribution.DistributionError as exc:
            absent.append(f"comparison metrics of run {other} against {ref}: {exc}")
    if not rows:
        return None
    table = pd.concat(rows, ignore_index=True)
    table = table[table["class"] == distribution.ALL]
    return table.drop(columns=["class", "step_a", "step_b"]).rename(
        columns={"run_a": "reference", "run_b": "run"}).reset_index(drop=True)


# -- the page ------------------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return _e(value)


def _cell(value) -> str:
    """A table cell: text left-aligned (class "t"), numbers right-aligned."""
    return f'<td class="t">{_num(value)}</td>' if isinstance(value, str) else f"<td>{_num(value)}</td>"


def _table(frame: pd.DataFrame, cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _heat(matrix: pd.DataFrame, caption: str, lo: float = 0.0, hi: float = 1.0) -> str:
    """A square matrix as an HTML heatmap: each cell shaded by its value between `lo` and `hi`."""
    cols = [str(c) for c in matrix.columns]
    head = '<th class="corner"></th>' + "".join(f'<th class="rot"><span>{_e(c)}</span></th>' for c in cols)
    rows = []
    for name, values in zip(matrix.index, matrix.to_numpy(dtype=float), strict=True):
        cells = []
        for col, v in zip(cols, values, strict=True):
            t = 0.0 if not np.isfinite(v) else min(max((v - lo) / (hi - lo or 1.0), 0.0), 1.0)
            ink = "#fff" if t > 0.55 else "#222"
            cells.append(f'<td class="cell" style="background:rgba(37,99,160,{t:.3f});color:{ink}" '
                         f'title="{_e(name)} → {_e(col)}: {_num(v)}">{_num(v, 2)}</td>')
        rows.append(f'<tr><th class="rowh">{_e(name)}</th>{"".join(cells)}</tr>')
    return (f'<table class="heat"><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _short(sample_id: str) -> str:
    """A sample's caption: "run #index" (its id, in full, is the image's title)."""
    run, _, index = str(sample_id).rpartition("-")
    return f"<small>{_e(run)} #{int(index)}</small>" if run and index.isdigit() else f"<small>{_e(sample_id)}</small>"


def _img(thumb: bytes | None, alt: str) -> str:
    if not thumb:
        return '<div class="noimg">no image</div>'
    mime = "image/png" if thumb[:4] == b"\x89PNG" else "image/webp"
    return f'<img src="data:{mime};base64,{base64.b64encode(thumb).decode()}" alt="{_e(alt)}" title="{_e(alt)}">'


def _absent(absent: Sequence[str], prefix: str) -> str:
    return "".join(f'<p class="absent">Not in this report — {_e(a)}</p>' for a in absent if a.startswith(prefix))


def _page(title, c, fig, thumbs, sep, clu, out, cka, runs, per_run, between, absent) -> str:
    proj, by, step = c["proj"], c["by"], c["step"]
    sections = []
    sigma, timestep = c["at"].get("sigma"), c["at"].get("timestep")
    facts = {
        "store": Path(c["store"].root).resolve(), "model": c["model"], "layer": c["layer"], "step": step,
        "sigma": _num(float(sigma), 4) if sigma is not None and pd.notna(sigma) else "–",
        "timestep": _num(float(timestep), 1) if timestep is not None and pd.notna(timestep) else "–",
        "samples": f"{len(proj):,}", "features": _feature_id(proj),
        "map": f"{proj.params.method} ({proj.params.estimator().tag()}, {proj.params.metric})",
        "classes by": by, "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    sections.append('<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts.items())
                    + "</dl>")

    note = ("Hover a point to see its image; drag to pan, scroll to zoom, click a legend entry to hide it."
            if thumbs is not None else "Drag to pan, scroll to zoom, click a legend entry to hide it.")
    sections.append(f'<section id="map"><h2>Map</h2><p class="note">{note}</p>'
                    f'{figures.map_block(fig, thumbs, div_id="map-plot")}{_absent(absent, "hover")}</section>')

    body = ['<section id="separation"><h2>Class separation</h2>']
    if sep is not None:
        body.append(f'<p class="note">Measured in activation space ({sep.n_samples:,} samples, {sep.k} nearest '
                    f"neighbours, classes by {_e(sep.by)}). Purity: the share of a sample's neighbours of its own "
                    "class (chance: the purity of random neighbours). Least pure first.</p>")
        body.append(_table(sep.table, "sep"))
        matrix, cap = sep.confusion, "Row a: where the neighbours of class a's samples come from (rows sum to 1)."
        if len(matrix) > CONFUSION_CLASSES_SHOWN:
            keep = list(dict.fromkeys([*sep.pairs["class_a"], *sep.pairs["class_b"], *sep.table["class"]]))
            keep = [x for x in matrix.index if x in set(keep[:CONFUSION_CLASSES_SHOWN])]
            matrix = matrix.loc[keep, keep]
            cap += (f" The {len(keep)} classes of the most-mixed pairs and the least pure classes, of "
                    f"{len(sep.confusion):,}.")
        body.append(_heat(matrix, cap))
        body.append("<h3>Most-mixed pairs</h3>")
        body.append(_table(sep.pairs, "pairs") if len(sep.pairs) else "<p>No two classes share neighbours.</p>")
    body.append(_absent(absent, "class separation:"))
    sections.append("".join(body) + "</section>")

    body = ['<section id="clusters"><h2>Clusters</h2>']
    if clu is not None:
        body.append(f'<p class="note">{_e(clu.method)} on the activation features of {clu.n_samples:,} samples; '
                    "purity: the share of the majority class; spread: mean distance to the centre; images: "
                    "the samples nearest the centre (medoids).</p>")
        named = clu.table[clu.table["cluster"] != -1]
        shown = pd.concat([named.head(CLUSTERS_SHOWN), clu.table[clu.table["cluster"] == -1]])
        body.append('<div class="cards">')
        for row in shown.itertuples(index=False):
            imgs = "".join(f'<figure class="medoid" data-sample="{_e(m)}">{_img(c["thumb_of"].get(m), m)}'
                           f"<figcaption>{_short(m)}</figcaption></figure>" for m in row.medoids)
            words = f"<br>words: {_e(', '.join(row.words))}" if len(row.words) else ""
            head = "Noise (in no dense region)" if row.cluster == -1 else f"Cluster {row.cluster} · {_e(row.name)}"
            body.append(f'<div class="cluster"><h3>{head}</h3><p>{row.size:,} samples · majority {_e(row.majority)} '
                        f"({row.purity:.0%}) · spread {row.spread:.3g}{words}</p>"
                        f'<div class="gallery">{imgs}</div></div>')
        body.append("</div>")
        if len(clu.table) > len(shown):
            body.append(f"<p>… and {len(clu.table) - len(shown):,} smaller clusters (not shown).</p>")
    body.append(_absent(absent, "clusters:"))
    sections.append("".join(body) + "</section>")

    body = ['<section id="outliers"><h2>Outliers</h2>']
    if out is not None:
        body.append(f'<p class="note">The {min(OUTLIERS_SHOWN, len(out))} most unusual of {len(out):,} samples '
                    "in activation space, by local outlier factor (about 1 inside a cluster, well above 1 for an "
                    "isolated sample); kdist: the distance to the k-th neighbour.</p><div class=\"gallery\">")
        for row in out.head(OUTLIERS_SHOWN).itertuples(index=False):
            body.append(f'<figure class="outlier" data-sample="{_e(row.sample_id)}">'
                        f"{_img(c['thumb_of'].get(row.sample_id), row.sample_id)}"
                        f"<figcaption>#{row.rank} · LOF {row.lof:.2f}<br>kdist {row.kdist:.3g}<br>"
                        f"{_e(row[1])}<br>{_short(row.sample_id)}</figcaption></figure>")
        body.append("</div>")
    body.append(_absent(absent, "outliers:"))
    sections.append("".join(body) + "</section>")

    body = ['<section id="cka"><h2>Layer similarity (CKA)</h2>']
    if cka is not None:
        attrs = cka.attrs
        body.append(f'<p class="note">Linear CKA between the layers of {_e(c["model"])} at step {step} '
                    f"({attrs.get('n_samples', '?'):,} samples): 1 = the same representation up to rotation "
                    "and scale, near 0 = unrelated.</p>")
        used = attrs.get("features") or {}
        body.append(_heat(cka, "Features: " + ", ".join(f"{x} {used[x]}" for x in cka.index if x in used)))
    body.append(_absent(absent, "CKA"))
    sections.append("".join(body) + "</section>")

    body = ['<section id="runs"><h2>Runs compared</h2>',
            f'<p class="note">Each run of {_e(c["model"])}: its samples, those with activations of '
            f"{_e(c['layer'])} at step {step}, and, where two or more runs recorded this step, the class separation "
            "measured on each run's own samples.</p>", _table(per_run, "runs")]
    body.append(_absent(absent, "per-run") + _absent(absent, "class separation of run"))
    body.append("<h3>Distributions compared</h3>")
    if between is not None:
        from pipeline.distribution import DEFAULT_K

        body.append(f'<p class="note">Each run against the reference run {_e(between["reference"].iloc[0])}, '
                    f"in the activation space of {_e(c['layer'])} at step {step} (k = {DEFAULT_K}). Precision: "
                    "the share of the run's samples inside the reference's k-NN manifold (realistic); recall: the "
                    "share of the reference's inside the run's (covered); density about 1 and coverage near 1 "
                    "when the run is distributed like the reference; fd: the Fréchet distance of the features; "
                    "diversity: the mean pairwise distance within a class, averaged over classes.</p>")
        body.append(_table(between, "between"))
    body.append(_absent(absent, "comparison metrics"))
    sections.append("".join(body) + "</section>")

    body = ['<section id="manifests"><h2>Run manifests</h2>']
    for m in runs.to_dict("records"):
        items = []
        for key, value in m.items():
            if isinstance(value, np.ndarray | list | tuple):
                value = ", ".join(str(v) for v in value)
            if key in ("settings", "reduce") and isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = json.dumps(json.loads(value), indent=1, sort_keys=True)
                items.append(f"<dt>{_e(key)}</dt><dd><details><summary>{len(value):,} characters</summary>"
                             f"<pre>{_e(value)}</pre></details></dd>")
                continue
            blank = value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value))
            items.append(f"<dt>{_e(key)}</dt><dd>{'–' if blank else _e(value)}</dd>")
        body.append(f'<h3>{_e(m["run_id"])}</h3><dl class="manifest">{"".join(items)}</dl>')
    sections.append("".join(body) + "</section>")

    toc = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("map", "Map"), ("separation", "Class separation"), ("clusters", "Clusters"), ("outliers", "Outliers"),
        ("cka", "CKA"), ("runs", "Runs"), ("manifests", "Manifests")))
    return _TEMPLATE.format(title=_e(title), toc=toc, body="\n".join(sections))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Report · {title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; color: #222; margin: 0 auto; max-width: 1200px; padding: 0 20px 60px; }}
h1 {{ font-size: 22px; margin: 20px 0 6px; }} h2 {{ font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 34px; }}
h3 {{ font-size: 15px; margin: 16px 0 4px; }}
nav a {{ margin-right: 14px; }} .note {{ color: #555; }} .absent {{ color: #8a4b00; background: #fff5e6; padding: 6px 10px; border-radius: 4px; }}
table {{ border-collapse: collapse; margin: 8px 0; }} th, td {{ padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }}
th {{ background: #f6f6f6; }} td:first-child, th:first-child, td.t {{ text-align: left; }}
table.heat td.cell {{ min-width: 34px; text-align: center; border: 1px solid #fff; }} table.heat caption {{ caption-side: bottom; color: #555; text-align: left; }}
th.rot {{ height: 110px; white-space: nowrap; vertical-align: bottom; background: none; }} th.rot span {{ writing-mode: vertical-rl; transform: rotate(180deg); }}
th.rowh {{ text-align: right; white-space: nowrap; background: none; }} th.corner {{ background: none; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 10px; }} figure {{ margin: 0; width: 112px; font-size: 11px; text-align: center; }}
figure img, .noimg {{ width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ddd; border-radius: 4px; background: #fafafa; }}
.noimg {{ display: inline-flex; align-items: center; justify-content: center; color: #999; }}
figcaption {{ word-break: break-word; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; }} .cluster {{ width: 370px; border: 1px solid #eee; border-radius: 6px; padding: 4px 10px 10px; }}
.cluster h3 {{ margin: 6px 0 2px; }} .cluster p {{ margin: 0 0 6px; color: #444; }}
dl.facts, dl.manifest {{ display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }} dt {{ color: #666; }} dd {{ margin: 0; word-break: break-all; }}
pre {{ font-size: 12px; background: #f8f8f8; padding: 8px; max-height: 360px; overflow: auto; }}
</style></head>
<body>
<h1>{title}</h1>
<nav>{toc}</nav>
{body}
</body></html>
"""
