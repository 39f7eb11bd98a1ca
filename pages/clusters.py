"""Clusters: each repeated detail as a grid of its regions; judge, judge members, split.

Members are chosen with checkboxes; "confirm/reject members" gives verdicts on the
links those regions came from, "split off" makes the chosen members one new cluster
and the rest another (`hitl.cluster_edits`).
"""

from __future__ import annotations

import streamlit as st

from db.records import UNREVIEWED, VERDICTS, StoredCluster
from hitl.cluster_edits import (
    current_clusters,
    filter_clusters,
    judge_cluster,
    judge_members,
    split_cluster,
    split_of,
)
from hitl.style_map import in_style_groups
from pages import session

PER_PAGE = 5
COLUMNS = 5
STATUSES = (UNREVIEWED, *VERDICTS)


def chosen_members(cluster: StoredCluster) -> list[int]:
    return [r.region_id for r in cluster.regions
            if st.session_state.get(f"member_{cluster.cluster_id}_{r.region_id}")]


def clear_choice(cluster: StoredCluster) -> None:
    for r in cluster.regions:
        st.session_state[f"member_{cluster.cluster_id}_{r.region_id}"] = False


def on_cluster(store, cluster: StoredCluster, verdict: str, annotator: str) -> None:
    judge_cluster(store, cluster.cluster_id, verdict, annotator)
    st.session_state.clusters_msg = f"Cluster #{cluster.cluster_id}: {verdict}"


def on_members(store, cluster: StoredCluster, verdict: str, annotator: str) -> None:
    chosen = chosen_members(cluster)
    if not chosen:
        st.session_state.clusters_msg = "Tick the members first."
        return
    ids = judge_members(store, cluster, chosen, verdict, annotator)
    clear_choice(cluster)
    st.session_state.clusters_msg = f"{verdict}: {len(ids)} link(s) of cluster #{cluster.cluster_id}"


def on_split(store, cluster: StoredCluster, annotator: str) -> None:
    try:
        new = split_cluster(store, cluster, [chosen_members(cluster)], annotator)
    except ValueError as err:
        st.session_state.clusters_msg = str(err)
        return
    clear_choice(cluster)
    st.session_state.clusters_msg = (f"Cluster #{cluster.cluster_id} split into "
                                     + ", ".join(f"#{i}" for i in new))


def filters_ui(clusters: list[StoredCluster]) -> list[StoredCluster]:
    largest = max((len(c.images) for c in clusters), default=2)
    c1, c2 = st.columns([2, 2])
    statuses = c1.multiselect("Status", STATUSES, default=[UNREVIEWED], key="clusters_status")
    low, high = (c2.slider("Images per cluster", 1, largest, (1, largest), key="clusters_size")
                 if largest > 1 else (1, largest))
    return filter_clusters(clusters, statuses or None, low, high)


def style_filter_ui(store, model: str, clusters: list[StoredCluster]) -> list[StoredCluster]:
    """Keep clusters touching the chosen style groups (the style map's HDBSCAN groups)."""
    style_group = {p.item_id: p.group for p in store.load_style_map(model)}
    if not style_group:
        return clusters
    options = sorted(set(style_group.values()))
    chosen = st.multiselect("Style group", options, key="clusters_style",
                            format_func=lambda g: "no group" if g < 0 else f"style group {g}",
                            help="clusters with an image in these groups (the map's 'images by style')")
    keep = in_style_groups([c.images for c in clusters], style_group, chosen)
    return [c for c, k in zip(clusters, keep) if k]


def cluster_ui(store, cluster: StoredCluster, annotator: str) -> None:
    with st.container(border=True):
        parts = split_of(store, cluster.cluster_id) if cluster.status == "reject" else None
        st.text(f"Cluster #{cluster.cluster_id}   {len(cluster.images)} images   "
                f"{len(cluster.regions)} regions   status: {cluster.status}"
                + (f"   split into {', '.join(f'#{i}' for i in parts)}" if parts else ""))
        columns = st.columns(COLUMNS)
        for i, member in enumerate(cluster.regions):
            with columns[i % COLUMNS]:
                image = store.get_image(member.region.image_id)
                session.show_image(image, (member.region.box,), side=240)
                st.text(session.label(image))
                st.checkbox("choose", key=f"member_{cluster.cluster_id}_{member.region_id}")
        buttons = st.columns(6)
        cid = cluster.cluster_id
        for col, verdict in zip(buttons[:3], VERDICTS):
            col.button(f"{verdict.capitalize()} cluster", key=f"cluster_{verdict}_{cid}",
                       on_click=on_cluster, args=(store, cluster, verdict, annotator),
                       type="primary" if verdict == "confirm" else "secondary")
        buttons[3].button("Confirm chosen", key=f"members_confirm_{cid}", on_click=on_members,
                          args=(store, cluster, "confirm", annotator))
        buttons[4].button("Reject chosen", key=f"members_reject_{cid}", on_click=on_members,
                          args=(store, cluster, "reject", annotator))
        buttons[5].button("Split off chosen", key=f"split_{cid}", on_click=on_split,
                          args=(store, cluster, annotator),
                          help="The chosen members become one new cluster, the rest another")


store = session.store()
annotator = session.require_annotator()
model = session.model_id(store)
st.title("Clusters")
if st.session_state.get("clusters_msg"):
    st.toast(st.session_state.pop("clusters_msg"))
clusters = current_clusters(store, model)
if not clusters:
    st.info(f"No clusters for model {model} yet: `artminer discover` finds them.")
    st.stop()
shown = style_filter_ui(store, model, filters_ui(clusters))
pages = max(1, -(-len(shown) // PER_PAGE))
page = st.number_input(f"Page (of {pages})", 1, pages, 1, key="clusters_page") if pages > 1 else 1
st.text(f"{len(shown)} of {len(clusters)} clusters")
for cluster in shown[(page - 1) * PER_PAGE: page * PER_PAGE]:
    cluster_ui(store, cluster, annotator)
