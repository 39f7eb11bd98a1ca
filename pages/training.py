"""Training: what is new since the last round, start one in the background, compare rounds.

A round runs as its own process (`hitl.jobs`), so the app stays usable; this page polls
its log every two seconds while it runs. One round at a time is enforced by a lock file,
whether the round was started here or with ``artminer train``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from hitl.jobs import (
    TrainingBusyError,
    latest_log,
    running_job,
    settle_orphan_rounds,
    start_training,
    stop_training,
    tail_log,
)
from hitl.plot_text import plot_text
from hitl.progress import Progress, latest_progress
from hitl.project import make_active
from hitl.roles import Forbidden
from hitl.rounds import DEFAULT_STEPS
from hitl.views.round_history import (
    last_round_start,
    metric_rows,
    round_state,
    round_table,
)
from pages import session

SOURCES = ("mined", "discovery", "expert")


def counts_ui(store, rounds, model: str) -> None:
    since = last_round_start(rounds)
    # the app's one count (the sidebar's too): links by the verdict in force, given since then
    counts = store.status_counts(model, since=since)
    st.subheader("Links judged since the last finished round" if since
                 else "Links judged so far (no finished round yet)")
    for col, (name, n) in zip(st.columns(len(counts)), counts.items()):
        col.metric(name, n)


def start_ui(store, paths, model: str) -> None:
    models = [m.model_id for m in store.list_models()] or [model]
    with st.form("train_form"):
        c1, c2, c3 = st.columns(3)
        steps = c1.number_input("Steps", 1, 100_000, DEFAULT_STEPS, key="train_steps")
        minutes = c1.number_input("At most (minutes, 0: no limit)", 0.0, 1440.0, 0.0, key="train_minutes")
        sources = c2.multiselect("Learn from", SOURCES, default=["mined", "expert"], key="train_sources")
        parent = c3.selectbox("Start from model", models, index=models.index(model)
                              if model in models else 0, key="train_from")
        submitted = st.form_submit_button("Start a training round", type="primary")
    if submitted:
        if not sources:
            st.error("Choose at least one source of training pairs.")
            return
        # no --quiet: every phase's progress bars reach the log as `hitl.progress` lines
        args = ["--steps", str(int(steps)), "--sources", ",".join(sources), "--from", parent]
        if minutes > 0:
            args += ["--minutes", f"{minutes:g}"]
        try:
            start_training(paths.project, args, actor=session.actor())
        except (TrainingBusyError, Forbidden) as err:
            st.error(str(err))
            return
        st.rerun()


def progress_ui(progress: Progress | None) -> None:
    """Phase k/n, the step inside it with done/total and tqdm's ETA, as a bar."""
    if progress is None:
        st.progress(0.0, text="Starting…")
        return
    if progress.phases:
        phase = f"Phase {progress.index}/{progress.phases}: {progress.phase}"
    else:  # the line the app writes before the round's process has started
        phase = (progress.phase or "preparing").capitalize()
    step = ""
    if progress.step:
        total = progress.total if progress.total is not None else "?"
        step = f" — {progress.step} {progress.done}/{total}"
        step += f", ETA {progress.eta}" if progress.eta else ""
    st.progress(progress.fraction or 0.0, text=phase + step)


@st.fragment(run_every=2)
def live_job(paths) -> None:
    """Progress of the running round; refreshes itself, and the page when the round ends."""
    job = running_job(paths)
    if job is None:
        st.rerun(scope="app")  # finished: refresh history and counts
    st.info(f"A training round is running (pid {job.pid}, since {job.started:%H:%M:%S} UTC).")
    if job.log_path is None:
        st.text("Started from the command line: its output is in that terminal.")
    progress_ui(latest_progress(tail_log(job, 200)))
    with st.expander("Log"):
        st.code(tail_log(job, 25) or "(no output yet)", language=None)
    if st.button("Stop this round", key="train_stop", disabled=not session.can("stop_training")):
        stop_training(job, actor=session.actor())


def history_ui(rounds) -> None:
    st.subheader("Rounds")
    if not rounds:
        st.text("No training round yet.")
        return
    st.dataframe([{"round": r.round_id, "from": r.parent_model, "new model": r.new_model or "",
                   "status": round_state(r), "started (UTC)": f"{r.started:%Y-%m-%d %H:%M}",
                   "finished (UTC)": f"{r.finished:%Y-%m-%d %H:%M}" if r.finished else "",
                   "error": r.error or ""} for r in rounds], hide_index=True, width="stretch")
    st.caption("What each round measured about itself: figures before -> after, and the pairs and "
               "precision (against attached ground truth) of each source of positives it learned from.")
    st.dataframe(round_table(rounds), hide_index=True, width="stretch")
    rows = metric_rows(rounds)
    if not rows:
        st.text("No metrics recorded yet.")
        return
    names = sorted({r["metric"] for r in rows})
    name = st.selectbox("Metric", names, key="train_metric")
    chosen = [r for r in rows if r["metric"] == name]
    fig = go.Figure([go.Bar(name=side, x=[f"round {r['round']}" for r in chosen],
                            y=[r[side] for r in chosen]) for side in ("before", "after")])
    fig.update_layout(barmode="group", height=360, margin=dict(l=10, r=10, t=30, b=10),
                      yaxis_title=plot_text(name))
    st.plotly_chart(fig, key="train_chart")


def active_model_ui(store, model: str) -> None:
    st.subheader("Active model")
    models = [m.model_id for m in store.list_models()]
    if not models:
        st.text(model)
        return
    choice = st.selectbox("Model used by discovery, queries and the next round", models,
                          index=models.index(model) if model in models else 0, key="train_active")
    if choice != model and st.button("Make it the active model", key="train_make_active",
                                     disabled=not session.can("set_active_model")):
        make_active(store, choice, actor=session.actor())
        st.rerun()


store, paths = session.project()
model = session.model_id(store)
st.title("Training")
settle_orphan_rounds(store, paths)  # a killed round is shown failed, never running forever
rounds = store.list_rounds()
counts_ui(store, rounds, model)
if running_job(paths) is not None:
    live_job(paths)
else:
    start_ui(store, paths, model)
    last = latest_log(paths)
    if last is not None:
        with st.expander(f"Log of the last round ({last.name})"):
            st.code(tail_log(last, 40) or "(empty)", language=None)
history_ui(rounds)
active_model_ui(store, model)
