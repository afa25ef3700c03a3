"""How a page shows its background jobs (`app.data.Job`): the polling progress fragment (a bar per running job,
optionally its seconds and a Cancel button), the wait-or-fail check before a page draws a job's result, the
result-or-state of one job, and a session's cancelled jobs (not started again until asked)."""

from __future__ import annotations

import time
from collections.abc import Callable

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from app import data


def session_id() -> str:
    """This browser session's id: the holder of the jobs it waits for ("local" outside a server run)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def _key_hash(key: tuple) -> int:
    return abs(hash(key))


@st.fragment(run_every=0.5)
def progress(keys: tuple, title: Callable[[tuple], str], cancel: Callable[[data.Job], None] | None = None,
             cancel_key: str = "cancel", caption: str | None = None, seconds: bool = False) -> None:
    """Poll the jobs of `keys` every half second and rerun the page once none runs. Each running job gets a bar
    titled `title(job.key)` with its message (and its seconds so far with `seconds`); with `cancel`, a Cancel
    button (widget key `{cancel_key}_{hash}`) calls `cancel(job)` and reruns the page."""
    jobs = [data.jobs().find(key) for key in keys]
    if all(job is None or not job.running for job in jobs):
        st.rerun(scope="app")
    for job in jobs:
        if job is None or not job.running:
            continue
        text = f"{title(job.key)}… {job.message}"
        if seconds:
            text += f" · {time.time() - job.started:.0f} s"
        if cancel is None:
            st.progress(job.progress, text=text)
            continue
        bar, stop = st.columns([6, 1], vertical_alignment="bottom")
        bar.progress(job.progress, text=text)
        if stop.button("Cancel", key=f"{cancel_key}_{_key_hash(job.key)}", icon=":material/close:",
                       width="stretch"):
            cancel(job)
            st.rerun(scope="app")
    if caption:
        st.caption(caption)


def wait(jobs: list[data.Job], title: Callable[[tuple], str], error: Callable[[data.Job], str] | None = None,
         retry_key: str | None = None, **progress_options) -> bool:
    """True when every job is done; else shows each failed job's `error(job)` (default: its error; with
    `retry_key`, a Retry button that starts them afresh) or the running ones' `progress`, and the caller
    returns."""
    failed = [j for j in jobs if not j.running and j.error]
    if failed:
        for job in failed:
            st.error(error(job) if error is not None else job.error)
        if retry_key is not None and st.button("Retry", key=retry_key):  # a failed job restarts when asked again
            st.rerun()
        return False
    if any(j.running for j in jobs):
        progress(tuple(j.key for j in jobs), title, **progress_options)
        return False
    return True


def result(job: data.Job | None, what: str, resume: Callable[[tuple], None], resume_key: str):
    """The job's result, or None after saying that it computes (its progress is at the top of the page), that
    it was cancelled (with a button that asks for it after all: `resume(job.key)`; widget key `resume_key`
    formatted with `hash` and `what`) or that it failed."""
    if job is None:
        return None
    if job.running:
        st.caption(f"{what}: computing… (progress above)")
        return None
    if job.error:
        if job.error == "cancelled":
            st.info(f"{what}: cancelled.", icon=":material/block:")
            st.button(f"Compute {what.lower()} after all", key=resume_key.format(hash=_key_hash(job.key), what=what),
                      icon=":material/play_arrow:", on_click=resume, args=(job.key,))
        else:
            st.error(f"{what} failed: {job.error}")
        return None
    return job.result


class Cancels:
    """The job keys one session cancelled, kept in its `st.session_state[session_key]`: such a job is released
    (it stops when no session waits for it) and not started again here until `resume`d."""

    def __init__(self, session_key: str):
        self.session_key = session_key

    def cancel(self, key: tuple, holder: str) -> None:
        st.session_state[self.session_key] = {*(st.session_state.get(self.session_key) or ()), key}
        data.jobs().release(key, holder)

    def resume(self, key: tuple) -> None:
        st.session_state[self.session_key] = {k for k in (st.session_state.get(self.session_key) or ())
                                              if k != key}

    def progress(self, keys: tuple, title: Callable[[tuple], str], cancel_key: str) -> None:
        """`progress` of `keys` with their seconds and a Cancel button each that cancels the job for this
        session (widget keys `{cancel_key}_{hash}`)."""
        progress(keys, title, cancel=self._cancel_job, cancel_key=cancel_key, seconds=True)

    def _cancel_job(self, job: data.Job) -> None:
        self.cancel(job.key, session_id())

    def cancelled(self, key: tuple) -> bool:
        return key in (st.session_state.get(self.session_key) or ())

    def start(self, key: tuple, work, holder: str | None) -> data.Job:
        """The job of `key`, started (or found) for `holder`; one this session cancelled comes back as such,
        without starting again."""
        if self.cancelled(key):
            now = time.time()
            return data.Job(key=key, error="cancelled", started=now, finished=now)
        return data.start_job(key, work, holder)
