"""ArtMiner HITL app entry: project, annotator, navigation.

Run with ``artminer app --project FILE`` (or ``ARTMINER_PROJECT=FILE streamlit run
streamlit_app.py``). Pages live in ``pages/``; this script only chooses the project,
asks who is reviewing, shows the active model and discovery run, and routes.
"""

from __future__ import annotations

import streamlit as st

from hitl.views.favicon import favicon
from pages import session

# a drawn icon is served by the app itself; a Material icon or emoji is fetched online
st.set_page_config(page_title="ArtMiner", page_icon=favicon(), layout="wide")

PAGES = [
    st.Page("pages/review.py", title="Review", icon=":material/rule:", default=True),
    st.Page("pages/map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page("pages/clusters.py", title="Clusters", icon=":material/grid_view:"),
    st.Page("pages/query.py", title="Query", icon=":material/crop_free:"),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("pages/propagation.py", title="Propagation", icon=":material/timeline:"),
    st.Page("pages/team.py", title="Team", icon=":material/groups:"),
]


def open_typed_project() -> None:
    """Sidebar callback (runs before the next script run, so no rerun is lost)."""
    typed = (st.session_state.get("project_input") or "").strip()
    allowed = session.allowed_project(typed) if typed else None
    st.session_state.project_refused = bool(typed) and allowed is None
    if allowed:
        st.session_state.project_path = allowed
        st.query_params["project"] = allowed


def project_sidebar() -> None:
    with st.sidebar.expander("Project", expanded=not session.project_path()):
        st.text(session.project_path() or "(none)")
        st.text_input("Open another project file", key="project_input",
                      placeholder="/path/to/artminer.duckdb")
        st.button("Open", key="open_project", on_click=open_typed_project)
        if st.session_state.pop("project_refused", False):
            st.error("Not a project this app serves (see `artminer app --projects DIR`).")


def status_sidebar() -> None:
    store = session.store()
    model = session.model_id(store)
    run = session.latest_run(store, model)
    st.sidebar.text(f"Active model: {model}")
    st.sidebar.text(f"Discovery run: #{run.run_id} ({run.status}, {run.started:%Y-%m-%d %H:%M})"
                    if run else "Discovery run: none yet (run `artminer discover`)")
    counts = store.status_counts(model)
    st.sidebar.text(f"Links: {counts['unreviewed']} to review, {counts['confirm']} confirmed, "
                    f"{counts['reject']} rejected, {counts['unsure']} unsure"
                    + (f", {counts['disputed']} disputed" if counts["disputed"] else ""))


def annotator_sidebar(name: str) -> None:
    user = session.actor()
    if user is not None:  # auth on: the identity is fixed for the session
        st.sidebar.text(f"Signed in: {user.name} ({user.role})")
        if st.sidebar.button("Sign out", key="sign_out"):
            session.log_out()
            st.rerun()
        return
    st.sidebar.text(f"Annotator: {name}")
    if st.sidebar.button("Change annotator", key="change_annotator"):
        session.set_annotator("")
        st.rerun()


navigation = st.navigation(PAGES)
project_sidebar()
if session.project_path():
    session.store()  # stops with the reason if the file cannot be opened
    session.require_login()  # auth = local/oidc: nothing below runs for an anonymous visitor
    annotator_sidebar(session.require_annotator())
    status_sidebar()
navigation.run()
