"""The app's pages, in one place. A page whose file is not in this checkout is left out of the menu.

Page scripts live in ``app/app_pages/``, not ``app/pages/``: Streamlit treats a ``pages/`` folder beside the
entry script as a legacy multipage app, and then a fresh server opening a shared link such as ``/overview``
runs that file without the entry script (no sidebar, no store selection, no ``st.navigation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent / "app_pages"


@dataclass(frozen=True)
class PageSpec:
    file: str  # under app/app_pages/
    title: str
    icon: str
    url_path: str
    default: bool = False


PAGES = (
    PageSpec("explore.py", "Explore", ":material/scatter_plot:", "explore", default=True),
    PageSpec("compare.py", "Compare layers", ":material/compare:", "compare-layers"),
    PageSpec("compare_runs.py", "Compare runs", ":material/compare_arrows:", "compare-runs"),
    PageSpec("motion.py", "Motion", ":material/animation:", "motion"),
    PageSpec("inside.py", "Inside", ":material/grid_on:", "inside"),
    PageSpec("analysis.py", "Analysis", ":material/insights:", "analysis"),
    PageSpec("overview.py", "Overview", ":material/dashboard:", "overview"),
    PageSpec("search.py", "Search", ":material/search:", "search"),
)


def available() -> list[PageSpec]:
    return [p for p in PAGES if (PAGES_DIR / p.file).is_file()]


def pages() -> list[st.Page]:
    return [page(p.file) for p in available()]


def page(file: str) -> st.Page:
    """The page of `file` (as `st.navigation` holds it), for `st.page_link` from another page."""
    (spec,) = [p for p in PAGES if p.file == file]
    return st.Page(PAGES_DIR / spec.file, title=spec.title, icon=spec.icon, url_path=spec.url_path,
                   default=spec.default)
