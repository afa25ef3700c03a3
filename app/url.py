"""A page's URL: its query values read once per session (a link opens the view it names; after that the
widgets own the values), tolerant parsing of those values (the URL is user input: a malformed one is left out,
never an error) and writing the page's current parameters back so that the address bar is a shareable link."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

SEP = "~"  # list separator in the URL (never inside run ids, layer names or sample ids)


def current() -> dict[str, str]:
    """The query parameters of the page's URL now."""
    return {k: st.query_params.get(k) for k in st.query_params}


def sync(params: dict[str, str]) -> None:
    """Make the URL's query parameters exactly `params` (no write when they already are: no extra rerun)."""
    if current() != params:
        st.query_params.from_dict(params)


def read_once(loaded_key: str) -> dict[str, str] | None:
    """The URL's query parameters on the first call in this session for `loaded_key`, None on later calls."""
    if st.session_state.get(loaded_key):
        return None
    st.session_state[loaded_key] = True
    return current()


def load_once(loaded_key: str, values_key: str, parse: Callable[[dict], dict]) -> dict:
    """`parse` of the URL that opened the page in this session (parsed on its first run, kept in
    `st.session_state[values_key]`); {} when there is nothing."""
    q = read_once(loaded_key)
    if q is not None:
        st.session_state[values_key] = parse(q)
    return st.session_state.get(values_key) or {}


def parse_str(q: dict, name: str) -> str | None:
    """The parameter's text, None when absent or empty."""
    return str(q[name]) if q.get(name) else None


def parse_int(q: dict, name: str) -> int | None:
    """The parameter as an integer, None when absent, empty or not a number."""
    raw = q.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def parse_list(q: dict, name: str, sep: str = SEP) -> list[str] | None:
    """The parameter's `sep`-separated items (empty items dropped), None when absent or empty."""
    return [p for p in str(q[name]).split(sep) if p] if q.get(name) else None


def parse_choice(q: dict, name: str, choices) -> str | None:
    """The parameter when it is one of `choices`, else None."""
    return q.get(name) if q.get(name) in choices else None


def pick(q: dict, names, parse: Callable[[dict, str], object], *args) -> dict:
    """{name: parse(q, name, *args)} for the `names` whose value parses (is not None)."""
    out = {}
    for name in names:
        value = parse(q, name, *args)
        if value is not None:
            out[name] = value
    return out
