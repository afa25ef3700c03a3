"""Optional sign-in: when ``.streamlit/secrets.toml`` has an ``[auth]`` section (OIDC, see docs/app.md), every
page asks for a login first (``st.login``; needs the Authlib package). Without it the app is open, as for a
local or otherwise protected deployment."""

from __future__ import annotations

import streamlit as st


def login_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def require_login() -> None:
    """Stop the page with a sign-in screen unless the viewer is logged in (only when auth is configured)."""
    if not login_configured() or _logged_in():
        return
    st.title("DMD2 visualizer")
    st.info("This server requires you to sign in.", icon=":material/lock:")
    providers = [k for k, v in st.secrets["auth"].items() if isinstance(v, dict)]
    if providers:
        for name in providers:
            st.button(f"Sign in with {name}", on_click=st.login, args=(name,), key=f"login_{name}")
    else:
        st.button("Sign in", on_click=st.login, key="login", type="primary")
    st.stop()


def account_box() -> None:
    """Who is signed in, and a sign-out button (sidebar), when auth is configured."""
    if login_configured() and _logged_in():
        with st.sidebar:
            st.caption(f"Signed in as {st.user.get('email') or st.user.get('name') or 'you'}")
            st.button("Sign out", on_click=st.logout, key="logout")


def _logged_in() -> bool:
    return bool(st.user.get("is_logged_in", False))
