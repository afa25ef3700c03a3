"""Entry point: `streamlit run app/streamlit_app.py` (store from the sidebar, `DMD2VIZ_STORE` or ./data)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repository root
    sys.path.insert(0, str(ROOT))

from app import threads  # noqa: E402, F401  (first: one BLAS thread, set before numpy loads its OpenBLAS)

# isort: split
import streamlit as st  # noqa: E402

from app import auth, data, navigation, state, ui  # noqa: E402

st.set_page_config(page_title="DMD2 visualizer", page_icon="🧭", layout="wide",
                   initial_sidebar_state="expanded")
auth.require_login()
url_now = not st.session_state.get(state.URL_LOADED)
state.load_from_url_once()
page = st.navigation(navigation.pages())
if url_now and page.url_path not in ("", "explore"):  # the view's URL values are Explore's to judge and report
    state.clear_url_fixes()

with st.sidebar:
    st.text_input("Store", value=state.store_path(), key="dmd_store_input",
                  help="Folder of a store (default: the DMD2VIZ_STORE environment variable, else ./data).",
                  on_change=lambda: state.change_store(st.session_state["dmd_store_input"]))
    if refused := state.refused_store():
        roots = ", ".join(f"`{r}`" for r in state.store_roots() or [])
        st.caption(f":red[Not opened: `{refused}` is outside the folders this server opens stores from] ({roots})")
    status = data.store_status(state.store_path())
    if status.ok:
        st.caption(f"{len(status.models)} model(s): {', '.join(status.models)}")
    else:
        st.caption(f":orange[store {status.kind}]")
    ui.demo_extras_status()  # the demo's comparison runs, added in the background after the first map
auth.account_box()

page.run()
