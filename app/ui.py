"""Small pieces of UI shared by the pages: the no-store panel and the demo-store builder."""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field

import streamlit as st

from app import data, state


@dataclass
class DemoBuild:
    """One demo-store build per server process, run in a thread so no page ever freezes while it runs."""

    path: str | None = None
    done: int = 0
    total: int = 0
    runs_finished: int = 0
    stage: str = ""  # after the runs: which default map is being computed
    error: str | None = None
    finished: bool = False
    ready: bool = False  # the first runs and maps are in: the app shows its map while the extra runs are added
    extra_run: str = ""  # the extra run being added (real digits, ...) and its progress
    extra_done: int = 0
    extra_total: int = 0
    extras_grace_s: float = 5.0  # after the first map is ready, before the extra runs take the cores
    started_at: float = 0.0
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, path: str) -> bool:
        """Start building into ``path`` unless a build is already running; returns whether it started."""
        with self._lock:
            if self.running:
                return False
            builder = _demo_builder()
            if builder is None:
                self.error = "pipeline.demo.build_demo_store is not available in this checkout"
                return False
            self.path, self.done, self.total, self.runs_finished, self.stage = path, 0, 0, 0, ""
            self.error, self.finished, self.started_at = None, False, time.time()
            self.ready, self.extra_run, self.extra_done, self.extra_total = False, "", 0, 0
            self._thread = threading.Thread(target=self._run, args=(builder, path), daemon=True,
                                            name="demo-store-build")
            self._thread.start()
            return True

    def _on_batch(self, done: int, total: int) -> None:
        if total and done >= total:
            self.runs_finished += 1
        self.done, self.total = done, total

    def _on_map(self, i: int, n: int, layer: str) -> None:
        self.stage = f"computing the first maps · {layer} ({i + 1} of {n})"

    def _on_ready(self, _runs) -> None:
        self.ready = True
        # called in the build's thread: the extra runs start once the page has had time to draw its first map
        time.sleep(self.extras_grace_s)

    def _on_extra(self, run: str, done: int, total: int) -> None:
        self.extra_run, self.extra_done, self.extra_total = run, done, total

    @property
    def adding(self) -> bool:
        """The first map is shown and the extra runs are still being added."""
        return self.ready and not self.finished

    def extra_label(self) -> str:
        what = EXTRA_RUN_TITLES.get(self.extra_run, f"the run {self.extra_run}" if self.extra_run else "runs")
        if self.extra_total and self.extra_done >= self.extra_total:
            return f"placing the {what} on the maps"
        if not self.extra_total:  # before the first run's first batch (the grace for the first map, the model load)
            return "adding runs for comparison · starting"
        return f"adding {what} for comparison · {self.extra_done:,} / {self.extra_total:,}"

    def _run(self, builder, path: str) -> None:
        try:
            extras = dict(extras=True, on_ready=self._on_ready, on_extra=self._on_extra)
            accepted = inspect.signature(builder).parameters
            builder(path, progress=False, on_batch=self._on_batch, on_map=self._on_map,
                    **{k: v for k, v in extras.items() if k in accepted})  # a builder without extra runs: none
        except Exception as exc:  # shown in the page, with the command to run it by hand
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished = True


EXTRA_RUN_TITLES = {"demo-real": "real digits", "demo-student": "digits of the distilled 1-step student",
                    "demo-1step-encoded": "naive 1-step digits at the real digits' noise level (σ 0.002)",
                    "demo-student-encoded": "student digits at the real digits' noise level (σ 0.002)",
                    "demo-teacher": "digits of the 18-step teacher (EDM's Heun sampler)",
                    "demo-teacher-encoded": "teacher digits at the real digits' noise level (σ 0.002)"}
"""How the progress names the demo's extra runs (pipeline.demo.DEMO_EXTRAS), by run id: after "adding ..." and
"placing the ...", so without an article."""


def _demo_builder():
    try:
        from pipeline.demo import build_demo_store
    except Exception:  # pipeline not importable (missing torch, partial checkout): show the commands
        return None
    return build_demo_store


@st.cache_resource
def demo_build() -> DemoBuild:
    return DemoBuild()


def no_store_panel(status: data.StoreStatus) -> None:
    """Explain why there is nothing to show and how to build a store; builds the demo store by itself when
    the default store is missing or empty. Always ends the page (``st.stop``)."""
    path = status.path
    if state.is_default_store(path) and _demo_builder() is not None:
        build = demo_build()
        if not build.running and not build.finished:
            build.start(data.resolve(path))
        _demo_progress(path)
        st.stop()
    what = {"missing": "does not exist", "not a folder": "is not a folder",
            "empty": "holds no samples yet"}.get(status.kind, status.kind)
    st.info(f"The store **{path}** {what}. Build one with:", icon=":material/database:")
    st.code(data.BUILD_COMMANDS.format(path=path), language="bash")
    st.caption("Then reload this page, or point the sidebar's store field at an existing store.")
    st.stop()


@st.fragment(run_every=1.0)
def _demo_progress(path: str) -> None:
    build = demo_build()
    st.subheader("Building the demo store")
    st.caption(f"First start: generating samples of the shipped digits model into `{path}` (CPU only, no "
               "network). The map opens by itself when it is done.")
    if build.error:
        st.error(f"The demo store could not be built: {build.error}")
        st.code(data.BUILD_COMMANDS.format(path=path), language="bash")
        return
    if build.stage:
        st.progress(1.0, text=build.stage)
    else:
        frac = build.done / build.total if build.total else 0.0
        label = f"run {min(build.runs_finished + 1, 2)} of 2 · {build.done:,} / {build.total or '?'} samples"
        st.progress(min(1.0, frac), text=label)
    if build.finished or build.ready:  # ready: the first map is cached; the extra runs follow in the background
        st.rerun(scope="app")


def demo_extras_status() -> None:
    """After a first start has shown its map: the progress of the demo's extra runs (real digits ...) while
    they are added in the background, and a rerun of the page once they are in, so that its map shows them;
    why they failed, if they did. Draws nothing otherwise (any other store, or a later start)."""
    build = demo_build()
    if build.adding:
        _extras_progress()
    elif build.ready and build.error:
        st.caption(f":orange[The demo's comparison runs could not be added: {build.error}.] Add them with "
                   f"`python -m pipeline demo --store {build.path}`.")


@st.fragment(run_every=1.0)
def _extras_progress() -> None:
    build = demo_build()
    if build.finished:
        st.rerun(scope="app")
    frac = build.extra_done / build.extra_total if build.extra_total else 0.0
    st.progress(min(1.0, frac), text=build.extra_label())
