"""What every page of the app starts with: its title over the session's store (or the no-store panel, which
stops the page) and widget values given before the widgets are drawn."""

from __future__ import annotations

import streamlit as st

from app import data, state, ui


def header(title: str) -> tuple[str, data.StoreStatus]:
    """Draw the page's title; with no usable store, the no-store panel (which stops the page). Returns the
    session's store path and its status."""
    path = state.store_path()
    status = data.store_status(path)
    st.title(title)
    if not status.ok:
        ui.no_store_panel(status)
    return path, status


def init_widget(key: str, value, valid=None) -> None:
    """Give a widget its starting value (the URL's, the view's, or a default) before it is drawn, or replace a
    stale one (`valid(current)` false: e.g. a layer of another model)."""
    if key not in st.session_state or (valid is not None and not valid(st.session_state[key])):
        st.session_state[key] = value


def model_picker(container, models: list[str], url_model: str | None, key: str) -> str:
    """The page's model selectbox, starting on the URL's model, else Explore's, else the first."""
    start = next(m for m in (url_model, state.get_view().model, models[0]) if m in models)
    init_widget(key, start, lambda v: v in models)
    return container.selectbox("Model", models, key=key)


def runs_picker(container, path: str, model: str, url_runs, key: str, help: str) -> list[str]:
    """The page's run multiselect among the model's runs (empty: every run), starting on the URL's runs."""
    runs_all = data.model_samples(path, model)["run_id"].drop_duplicates().tolist()
    init_widget(key, [r for r in url_runs or [] if r in runs_all], lambda v: all(r in runs_all for r in v))
    return container.multiselect("Runs", runs_all, key=key, placeholder="all runs", help=help)
