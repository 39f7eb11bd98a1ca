"""Map: the collection (or its details) laid out by similarity; select to inspect.

A WebGL scatter (`Scattergl`) of the active model's UMAP map, one trace per colour
category. Hover shows the title; plotly cannot show pictures on hover, so clicking or
lasso/box-selecting points opens their thumbnails and links in the side panel.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from hitl.cluster_edits import current_clusters
from hitl.map_view import (
    COLOUR_BY,
    NONE_LABEL,
    OTHER_LABEL,
    PALETTE,
    MapTable,
    categories,
    category_colours,
    colour_values,
    hover_texts,
    image_clusters,
    image_statuses,
    map_table,
)
from pages import session

MAX_SELECTED = 12


@st.cache_data(show_spinner="Loading the map…", max_entries=8)
def map_data(_store, path: str, model: str, kind: str, by: str, version: tuple) -> dict:
    """Everything the chart needs, as plain arrays (``version`` invalidates on new verdicts)."""
    links = {lk.link_id: lk for lk in _store.list_links(model_id=model, order="link_id")}
    points = _store.load_style_map(model) if kind == "style" else _store.load_map(model, kind)
    table = map_table(points, links)
    images = {im.image_id: im for im in _store.list_images()}
    values = colour_values(table, by, images, statuses=image_statuses(links.values()),
                           clusters=image_clusters(current_clusters(_store, model)),
                           link_status={k: lk.status for k, lk in links.items()})
    return {"table": table, "values": values, "hover": hover_texts(table, images)}


@st.cache_resource(show_spinner=False, max_entries=8)
def cached_figure(path: str, model: str, kind: str, by: str, version: tuple, _data: dict) -> go.Figure:
    """The chart, built once per map and colouring (plotly validates every point: slow at 10k)."""
    return figure(_data["table"], _data["values"], _data["hover"], by)


def figure(table: MapTable, values: np.ndarray, hover: list[str], by: str) -> go.Figure:
    fig = go.Figure()
    hover_arr = np.array(hover, dtype=object)
    if by == "date":
        dated = np.flatnonzero(~np.isnan(values))
        undated = np.flatnonzero(np.isnan(values))
        groups = [("dated", dated, dict(color=values[dated], colorscale="Viridis", showscale=True,
                                        colorbar=dict(title="year"))),
                  ("undated", undated, dict(color="lightgrey"))]
    else:
        found = categories(values, max_categories=len(PALETTE))
        colours = category_colours([name for name, _ in found], by)
        groups = [(name, idx, dict(color=colours[name])) for name, idx in found]
    for rank, (name, idx, marker) in enumerate(groups):
        if len(idx) == 0:
            continue
        fig.add_trace(go.Scattergl(
            x=table.x[idx], y=table.y[idx], mode="markers", name=name, customdata=idx,
            text=hover_arr[idx], hovertemplate="%{text}<extra></extra>", legendrank=1000 + rank,
            marker=dict(size=7 if len(table) < 2000 else 4, opacity=0.85, **marker)))
    # grey points first, so the named categories are drawn over them; the legend keeps its order
    fig.data = tuple(sorted(fig.data, key=lambda t: t.name not in (NONE_LABEL, OTHER_LABEL, "undated")))
    fig.update_layout(height=640, margin=dict(l=10, r=10, t=30, b=10), dragmode="lasso",
                      showlegend=True,  # also for a single category
                      legend=dict(title=by, itemsizing="constant"),
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def selected_indices(event) -> list[int]:
    points = event.selection.points if event and event.selection else []
    found = []
    for p in points:
        data = p.get("customdata")
        if data is not None:
            found.append(int(data[0] if isinstance(data, list | tuple) else data))
    return sorted(set(found))


def side_panel(store, table: MapTable, chosen: list[int]) -> None:
    if not chosen:
        st.text("Click a point, or draw a lasso\nor box around several,\nto see them here.")
        return
    image_ids = list(dict.fromkeys(table.image_ids[i] for i in chosen if table.image_ids[i]))
    st.text(f"{len(chosen)} point(s) selected, {len(image_ids)} image(s)")
    links = []
    columns = st.columns(2)
    for i, image_id in enumerate(image_ids[:MAX_SELECTED]):
        image = store.get_image(image_id)
        with columns[i % 2]:
            session.show_image(image, side=200)
            st.text(session.label(image))
        links.extend(store.list_links(image_id=image_id))
    if len(image_ids) > MAX_SELECTED:
        st.text(f"… and {len(image_ids) - MAX_SELECTED} more")
    rows = {lk.link_id: {"link": lk.link_id, "A": session.label(store.get_image(lk.image_a)),
                         "B": session.label(store.get_image(lk.image_b)),
                         "score": round(lk.score, 3), "status": lk.status} for lk in links}
    st.text(f"Their links ({len(rows)})")
    if rows:
        st.dataframe(list(rows.values()), hide_index=True, width="stretch")


store = session.store()
model = session.model_id(store)
st.title("Map")
c1, c2 = st.columns(2)
KIND_LABELS = {"image": "images", "region": "detail regions", "style": "images by style"}
kind = c1.radio("Points", tuple(KIND_LABELS), horizontal=True, key="map_kind", format_func=KIND_LABELS.get,
                help="images by style: laid out by early-layer statistics (how they are drawn); "
                     "its HDBSCAN groups are style groups")
by = c2.selectbox("Colour by", COLOUR_BY, key="map_colour",
                  format_func=lambda b: "HDBSCAN group" if b == "group" else b)
summary = store.summary()
version = (summary["verdicts"], summary["links"], summary["clusters"], summary["images"])
data = map_data(store, store.path, model, kind, by, version)
table = data["table"]
if len(table) == 0:
    st.info(f"No {kind} map for model {model} yet: `artminer discover` draws one.")
    st.stop()
chart, panel = st.columns([3, 1])
with chart:
    event = st.plotly_chart(cached_figure(store.path, model, kind, by, version, data), key="map_chart",
                            on_select="rerun", selection_mode=("points", "box", "lasso"),
                            config={"displaylogo": False})
    st.text(f"{len(table)} points")
with panel:
    side_panel(store, table, selected_indices(event))
