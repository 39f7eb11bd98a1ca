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
    start_training,
    stop_training,
    tail_log,
)
from hitl.round_history import last_round_start, metric_rows, round_table, verdict_counts
from pages import session

SOURCES = ("mined", "discovery", "expert")


def counts_ui(store, rounds) -> None:
    since = last_round_start(rounds)
    counts = verdict_counts(store.list_verdicts(since=since))
    st.subheader("Verdicts since the last round" if since else "Verdicts so far (no round yet)")
    for col, (name, n) in zip(st.columns(len(counts)), counts.items()):
        col.metric(name, n)


def start_ui(store, paths, model: str) -> None:
    models = [m.model_id for m in store.list_models()] or [model]
    with st.form("train_form"):
        c1, c2, c3 = st.columns(3)
        steps = c1.number_input("Steps", 1, 100_000, 100, key="train_steps")
        minutes = c1.number_input("At most (minutes, 0: no limit)", 0.0, 1440.0, 0.0, key="train_minutes")
        sources = c2.multiselect("Learn from", SOURCES, default=["mined", "expert"], key="train_sources")
        parent = c3.selectbox("Start from model", models, index=models.index(model)
                              if model in models else 0, key="train_from")
        submitted = st.form_submit_button("Start a training round", type="primary")
    if submitted:
        if not sources:
            st.error("Choose at least one source of training pairs.")
            return
        args = ["--steps", str(int(steps)), "--sources", ",".join(sources), "--from", parent,
                "--quiet"]  # one plain line per step in the log, no progress bars
        if minutes > 0:
            args += ["--minutes", f"{minutes:g}"]
        try:
            start_training(paths.project, args)
        except TrainingBusyError as err:
            st.error(str(err))
            return
        st.rerun()


@st.fragment(run_every=2)
def live_job(paths) -> None:
    """Progress of the running round; refreshes itself, and the page when the round ends."""
    job = running_job(paths)
    if job is None:
        st.rerun(scope="app")  # finished: refresh history and counts
    st.info(f"A training round is running (pid {job.pid}, since {job.started:%H:%M:%S} UTC).")
    st.code(tail_log(job, 25) or "(no output yet)", language=None)
    if st.button("Stop this round", key="train_stop"):
        stop_training(job)


def history_ui(rounds) -> None:
    st.subheader("Rounds")
    if not rounds:
        st.text("No training round yet.")
        return
    st.dataframe([{"round": r.round_id, "from": r.parent_model, "new model": r.new_model or "",
                   "status": r.status, "started (UTC)": f"{r.started:%Y-%m-%d %H:%M}",
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
                      yaxis_title=name)
    st.plotly_chart(fig, key="train_chart")


def active_model_ui(store, model: str) -> None:
    st.subheader("Active model")
    models = [m.model_id for m in store.list_models()]
    if not models:
        st.text(model)
        return
    choice = st.selectbox("Model used by discovery, queries and the next round", models,
                          index=models.index(model) if model in models else 0, key="train_active")
    if choice != model and st.button("Make it the active model", key="train_make_active"):
        store.set_active_model(choice)
        st.rerun()


store, paths = session.project()
model = session.model_id(store)
st.title("Training")
rounds = store.list_rounds()
counts_ui(store, rounds)
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
