"""Linked facets of the Analysis page: which samples pass the facet filters, what each facet's bars hold, and
how the filters travel in the URL. Pure (no Streamlit): the page draws, this module decides.

A facet is one column of the view's samples (``store/schema.py`` says which columns exist and their roles):
the class (``label``, or ``category`` for prompt models), the run, the step (a map of every step), other
named groups (an edit's operation) and every numeric column that varies. A filter keeps the samples whose
value is one of the chosen ones (categories) or inside a closed range (numbers); samples pass when they pass
every filter. A facet's bars show the whole view against the samples that pass the *other* facets' filters
(its own filter is shown by which bars are active), so one can still widen a filter from its own chart.

In the URL a filter is ``f.<column>=<value>~<value>`` or ``f.<column>=<low>..<high>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from store import schema

URL_PREFIX = "f."
SEP = "~"  # as app.state: never inside run ids, sample ids or labels such as "207: golden retriever"
RANGE_SEP = ".."
MISSING = "(none)"
MAX_BARS = 24  # a category facet shows its most frequent values; the rest are one "other" bar
MAX_BINS = 20
OTHER = "(other)"
# numbers that name something another facet shows better: the class code (the class facet)
_NOT_FACETS = {"class_id"}


class FacetError(ValueError):
    """A filter that cannot apply (an unknown column, a malformed range)."""


@dataclass(frozen=True)
class Facet:
    column: str
    title: str
    kind: str  # "category" or "numeric"
    integer: bool = False  # a number column of whole numbers: its bins and ranges are whole numbers too


@dataclass(frozen=True)
class Filter:
    """One facet's filter: ``values`` (categories) or the closed range ``low``..``high`` (numbers)."""

    column: str
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    @property
    def numeric(self) -> bool:
        return self.low is not None

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of ``frame`` pass (a row without the value never passes a range)."""
        if self.column not in frame.columns:
            raise FacetError(f"no column {self.column!r} in this view")
        col = frame[self.column]
        if self.numeric:
            x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):
                return (x >= self.low) & (x <= self.high)
        return category_values(col).isin(set(self.values)).to_numpy()

    def text(self, title: str | None = None) -> str:
        """How the page names it: ``run: a, b`` or ``seed: 10 – 20``."""
        name = title or self.column
        if self.numeric:
            return f"{name}: {_num(self.low)} – {_num(self.high)}"
        shown = ", ".join(self.values[:3]) + (f" +{len(self.values) - 3}" if len(self.values) > 3 else "")
        return f"{name}: {shown}"

    def to_param(self) -> str:
        if self.numeric:
            return f"{_num(self.low)}{RANGE_SEP}{_num(self.high)}"
        return SEP.join(self.values)


Filters = tuple[Filter, ...]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def category_values(col: pd.Series) -> pd.Series:
    """A column's values as the facet names them: text, whole numbers without ``.0``, missing as MISSING."""
    def name(v):
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return MISSING
        if isinstance(v, float | np.floating) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return col.astype(object).map(name)


# ------------------------------------------------------------------------------------------ which facets

def class_column(frame: pd.DataFrame) -> str:
    """What a class is: the prompt's category for prompt models, else the label."""
    return "category" if "prompt" in frame.columns and frame["prompt"].notna().any() else "label"


def facets_for(frame: pd.DataFrame) -> list[Facet]:
    """The facets of a view's samples, in the page's order: class (and the prompt, for prompt models), run,
    step, other named groups, numbers; a column with one value (nothing to filter) is left out."""
    vocab = schema.SAMPLE_VOCAB
    out: list[Facet] = []

    def varies(col: str) -> bool:
        return col in frame.columns and frame[col].nunique(dropna=False) > 1

    klass = class_column(frame)
    if varies(klass):
        out.append(Facet(klass, "class" if klass == "label" else vocab[klass].title, "category"))
    if klass == "category" and varies("label"):  # prompt models: the prompt itself (the most frequent ones)
        out.append(Facet("label", "prompt", "category"))
    for col in ("run_id", "step"):
        if varies(col):
            out.append(Facet(col, vocab[col].title if col in vocab.names else col, "category"))
    for col, kind in vocab.colors.items():
        if kind == "category" and col not in ("label", "category", "run_id") and varies(col):
            out.append(Facet(col, vocab[col].title, "category"))
    for col in vocab.numeric:
        if col not in _NOT_FACETS and varies(col):
            out.append(Facet(col, vocab[col].title, "numeric", integer=_whole(frame[col])))
    return out


def _whole(col: pd.Series) -> bool:
    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    x = x[np.isfinite(x)]
    return bool(len(x)) and bool(np.all(np.mod(x, 1) == 0))


# ------------------------------------------------------------------------------------------ filtering

def mask(frame: pd.DataFrame, filters: Iterable[Filter], skip: str | None = None) -> np.ndarray:
    """Rows passing every filter (but the one on column ``skip``)."""
    keep = np.ones(len(frame), dtype=bool)
    for f in filters:
        if f.column != skip:
            keep &= f.mask(frame)
    return keep


def passing(ids, frame: pd.DataFrame, filters: Iterable[Filter]) -> list[str]:
    """The ids (aligned with ``frame``'s rows) of the rows that pass every filter, in order."""
    ids = np.asarray(ids).astype(str)
    if len(ids) != len(frame):
        raise FacetError(f"{len(ids)} ids for {len(frame)} rows")
    return ids[mask(frame, filters)].tolist()


def set_filter(filters: Filters, new: Filter | None, column: str | None = None) -> Filters:
    """``filters`` with ``new`` in place of the filter on its column (kept in its place, else added last);
    ``new`` None (or with no values) removes the filter on ``column``."""
    column = new.column if new is not None else column
    empty = new is None or (not new.numeric and not new.values)
    out, placed = [], False
    for f in filters:
        if f.column == column:
            if not empty:
                out.append(new)
            placed = True
        else:
            out.append(f)
    if not placed and not empty:
        out.append(new)
    return tuple(out)


def toggle(filters: Filters, column: str, value: str) -> Filters:
    """A click on a category bar: the value joins the column's filter, or leaves it if it was there (the
    last value leaving removes the filter)."""
    current = next((f for f in filters if f.column == column and not f.numeric), None)
    values = list(current.values) if current else []
    values = [v for v in values if v != value] if value in values else [*values, value]
    return set_filter(filters, Filter(column, tuple(values)), column)


def set_range(filters: Filters, column: str, low: float, high: float) -> Filters:
    """A range selected on a numeric facet (the ends in either order)."""
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise FacetError(f"a range needs two finite numbers, got {low}..{high}")
    return set_filter(filters, Filter(column, low=min(low, high), high=max(low, high)))


def from_selection(filters: Filters, facet: Facet, selection: Mapping) -> Filters:
    """``filters`` after a selection on a facet's chart: for a category, each clicked value toggles
    (``[{"value": v}, ...]``); for a number, a clicked bin (``[{"low": a, "high": b}]``) or a brushed
    interval (``{field: [a, b]}``) becomes the range. An empty selection changes nothing."""
    if isinstance(selection, Mapping):  # an interval: {field: [low, high]}
        for ends in selection.values():
            if isinstance(ends, list | tuple) and len(ends) == 2 and facet.kind == "numeric":
                low, high = sorted(float(e) for e in ends)
                if facet.integer:  # the whole numbers inside the brush
                    low, high = math.ceil(low), math.floor(high)
                    if low > high:
                        return filters
                return set_range(filters, facet.column, low, high)
        return filters
    for point in selection or []:
        if facet.kind == "category" and "value" in point and point["value"] != OTHER:
            filters = toggle(filters, facet.column, str(point["value"]))
        elif facet.kind == "numeric" and "low" in point and "high" in point:
            filters = set_range(filters, facet.column, point["low"], point["high"])
    return filters


# ------------------------------------------------------------------------------------------ the bars

def _bins(x: np.ndarray, integer: bool) -> list[tuple[float, float]]:
    """Closed (low, high) bins over the finite values ``x``: whole-number ranges for whole numbers (one value
    each when there are at most MAX_BINS), else MAX_BINS equal widths."""
    lo, hi = float(np.min(x)), float(np.max(x))
    if integer:
        width = max(1, math.ceil((hi - lo + 1) / MAX_BINS))
        return [(a, a + width - 1) for a in np.arange(lo, hi + 1, width, dtype=float)]
    if hi == lo:
        return [(lo, hi)]
    edges = np.linspace(lo, hi, MAX_BINS + 1)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def distribution(frame: pd.DataFrame, facet: Facet, filters: Filters) -> pd.DataFrame:
    """A facet's bars: for a category, value, whole (rows of the view), selected (rows passing the other
    facets' filters) and active (the value is in this facet's filter; every bar when it has none), most
    frequent first with the rest in one OTHER bar; for a number, the same per bin with ``low`` and ``high``
    (closed, as a range filter on them keeps exactly the bin's rows: bins of whole numbers are one value
    each)."""
    others = mask(frame, filters, skip=facet.column)
    own = next((f for f in filters if f.column == facet.column), None)
    if facet.kind == "category":
        values = category_values(frame[facet.column])
        whole = values.value_counts()
        top = whole.index[:MAX_BARS].tolist() if len(whole) > MAX_BARS else whole.index.tolist()
        shown = values.where(values.isin(set(top)), OTHER)
        sel = shown[others].value_counts()
        order = top + ([OTHER] if len(whole) > MAX_BARS else [])
        counts = shown.value_counts()
        return pd.DataFrame({
            "value": order, "whole": [int(counts.get(v, 0)) for v in order],
            "selected": [int(sel.get(v, 0)) for v in order],
            "active": [own is None or v in own.values for v in order]})
    x = pd.to_numeric(frame[facet.column], errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(x)
    if not finite.any():
        return pd.DataFrame(columns=["low", "high", "value", "whole", "selected", "active"])
    integer = bool(np.all(np.mod(x[finite], 1) == 0))
    bins = _bins(x[finite], integer)
    rows = []
    for i, (lo, hi) in enumerate(bins):
        # closed for whole numbers and the last bin; else half-open (a range filter keeps both ends: a
        # value on an inner edge is counted in the next bin and kept by both)
        inside = (x >= lo) & ((x <= hi) if integer or i == len(bins) - 1 else (x < hi))
        active = own is None or (own.numeric and lo <= own.high and hi >= own.low)
        rows.append(dict(low=lo, high=hi, value=_num(lo) if lo == hi else f"{_num(lo)}–{_num(hi)}",
                         whole=int(inside.sum()), selected=int((inside & others).sum()), active=active))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ the URL

def to_params(filters: Iterable[Filter]) -> dict[str, str]:
    return {URL_PREFIX + f.column: f.to_param() for f in filters}


def from_params(params: Mapping[str, str], columns: Iterable[str] | None = None) -> tuple[Filters, list[str]]:
    """The filters of a URL's ``f.<column>`` parameters, and what could not be used (an unknown column, a
    malformed range): left out, said in words."""
    known = set(columns) if columns is not None else None
    out, problems = [], []
    for key, raw in params.items():
        if not key.startswith(URL_PREFIX) or raw is None:
            continue
        col = key[len(URL_PREFIX):]
        if known is not None and col not in known:
            problems.append(f"`{key}`: no such facet in this view")
            continue
        if RANGE_SEP in raw and _is_range(raw):
            lo, hi = raw.split(RANGE_SEP, 1)
            out.append(Filter(col, low=min(float(lo), float(hi)), high=max(float(lo), float(hi))))
            continue
        values = tuple(v for v in str(raw).split(SEP) if v)
        if values:
            out.append(Filter(col, values))
        else:
            problems.append(f"`{key}`: no values")
    return tuple(out), problems


def _is_range(raw: str) -> bool:
    lo, _, hi = raw.partition(RANGE_SEP)
    try:
        return math.isfinite(float(lo)) and math.isfinite(float(hi))
    except ValueError:
        return False
