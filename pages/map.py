"""Map: the collection (or its details) laid out by similarity; select to inspect.

A WebGL scatter (`Scattergl`) of the active model's UMAP map, one trace per colour
category. Hover shows the title; plotly cannot show pictures on hover, so clicking or
lasso/box-selecting points opens their thumbnails and links in the side panel.

The chart opens in Pan mode: Streamlit turns click selection off while the lasso or box
tool is active (its plotly ``clickmode`` becomes ``event``), so a lasso default would
make clicks do nothing. Lasso and box stay one click away in the chart's toolbar.

*Thumbnails* draws the map as an atlas (`hitl.views.atlas`), images as their thumbnails
and detail regions as their crops: Streamlit's own
``st.pydeck_chart`` with a deck.gl ``IconLayer`` over one sprite sheet. Why this means:
deck.gl draws every picture on the GPU from one texture (plotly's layout images are DOM
or SVG elements, one each, and crawl long before 10,000); pydeck ships with Streamlit,
so there is no third-party component to break, and ``on_select`` reports clicks.
Thumbnails and crops come from the project's data folder (`hitl.thumbs`), made once.
``st.pydeck_chart`` selects by click and shift-click only (``selection_mode``
single-object / multi-object: no lasso or box), so the lasso stays with the dots; a
shift-click selection in the atlas opens the same side panel and batch actions.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import pydeck as pdk
import streamlit as st

from db.records import UNREVIEWED
from hitl.plot_text import plot_text
from hitl.thumbs import ensure_region_crops, ensure_thumbnails, open_thumbnail
from hitl.views.atlas import build_atlas, cell_size, data_uri, hover_sprite, view_state
from hitl.views.cluster_edits import current_clusters
from hitl.views.map_view import (
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
    judge_unreviewed,
    kept_selection,
    links_among,
    map_table,
)
from hitl.views.thumbnails import jpeg_bytes
from hitl.views.view_export import export_view
from pages import session

MAX_SELECTED = 12
ATLAS_WIDTH = 700  # px the atlas is framed for: about the chart column at 1366 px wide


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


@st.cache_data(show_spinner="Drawing the atlas…", max_entries=4)
def atlas_data(_store, _paths, path: str, model: str, kind: str, version: tuple) -> tuple[str, dict, int]:
    """(atlas data URI, icon mapping, cell side) of the map's points, in table order: each
    image's thumbnail, or for the region map each detail's crop."""
    table = map_data(_store, path, model, kind, "cluster", version)["table"]
    images = session.image_index(_store)
    if kind == "region":
        links = {lk.link_id: lk for lk in _store.list_links(model_id=model)}
        regions = [(images.get(i), region_box(links.get(int(k)), item))
                   for i, k, item in zip(table.image_ids, table.link_ids, table.item_ids)]
        known = [k for k, (image, box) in enumerate(regions) if image is not None and box is not None]
        crops = dict(zip(known, ensure_region_crops(_paths, [regions[k] for k in known])))
        pictures = [open_thumbnail(crops.get(k)) for k in range(len(table))]
    else:
        files = ensure_thumbnails(_paths, [images[i] for i in table.image_ids if i in images])
        pictures = [open_thumbnail(files.get(i)) for i in table.image_ids]
    cell = cell_size(len(table))
    sheet, mapping = build_atlas(pictures, cell)
    mapping["_sheet"] = list(sheet.size)  # for the hover card's enlarged cell (not an icon)
    return data_uri(jpeg_bytes(sheet, quality=80)), mapping, cell


def region_box(link, item_id: str):
    """The box of a region point (``<link_id>:a`` / ``:b``) on its image, None if its link is gone."""
    if link is None:
        return None
    return link.box_a if item_id.endswith(":a") else link.box_b


def atlas_deck(table: MapTable, uri: str, mapping: dict) -> pdk.Deck:
    """The deck: one icon per image, sized in map units so pictures grow as you zoom in."""
    images = session.image_index(store)
    def text(image_id: str, field: str) -> str:  # deck.gl's tooltip is HTML: escape every value
        return html.escape(str(getattr(images.get(image_id), field, None) or ""))
    sheet = tuple(mapping["_sheet"])
    records = [{"position": [float(table.x[i]), float(table.y[i])], "icon": str(i), "point": i,
                **hover_sprite(mapping[str(i)], sheet),
                "title": text(image_id, "title") or html.escape(image_id),
                "artist": text(image_id, "artist"), "date": text(image_id, "date"),
                "detail": f"detail of link #{table.link_ids[i]}" if table.kind == "region" else ""}
               for i, image_id in enumerate(table.image_ids)]
    span = max(float(np.ptp(table.x)), float(np.ptp(table.y)), 1e-9)
    # pydeck reads a bare string as a data accessor: literal strings go in quotes
    layer = pdk.Layer("IconLayer", id="atlas", data=records, get_icon="icon", get_position="position",
                      icon_atlas=f'"{uri}"', icon_mapping={k: v for k, v in mapping.items() if k != "_sheet"},
                      get_size=span / np.sqrt(len(table)) * 0.6, size_units='"common"',
                      size_min_pixels=6, size_max_pixels=320, pickable=True,
                      auto_highlight=True, highlight_color=[29, 120, 230, 90])
    # the tooltip sits beside the pointer and lets clicks through to the picture under it
    # the enlarged picture is the atlas cell: the sheet is a CSS background set once (atlas_css)
    tooltip = {"html": '<div class="am-hover" style="width:{hw}px;height:{hh}px;background-position:'
                       '{hx}px {hy}px;background-size:{sw}px {sh}px"></div>'
                       "<b>{title}</b><br/>{artist} {date}<br/>{detail}",
               "style": {"fontSize": "13px", "maxWidth": "280px", "pointerEvents": "none",
                         "marginLeft": "16px", "marginTop": "16px"}}
    return pdk.Deck(layers=[layer], views=[pdk.View(type="OrthographicView", controller=True)],
                    initial_view_state=pdk.ViewState(**view_state(table.x.tolist(), table.y.tolist(),
                                                                  ATLAS_WIDTH)),
                    tooltip=tooltip, map_style=None)


def atlas_selection(event) -> list[int]:
    objects = (event.selection.get("objects", {}) if event and event.selection else {}) or {}
    return sorted({int(o["point"]) for o in objects.get("atlas", []) if "point" in o})


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
            x=table.x[idx], y=table.y[idx], mode="markers", name=plot_text(name), customdata=idx,
            text=hover_arr[idx], hovertemplate="%{text}<extra></extra>", legendrank=1000 + rank,
            marker=dict(size=7 if len(table) < 2000 else 4, opacity=0.85, **marker)))
    # grey points first, so the named categories are drawn over them; the legend keeps its order
    fig.data = tuple(sorted(fig.data, key=lambda t: t.name not in (NONE_LABEL, OTHER_LABEL, "undated")))
    fig.update_layout(height=640, margin=dict(l=10, r=10, t=30, b=10), dragmode="pan",
                      showlegend=True,  # also for a single category
                      legend=dict(title=plot_text(by), itemsizing="constant"),
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


def batch_ui(store, image_ids: list[str], annotator: str) -> None:
    """Actions on the links among the chosen images: judge, open in Review, export."""
    among = links_among(store.list_links(), image_ids) if len(image_ids) > 1 else []
    if not among:
        return
    open_ids = [lk.link_id for lk in among if lk.status == UNREVIEWED]
    st.text(f"{len(among)} link(s) among them, {len(open_ids)} unreviewed")
    c1, c2 = st.columns(2)
    c1.button(f"Confirm {len(open_ids)}", key="map_batch_confirm", disabled=not open_ids,
              on_click=judge_unreviewed, args=(store, among, "confirm", annotator), width="stretch")
    c2.button(f"Reject {len(open_ids)}", key="map_batch_reject", disabled=not open_ids,
              on_click=judge_unreviewed, args=(store, among, "reject", annotator), width="stretch")
    c3, c4 = st.columns(2)
    if c3.button("Open in Review", key="map_batch_review", disabled=not open_ids, width="stretch"):
        st.session_state.review_batch = open_ids
        st.switch_page("pages/review.py")
    c4.download_button("Export (CSV)", lambda: export_view(store, "csv", [lk.link_id for lk in among]),
                       "map-selection-links.csv", "text/csv", key="map_batch_csv", width="stretch",
                       help="The confirmed links among the chosen images")


def side_panel(store, table: MapTable, chosen: list[int], annotator: str) -> None:
    if not chosen:
        st.text("Click a point (or, drawn as dots,\nlasso several) to see them here.")
        return
    image_ids = list(dict.fromkeys(table.image_ids[i] for i in chosen if table.image_ids[i]))
    st.text(f"{len(chosen)} point(s) selected, {len(image_ids)} image(s)")
    batch_ui(store, image_ids, annotator)
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
annotator = session.require_annotator()
model = session.model_id(store)
st.title("Map")
c1, c2, c3 = st.columns(3)
KIND_LABELS = {"image": "images", "region": "detail regions", "style": "images by style"}
kind = c1.radio("Points", tuple(KIND_LABELS), horizontal=True, key="map_kind", format_func=KIND_LABELS.get,
                help="images by style: laid out by early-layer statistics (how they are drawn); "
                     "its HDBSCAN groups are style groups")
draw = c3.radio("Draw as", ("dots", "thumbnails"), horizontal=True, key="map_draw",
                help="Thumbnails: every image as its picture, every detail region as its crop "
                "(click or shift-click to choose); dots: colours and the lasso")
by = c2.selectbox("Colour by", COLOUR_BY, key="map_colour", disabled=draw == "thumbnails",
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
    if draw == "thumbnails":
        uri, mapping, _ = atlas_data(store, session.project()[1], store.path, model, kind, version)
        # the sheet once as the hover card's background (our own data URI, no user text in it)
        st.html(f'<style>.deck-tooltip .am-hover {{background-image: url("{uri}"); '
                "background-repeat: no-repeat; margin-bottom: 4px;}</style>")
        event = st.pydeck_chart(atlas_deck(table, uri, mapping), key="map_atlas", height=640,
                                on_select="rerun", selection_mode="multi-object")
        found = atlas_selection(event)
        st.text(f"{len(table)} points")
        st.caption("Scroll to zoom, drag to pan; click a picture to open it, shift-click to add more.")
    else:
        event = st.plotly_chart(cached_figure(store.path, model, kind, by, version, data),
                                key="map_chart", on_select="rerun",
                                selection_mode=("points", "box", "lasso"), config={"displaylogo": False})
        found = selected_indices(event)
        st.text(f"{len(table)} points")
        st.caption("Click a point to open it; the lasso and box tools in the chart's toolbar "
                   "choose several.")
chosen = kept_selection(st.session_state.get("map_chosen", []), st.session_state.get("map_view"),
                        found, (kind, by))
st.session_state.map_chosen, st.session_state.map_view = chosen, (kind, by)
with panel:
    side_panel(store, table, chosen, annotator)
