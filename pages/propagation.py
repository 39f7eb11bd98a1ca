"""Propagation: how a detail spread, artworks on a timeline joined by confirmed links.

Pick a confirmed cluster, or a confirmed link to follow everything linked to it. Each
artwork's crop of the shared detail is shown in date order under the timeline; uncertain
dates are drawn as spans; arrows go from model to copy (the expert's direction stored
with the verdict, else earlier to later); a clicked artwork is shown with its detail
boxed. The
view's links export as CSV or W3C Web Annotations, the chart as a standalone HTML file
(and PNG where the optional ``kaleido`` package is installed; the chart's own camera
button always saves a PNG in the browser).
"""

from __future__ import annotations

import importlib.util

import plotly.graph_objects as go
import streamlit as st

from db.records import Link
from hitl.plot_text import plot_lines, plot_text
from hitl.views.cluster_edits import boxes_per_image, current_clusters
from hitl.views.timeline import (
    ROW_BY,
    TimelineLayout,
    detail_boxes,
    linked_component,
    links_within,
    timeline_layout,
)
from hitl.views.view_export import export_view
from pages import session


def choose_view(store, model: str) -> tuple[set[str], str, dict]:
    """(images of the view, its name, the cluster's boxes per image) from a confirmed
    cluster or a confirmed link (no boxes: they come from the links)."""
    source = st.radio("Follow", ("a confirmed cluster", "a confirmed link"), horizontal=True,
                      key="prop_source")
    confirmed = store.list_links(status="confirm", order="link_id")
    if source == "a confirmed cluster":
        clusters = [c for c in current_clusters(store, model) if c.status == "confirm"]
        if not clusters:
            st.info("No confirmed cluster yet: confirm one on the Clusters page.")
            st.stop()
        cluster = st.selectbox("Cluster", clusters, key="prop_cluster",
                               format_func=lambda c: f"#{c.cluster_id} ({len(c.images)} images)")
        return set(cluster.images), f"cluster-{cluster.cluster_id}", boxes_per_image(cluster)
    if not confirmed:
        st.info("No confirmed link yet: confirm some on the Review page.")
        st.stop()
    by_id = {lk.link_id: lk for lk in confirmed}
    link_id = st.selectbox("Link", list(by_id), key="prop_link",
                           format_func=lambda k: link_label(store, by_id[k]))
    link = by_id[link_id]
    return linked_component(confirmed, [link.image_a, link.image_b]), f"link-{link_id}", {}


def link_label(store, link: Link) -> str:
    a, b = store.get_image(link.image_a), store.get_image(link.image_b)
    return f"#{link.link_id}: {session.label(a)} / {session.label(b)}"


def timeline_figure(layout: TimelineLayout, images: dict) -> go.Figure:
    hover = [plot_lines((im.title or im.path, im.artist, im.date, im.collection))
             for im in (images[i] for i in layout.image_ids)]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layout.edge_x, y=layout.edge_y, mode="lines", hoverinfo="skip",
                             line=dict(color="#888", width=1.5), name="confirmed links"))
    span = dict(type="data", symmetric=False, array=layout.span_high - layout.x,
                arrayminus=layout.x - layout.span_low, color="#9bbce8", thickness=6, width=0)
    fig.add_trace(go.Scatter(x=layout.x, y=layout.y, mode="markers", text=hover,
                             customdata=list(layout.image_ids), name="artworks", error_x=span,
                             hovertemplate="%{text}<extra></extra>",
                             marker=dict(size=14, color="#1d78e6", line=dict(color="white", width=1))))
    for model_at, copy_at in layout.arrows:  # from model to copy
        fig.add_annotation(x=layout.x[copy_at], y=layout.y[copy_at], ax=layout.x[model_at],
                           ay=layout.y[model_at], xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=3, arrowsize=1.4, arrowwidth=1.5,
                           arrowcolor="#555", standoff=9, startstandoff=9, text="")
    fig.update_layout(height=max(320, 80 + 60 * len(layout.rows)), showlegend=False,
                      margin=dict(l=10, r=10, t=30, b=10), xaxis_title="year",
                      yaxis=dict(tickmode="array", tickvals=list(range(len(layout.rows))),
                                 ticktext=[plot_text(r) for r in layout.rows], autorange="reversed"))
    return fig


def exports_ui(store, links: list[Link], fig: go.Figure, name: str) -> None:
    ids = [lk.link_id for lk in links]
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button("Links (CSV)", lambda: export_view(store, "csv", ids), f"{name}-links.csv",
                       "text/csv", key="prop_csv", disabled=not ids)
    c2.download_button("Links (W3C)", lambda: export_view(store, "w3c", ids),
                       f"{name}-links.jsonld", "application/ld+json", key="prop_w3c", disabled=not ids)
    c3.download_button("Chart (HTML)", lambda: fig.to_html(include_plotlyjs=True),
                       f"{name}-timeline.html", "text/html", key="prop_html")
    if importlib.util.find_spec("kaleido") is not None:
        c4.download_button("Chart (PNG)", lambda: fig.to_image(format="png", scale=2),
                           f"{name}-timeline.png", "image/png", key="prop_png")
    else:
        c4.text("PNG: install kaleido,\nor use the chart's camera button")


def crops_ui(layout: TimelineLayout, records: dict, boxes: dict, per_row: int = 8) -> None:
    """Each artwork's crop of the shared detail, in date order (undated ones last)."""
    order = [*layout.image_ids, *layout.undated]
    st.text("The detail in each artwork, earliest first")
    columns = st.columns(per_row)
    for i, image_id in enumerate(order):
        image = records[image_id]
        with columns[i % per_row]:
            crop = (session.crop_jpeg(image.path, tuple(boxes[image_id][0].as_list()))
                    if boxes.get(image_id) else None)
            if crop is None:
                st.text("(no crop)")
            else:
                st.image(crop, width="stretch")
            st.text(f"{image.date or 'undated'}\n{image.artist or ''}".strip())


def selected_ui(store, event, boxes: dict) -> None:
    points = event.selection.points if event and event.selection else []
    chosen = [p.get("customdata") for p in points if isinstance(p.get("customdata"), str)]
    if not chosen:
        st.text("Click an artwork to see it here, with its detail boxed.")
        return
    columns = st.columns(4)
    for i, image_id in enumerate(chosen[:8]):
        with columns[i % 4]:
            image = store.get_image(image_id)
            session.show_image(image, boxes.get(image_id, ()), side=280)
            session.show_metadata(image)


store = session.store()
model = session.model_id(store)
st.title("Propagation")
view_images, name, cluster_boxes = choose_view(store, model)
row_by = st.radio("Rows", ROW_BY, horizontal=True, key="prop_rows")
records = {im.image_id: im for im in store.list_images(image_ids=sorted(view_images))}
links = links_within(store.list_links(status="confirm", order="link_id"), set(records))
directions = {lk: v.direction for lk, v in store.current_verdicts("link").items() if v.direction}
layout = timeline_layout(list(records.values()), links, row_by, directions=directions)
boxes = {**detail_boxes(links), **cluster_boxes}  # a cluster's own regions, where it has them
st.text(f"{len(records)} artworks, {len(links)} confirmed links between them")
if layout.undated:
    st.text("Not on the timeline (no date): "
            + "; ".join(session.label(records[i]) for i in layout.undated))
fig = timeline_figure(layout, records)
event = st.plotly_chart(fig, key="prop_chart", on_select="rerun", selection_mode="points",
                        config={"displaylogo": False})
selected_ui(store, event, boxes)
crops_ui(layout, records, boxes)
exports_ui(store, links, fig, name)
