"""Runs side by side (the Compare runs page): which step each run is measured at, which of their samples
correspond, which runs to open, how checkpoint runs line up over training, and the joint map as a figure.

* Steps: `run_steps` lists what each run recorded on a layer (step, sigma, timestep); `resolve_run_steps`
  turns a request per run (a step, a negative one from that run's own last, None/"last") into steps, with
  an error naming a run that lacks its step; `shared_steps` are the steps every run recorded.
* Links: `link_groups` pairs samples of different runs that share a seed and a class (class models: the
  class id; prompt models: the prompt). Real runs are left out: their seed drew only the noise added to a
  real image, so a generated sample with that seed is not the same draw.
* `default_runs`: what the page opens on (real first, as the reference, then teachers, generated runs and
  checkpoint runs in training order, then encoded runs; edit runs only when asked for). An encoded run (a
  run's final images through the network at the real images' noise level, pipeline/real.py) stands in for
  the run it encodes, in that run's place: a 1-step run's only step sees pure noise, its encoded outputs meet
  the real images at their step, so that each run's last step is the step of the comparison.
* `CheckpointPlan`: the selected runs split into fixed runs and checkpoint runs in training order; a
  position of the slider is the fixed runs plus one checkpoint; `over_training`: each checkpoint's overall
  metrics against the reference, by training step.
* `map_figure`, `map_png`: the joint map coloured by run with its link lines (HTML through
  `pipeline.figures`, the PNG by its Pillow renderer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.distribution import LAST, class_column, step_request  # noqa: F401  (class_column: one owner)
from store.schema import GENERATED_KIND

__all__ = ["RunPairsError", "run_steps", "resolve_run_steps", "shared_steps", "link_groups", "default_runs",
           "encoded_sources",
           "CheckpointPlan", "checkpoint_plan", "over_training", "class_column", "run_colors", "map_figure",
           "map_png", "KIND_ORDER", "LAST"]

KIND_ORDER = ("real", "teacher", GENERATED_KIND, "student", "encoded", "edit")  # the reference first
_UNLINKED_KINDS = ("real",)


class RunPairsError(ValueError):
    """A request about runs that cannot be served (a run without the layer or the step), one line."""


# -- steps ---------------------------------------------------------------------------------------------------

def run_steps(store, model: str, layer: str, runs: Sequence[str] | None = None) -> pd.DataFrame:
    """The steps each run recorded on `layer`: columns run_id, step, sigma, timestep (one row per run and
    step, ordered by run and step); `runs` None: every run of the model. Only the step columns are read."""
    if model not in store.models() or layer not in store.layers(model):
        return pd.DataFrame({"run_id": pd.Series(dtype=object), "step": pd.Series(dtype="int64"),
                             "sigma": pd.Series(dtype="float64"), "timestep": pd.Series(dtype="float64")})
    where, args = "model = ? AND layer = ?", [model, layer]
    if runs is not None:
        runs = [str(r) for r in runs]
        if not runs:
            return run_steps(store, model, layer, None).iloc[:0]
        where += f" AND run_id IN ({', '.join('?' * len(runs))})"
        args += runs
    cur = store.cursor()
    try:
        table = cur.execute(f"SELECT run_id, CAST(step AS BIGINT) AS step, any_value(sigma) AS sigma, "
                            f"any_value(timestep) AS timestep FROM activations WHERE {where} "
                            f"GROUP BY run_id, step ORDER BY run_id, step", args).df()
    finally:
        cur.close()
    table["sigma"] = table["sigma"].astype("float64")
    table["timestep"] = table["timestep"].astype("float64")
    return table.reset_index(drop=True)


def resolve_run_steps(store, model: str, layer: str, steps: Mapping[str, int | str | None],
                      table: pd.DataFrame | None = None) -> dict[str, int]:
    """run -> the step it is measured at, for a request per run (see the module docstring); `table`: the
    `run_steps` of these runs when the caller has it. Raises `RunPairsError` naming a run without the
    layer, or without the step asked for (with the steps it has)."""
    if not steps:
        raise RunPairsError("no runs given")
    table = run_steps(store, model, layer, list(steps)) if table is None else table
    out = {}
    for run, step in steps.items():
        want = step_request(step, RunPairsError)
        have = sorted(int(s) for s in table.loc[table["run_id"] == run, "step"])
        if not have:
            raise RunPairsError(f"run {run!r} has no activations of {layer!r}")
        if want < 0:
            if -want > len(have):
                raise RunPairsError(f"run {run!r} recorded {len(have)} step(s) of {layer!r}: {have}; step "
                                    f"{want} counts back further")
            out[str(run)] = have[want]
        elif want not in have:
            raise RunPairsError(f"run {run!r} did not record step {want} of {layer!r}; its steps: {have}")
        else:
            out[str(run)] = want
    return out


def shared_steps(table: pd.DataFrame, runs: Sequence[str]) -> list[int]:
    """The steps every one of `runs` recorded (from `run_steps`), in order."""
    sets = [set(int(s) for s in table.loc[table["run_id"] == r, "step"]) for r in runs]
    return sorted(set.intersection(*sets)) if sets else []


# -- which samples correspond --------------------------------------------------------------------------------

def link_groups(samples: pd.DataFrame, runs: Sequence[str], kinds: Mapping[str, str] | None = None
                ) -> list[list[str]]:
    """Samples of different runs that share a seed and a class (class id; the prompt for prompt models):
    each group's sample ids in the order of `runs`, only groups that span two or more runs, in the order of
    their first sample. Runs whose kind (`kinds`, run -> kind) is ``real`` are left out (see the module
    docstring); a run with several samples of one (seed, class) links its first."""
    kinds = kinds or {}
    linked = [str(r) for r in runs if kinds.get(str(r), GENERATED_KIND) not in _UNLINKED_KINDS]
    if len(linked) < 2 or not len(samples):
        return []
    f = samples.loc[samples["run_id"].astype(str).isin(linked) & samples["seed"].notna()]
    if "class_id" in f and f["class_id"].notna().any():
        what = f["class_id"].astype("Int64").astype(str)
    elif "prompt" in f:
        what = f["prompt"].astype(str)
    else:
        return []
    f = pd.DataFrame({"run": f["run_id"].astype(str).to_numpy(), "seed": f["seed"].astype("int64").to_numpy(),
                      "what": what.to_numpy(), "id": f["sample_id"].astype(str).to_numpy(),
                      "order": np.arange(len(f))})
    f = f[f["what"].ne("<NA>")].drop_duplicates(["run", "seed", "what"])
    wide = f.pivot(index=["seed", "what"], columns="run", values="id")
    wide = wide[[r for r in linked if r in wide.columns]]
    wide = wide[wide.notna().sum(axis=1) >= 2]
    first = f.groupby(["seed", "what"])["order"].min().reindex(wide.index)
    wide = wide.iloc[np.argsort(first.to_numpy(), kind="stable")]
    return [[i for i in row if isinstance(i, str)] for row in wide.itertuples(index=False, name=None)]


# -- which runs ----------------------------------------------------------------------------------------------

def encoded_sources(runs: pd.DataFrame) -> dict[str, str]:
    """Encoded run -> the run whose final images it encodes (its manifest's ``settings.source``), from
    `Store.runs()`."""
    import json

    out = {}
    for run, settings in zip(runs["run_id"].astype(str), runs.get("settings", pd.Series(index=runs.index)),
                             strict=True):
        try:
            source = (json.loads(settings) if isinstance(settings, str) else settings or {}).get("source")
        except (ValueError, AttributeError):
            continue
        if isinstance(source, dict) and source.get("kind") == "run" and source.get("run_id"):
            out[run] = str(source["run_id"])
    return out


def default_runs(runs: pd.DataFrame, kinds: Mapping[str, str], candidates: Sequence[str],
                 include_edits: bool = False, stand_ins: bool | None = None) -> list[str]:
    """The runs the page opens on: those of `candidates` (runs with the layer), real runs first (the
    reference of the metrics), then teachers, generated runs, and the other kinds; within a kind, runs of a
    checkpoint in training order after the others, else in the store's order. `runs`: `Store.runs()`;
    `kinds`: `Store.run_kinds()`. Edit runs (a few results each) only with `include_edits`. With `stand_ins`
    (default: unless `include_edits`, which asks for every run, as the page's menu does), a run that an
    encoded run among `candidates` encodes is left out: the encoded run stands in for it, in its place (a
    teacher's stand-in among the teachers)."""
    wanted = {str(r) for r in candidates}
    if include_edits if stand_ins is None else not stand_ins:
        standing = {}
    else:
        standing = {enc: src for enc, src in encoded_sources(runs).items() if enc in wanted and src in wanted}
    wanted -= set(standing.values())
    table = runs.loc[runs["run_id"].astype(str).isin(wanted)].copy()
    table["run_id"] = table["run_id"].astype(str)
    table["kind"] = table["run_id"].map(lambda r: kinds.get(standing.get(r, r), GENERATED_KIND))
    if not include_edits:
        table = table[table["kind"] != "edit"]
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    table["kind_rank"] = table["kind"].map(lambda k: rank.get(k, len(rank)))
    table["position"] = np.arange(len(table))
    steps = table["checkpoint_step"] if "checkpoint_step" in table else pd.Series(pd.NA, index=table.index)
    table["is_checkpoint"] = steps.notna().to_numpy()
    table["ckpt"] = pd.to_numeric(steps, errors="coerce").fillna(-1).to_numpy()
    table = table.sort_values(["kind_rank", "is_checkpoint", "ckpt", "position"], kind="stable")
    known = table["run_id"].tolist()
    return known + sorted(wanted - set(known) - {r for r, k in kinds.items() if k == "edit" and not include_edits})


@dataclass(frozen=True)
class CheckpointPlan:
    """The selected runs as the checkpoint slider uses them: `fixed` runs (shown at every position; the
    first is the metrics' reference) and the checkpoint runs in training order (`sequence`, with their
    `steps`). The slider moves over `positions`: every checkpoint, or all but the first when no run is fixed
    (the first checkpoint is then the reference)."""

    fixed: tuple[str, ...]
    sequence: tuple[str, ...]
    steps: tuple[int, ...]

    @property
    def active(self) -> bool:
        """Whether there is something to slide over: two or more positions (two checkpoints beside fixed runs,
        three alone; two checkpoints alone are one comparison, shown as it is)."""
        return len(self.positions) >= 2

    @property
    def positions(self) -> tuple[str, ...]:
        return self.sequence if self.fixed else self.sequence[1:]

    def runs_at(self, i: int) -> list[str]:
        """The runs shown at slider position `i` (clamped): the fixed runs (or the first checkpoint) and the
        checkpoint of that position."""
        pos = self.positions
        i = min(max(int(i), 0), len(pos) - 1)
        return [*(self.fixed or self.sequence[:1]), pos[i]]

    def step_of(self, run: str) -> int:
        return self.steps[self.sequence.index(run)]


def checkpoint_plan(selected: Sequence[str], checkpoints: pd.DataFrame) -> CheckpointPlan:
    """Split `selected` into fixed runs (their order kept) and checkpoint runs (`Store.checkpoint_runs`'s
    training order)."""
    chosen = [str(r) for r in selected]
    order = [(str(r), int(s)) for r, s in zip(checkpoints["run_id"], checkpoints["checkpoint_step"], strict=True)
             if str(r) in set(chosen)]
    ckpt = {r for r, _ in order}
    return CheckpointPlan(fixed=tuple(r for r in chosen if r not in ckpt), sequence=tuple(r for r, _ in order),
                          steps=tuple(s for _, s in order))


def over_training(store, model: str, layer: str, plan: CheckpointPlan, step="last", k: int = 5,
                  progress=None) -> pd.DataFrame:
    """Each checkpoint of `plan` against its reference (the first fixed run, else the first checkpoint):
    the overall (``all``) row of `pipeline.distribution.compare_runs` per checkpoint, with its training step
    (column ``checkpoint_step``), in training order. The per-class tables are computed (and cached) as the
    slider's positions read them, so moving the slider afterwards costs nothing."""
    from pipeline.distribution import ALL, compare_runs

    report = progress or (lambda fraction, message: None)
    rows = []
    for i, run in enumerate(plan.positions):
        reference = plan.runs_at(i)[0]
        table = compare_runs(store, model, layer, [reference, run], step=step, k=k, per_class=True,
                             progress=lambda f, m, i=i: report((i + f) / len(plan.positions), m))
        row = table[table["class"] == ALL].iloc[0].to_dict()
        rows.append({"checkpoint_step": plan.step_of(run), **row})
    return pd.DataFrame(rows)


# -- the joint map as a figure -------------------------------------------------------------------------------

def run_colors(runs: Sequence[str]) -> dict[str, str]:
    """One colour per run, by its position in `runs` (so a run keeps its colour as others come and go)."""
    from pipeline.figures import palette

    return dict(zip([str(r) for r in runs], palette(len(runs)), strict=True))


def _codes(frame: pd.DataFrame, runs: Sequence[str]) -> np.ndarray:
    code = {str(r): i for i, r in enumerate(runs)}
    codes = frame["run_id"].astype(str).map(code)
    if codes.isna().any():
        raise RunPairsError(f"points of runs not in {list(runs)}: {sorted(set(frame['run_id'][codes.isna()]))}")
    return codes.to_numpy(dtype=np.int64)


def map_figure(xy: np.ndarray, frame: pd.DataFrame, runs: Sequence[str], title: str,
               links: Sequence[Sequence[str]] = (), colors: Mapping[str, str] | None = None,
               names: Mapping[str, str] | None = None):
    """The joint map as a plotly figure: one trace per run (in the order of `runs`, named by `names`), and
    the `links` (groups of sample ids) as thin grey lines under the points. `frame`: the samples of the
    points, row i is point i (sample_id, run_id, label, seed, index)."""
    import plotly.graph_objects as go

    from pipeline import figures

    xy = np.asarray(xy, dtype=float)
    colors = colors or run_colors(runs)
    fig = figures.map_figure(xy[:, 0], xy[:, 1], figures.hover_text(frame), title, codes=_codes(frame, runs),
                             names=[(names or {}).get(str(r), str(r)) for r in runs],
                             colors=[colors[str(r)] for r in runs])
    if links:
        row = {s: i for i, s in enumerate(frame["sample_id"].astype(str))}
        lx, ly = [], []
        for group in links:
            at = [row[s] for s in group if s in row]
            if len(at) > 1:
                lx += [*xy[at, 0].tolist(), None]
                ly += [*xy[at, 1].tolist(), None]
        if lx:
            fig.add_trace(go.Scattergl(x=lx, y=ly, mode="lines", hoverinfo="skip", name="same seed and class",
                                       line=dict(color="rgba(120,120,120,0.35)", width=1)))
            fig.data = (fig.data[-1], *fig.data[:-1])  # under the points
    return fig


def map_png(xy: np.ndarray, frame: pd.DataFrame, runs: Sequence[str], title: str, subtitle: str = "",
            colors: Mapping[str, str] | None = None, names: Mapping[str, str] | None = None) -> bytes:
    """The joint map as a PNG coloured by run, with the legend of the runs (`pipeline.figures.map_png`)."""
    from pipeline import figures

    xy = np.asarray(xy, dtype=float)
    colors = colors or run_colors(runs)
    return figures.map_png(xy[:, 0], xy[:, 1], _codes(frame, runs),
                           [(names or {}).get(str(r), str(r)) for r in runs], [colors[str(r)] for r in runs],
                           title, subtitle=subtitle, legend_title="run")
