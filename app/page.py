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
