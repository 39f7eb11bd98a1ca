"""Clusters: each repeated detail as a grid of its images; judge, judge members, split.

One tile per image, with every box the cluster has in it. A cluster verdict is also a
verdict on its unreviewed member links (they leave the review queue); "Undo" takes back
the annotator's last cluster verdict or split. Images are chosen with checkboxes;
"confirm/reject chosen" gives verdicts on the links their regions came from, "split
off" makes the chosen images' regions one new cluster and the rest another
(`hitl.views.cluster_edits`).
"""

from __future__ import annotations

import streamlit as st

from db.records import UNREVIEWED, VERDICTS, StoredCluster
from hitl.roles import Forbidden
from hitl.style_map import in_style_groups
from hitl.views.cluster_edits import (
    STRICT_CAP,
    boxes_per_image,
    current_clusters,
    filter_clusters,
    judge_cluster,
    judge_members,
    split_cluster,
    split_of,
    strict_parts,
    too_large,
    undo_last_cluster_action,
)
from pages import session

CLUSTER_KEYS = {"confirm": "Y", "reject": "N", "unsure": "U"}  # as on the Review page
# Each cluster's action bar stays at the top of the window while its grid scrolls by.
STICKY_CSS = """<style>
[class*="st-key-cluster_bar_"] {position: sticky; top: 3.75rem; z-index: 5;
  background: var(--background-color, white); padding: 0.3rem 0;}
</style>"""
PER_PAGE = 5
COLUMNS = 5
STATUSES = (UNREVIEWED, *VERDICTS)


def _choice_key(cluster: StoredCluster, image_id: str) -> str:
    return f"member_{cluster.cluster_id}_{image_id}"


def chosen_members(cluster: StoredCluster) -> list[int]:
    """Region ids of the images ticked in this cluster's grid."""
    return [r.region_id for r in cluster.regions
            if st.session_state.get(_choice_key(cluster, r.region.image_id))]


def clear_choice(cluster: StoredCluster) -> None:
    for image_id in cluster.images:
        st.session_state[_choice_key(cluster, image_id)] = False


def on_cluster(store, cluster: StoredCluster, verdict: str, annotator: str) -> None:
    try:
        _, links = judge_cluster(store, cluster.cluster_id, verdict, annotator, actor=session.actor())
    except Forbidden as err:
        st.session_state.clusters_msg = str(err)
        return
    st.session_state.clusters_msg = (f"Cluster #{cluster.cluster_id}: {verdict}, "
                                     f"with {len(links)} unreviewed link(s)")


def on_undo(store, annotator: str) -> None:
    try:
        undone = undo_last_cluster_action(store, annotator, actor=session.actor())
    except Forbidden as err:
        st.session_state.clusters_msg = str(err)
        return
    st.session_state.clusters_msg = (f"Undid your {undone.verdict} on cluster #{undone.target_id}"
                                     if undone else "No cluster verdict of yours to undo.")


def on_members(store, cluster: StoredCluster, verdict: str, annotator: str) -> None:
    chosen = chosen_members(cluster)
    if not chosen:
        st.session_state.clusters_msg = "Tick the members first."
        return
    try:
        ids = judge_members(store, cluster, chosen, verdict, annotator, actor=session.actor())
    except Forbidden as err:
        st.session_state.clusters_msg = str(err)
        return
    clear_choice(cluster)
    st.session_state.clusters_msg = f"{verdict}: {len(ids)} link(s) of cluster #{cluster.cluster_id}"


def on_split(store, cluster: StoredCluster, annotator: str) -> None:
    try:
        new = split_cluster(store, cluster, [chosen_members(cluster)], annotator,
                            actor=session.actor())
    except (ValueError, Forbidden) as err:
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


def on_select_all(cluster: StoredCluster) -> None:
    everything = all(st.session_state.get(_choice_key(cluster, i)) for i in cluster.images)
    for image_id in cluster.images:  # a second press clears the choice
        st.session_state[_choice_key(cluster, image_id)] = not everything


def on_strict(store, cluster: StoredCluster, annotator: str) -> None:
    parts = strict_parts(store, cluster)
    try:
        new = split_cluster(store, cluster, parts, annotator, note="re-clustered in strict mode")
    except ValueError as err:
        st.session_state.clusters_msg = f"Strict mode keeps cluster #{cluster.cluster_id} whole ({err})"
        return
    st.session_state.clusters_msg = (f"Cluster #{cluster.cluster_id} re-clustered in strict mode "
                                     f"into {len(new)} clusters")


def actions_ui(store, cluster: StoredCluster, annotator: str, keys: bool) -> None:
    """The action bar (kept in view while scrolling the grid); ``keys``: this cluster gets the shortcuts."""
    cid = cluster.cluster_id
    with st.container(key=f"cluster_bar_{cid}"):
        buttons = st.columns(7)
        for col, verdict in zip(buttons[:3], VERDICTS):
            col.button(f"{verdict.capitalize()} cluster", key=f"cluster_{verdict}_{cid}",
                       on_click=on_cluster, args=(store, cluster, verdict, annotator),
                       type="primary" if verdict == "confirm" else "secondary",
                       shortcut=CLUSTER_KEYS[verdict] if keys else None)
        buttons[3].button("Select all", key=f"select_all_{cid}", on_click=on_select_all, args=(cluster,),
                          shortcut="A" if keys else None)
        buttons[4].button("Confirm chosen", key=f"members_confirm_{cid}", on_click=on_members,
                          args=(store, cluster, "confirm", annotator))
        buttons[5].button("Reject chosen", key=f"members_reject_{cid}", on_click=on_members,
                          args=(store, cluster, "reject", annotator))
        buttons[6].button("Split off chosen", key=f"split_{cid}", on_click=on_split,
                          args=(store, cluster, annotator),
                          help="The chosen members become one new cluster, the rest another")


def cluster_ui(store, cluster: StoredCluster, annotator: str, keys: bool = False) -> None:
    with st.container(border=True):
        parts = split_of(store, cluster.cluster_id) if cluster.status == "reject" else None
        st.text(f"Cluster #{cluster.cluster_id}   {len(cluster.images)} images   "
                f"{len(cluster.regions)} regions   status: {cluster.status}"
                + (f"   split into {', '.join(f'#{i}' for i in parts)}" if parts else ""))
        if too_large(cluster) and not parts:
            warn, act = st.columns([4, 1], vertical_alignment="center")
            warn.warning(f"This cluster touches {len(cluster.images)} images, more than one repeated "
                         f"detail usually does (strict mode's cap is {STRICT_CAP}): "
                         "it may have grown through weak links.")
            act.button("Re-cluster in strict mode", key=f"strict_{cluster.cluster_id}", on_click=on_strict,
                       args=(store, cluster, annotator))
        actions_ui(store, cluster, annotator, keys)
        columns = st.columns(COLUMNS)
        for i, (image_id, boxes) in enumerate(boxes_per_image(cluster).items()):
            with columns[i % COLUMNS]:
                image = store.get_image(image_id)
                session.show_image(image, boxes, side=240)
                st.text(session.label(image) + (f"  ({len(boxes)} boxes)" if len(boxes) > 1 else ""))
                st.checkbox("choose", key=_choice_key(cluster, image_id))


store = session.store()
annotator = session.require_annotator()
model = session.model_id(store)
st.title("Clusters")
st.html(STICKY_CSS)
st.button("Undo my last cluster verdict", key="clusters_undo", on_click=on_undo,
          args=(store, annotator), shortcut="Z")
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
st.caption("Keys for the first cluster: **Y** confirm · **N** reject · **U** unsure · "
           "**A** select all · **Z** undo your last cluster verdict")
for rank, cluster in enumerate(shown[(page - 1) * PER_PAGE: page * PER_PAGE]):
    cluster_ui(store, cluster, annotator, keys=rank == 0)
