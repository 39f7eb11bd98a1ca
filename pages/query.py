"""Query: box a detail in one image, find it in the whole collection, confirm hits as links.

The box is drawn with plotly's box-select on the picture (`st.plotly_chart` with
``on_select``): it ships with Streamlit, so there is no third-party drawing component
to keep working across Streamlit releases. The selection fills four number fields,
which can also be typed or corrected by hand.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from db.records import ImageRecord
from engine.detect import DetectConfig
from engine.images import ImageReadError
from engine.types import Box, Detection
from hitl.oneshot import load_project_collection, query_collection
from hitl.project import load_model
from hitl.views.query_links import hits_above, judge_hit, other_images, start_query_run
from hitl.views.thumbnails import jpeg_bytes
from pages import session

PICK_SIDE = 720
GRID = 24  # invisible points per side: plotly box-select needs selectable points
COLUMNS = 4
BOX_KEYS = ("query_x0", "query_y0", "query_x1", "query_y1")


@st.cache_resource(show_spinner="Loading the model and the collection's features…", max_entries=2)
def searcher(path: str, model: str):
    """The active model and the collection's feature bank (built once, cached on disk)."""
    store, paths = session.open_project_file(path)
    backbone = load_model(store, model)
    return backbone, load_project_collection(store, paths, backbone, progress=False)


def picker_figure(image: ImageRecord) -> go.Figure:
    picture, scale = session.view(image.path, PICK_SIDE)
    uri = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(picture)).decode()
    fig = go.Figure(go.Image(source=uri, dx=1 / scale, dy=1 / scale, hoverinfo="skip"))
    gx, gy = np.meshgrid(np.linspace(0, image.width, GRID), np.linspace(0, image.height, GRID))
    fig.add_trace(go.Scatter(x=gx.ravel(), y=gy.ravel(), mode="markers", hoverinfo="skip",
                             marker=dict(size=2, opacity=0), showlegend=False))
    x0, y0, x1, y1 = (st.session_state.get(k) for k in BOX_KEYS)
    if None not in (x0, y0, x1, y1) and x1 > x0 and y1 > y0:
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color="#e63946", width=3))
    fig.update_layout(dragmode="select", height=560, margin=dict(l=0, r=0, t=0, b=0),
                      xaxis=dict(visible=False, range=[0, image.width]),
                      yaxis=dict(visible=False, range=[image.height, 0], scaleanchor="x"))
    return fig


def take_selection(state, image: ImageRecord) -> None:
    """Copy a new box selection of the chart's state into the number fields.

    Called before the picture and the fields are drawn, so both show the new box.
    """
    selection = (state or {}).get("selection") or {}
    boxes = selection.get("box") or []
    if not boxes:
        return
    xs, ys = boxes[-1]["x"], boxes[-1]["y"]
    found = (max(0.0, min(xs)), max(0.0, min(ys)), min(float(image.width), max(xs)),
             min(float(image.height), max(ys)))
    if found != st.session_state.get("query_taken"):  # a rerun repeats the same selection
        st.session_state.query_taken = found
        for key, value in zip(BOX_KEYS, found):
            st.session_state[key] = float(round(value))


def box_ui(image: ImageRecord) -> Box | None:
    cols = st.columns(4)
    limits = (image.width, image.height, image.width, image.height)
    values = [col.number_input(k[-2:], 0.0, float(lim), key=k, step=1.0)
              for col, k, lim in zip(cols, BOX_KEYS, limits)]
    x0, y0, x1, y1 = values
    return Box(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def run_query(store, model: str, image: ImageRecord, box: Box, top_k: int) -> None:
    backbone, collection = searcher(store.path, model)
    # one more hit than asked for: the query's own image (always the best match) is left out
    hits = query_collection(backbone, collection, Path(image.path), box, DetectConfig(top_k=top_k + 1),
                            query_id=image.image_id)
    st.session_state.query_results = {"image": image.image_id, "box": box.as_list(),
                                      "hits": other_images(hits, image.image_id)[:top_k], "run": None,
                                      "confirmed": {}, "judged": {}}


def on_judge(store, model: str, indices: list[int], verdict: str, annotator: str) -> None:
    """Store the hits as links with the verdict (reject: a hard negative for training)."""
    if not session.can("confirm_hit"):
        st.toast("Your role may search but not judge links.")
        return
    res = st.session_state.query_results
    box = Box(*res["box"])
    if res["run"] is None:
        res["run"] = start_query_run(store, model, res["image"], box)
    for index in indices:
        done = judge_hit(store, res["run"], res["image"], box, res["hits"][index], verdict, annotator,
                         actor=session.actor())
        res.setdefault("judged", {})[index] = (verdict, done.link_id)
        if verdict == "confirm":
            res["confirmed"][index] = done.link_id


def on_confirm(store, model: str, index: int, annotator: str) -> None:
    on_judge(store, model, [index], "confirm", annotator)


def results_ui(store, model: str, annotator: str) -> None:
    res = st.session_state.get("query_results")
    if not res:
        return
    hits: list[Detection] = res["hits"]
    st.subheader(f"{len(hits)} results")
    if not hits:
        st.text("No detections.")
        return
    judged = res.setdefault("judged", {})
    low, button = st.columns([1, 1], vertical_alignment="bottom")
    floor = low.number_input("Confirm every hit scoring at least", 0.0, 1.0,
                             value=float(max(h.score for h in hits)), step=0.01, format="%.3f",
                             key="query_floor")
    above = hits_above(hits, floor, done=judged)
    button.button(f"Confirm all {len(above)} above", key="query_confirm_above", disabled=not above,
                  on_click=on_judge, args=(store, model, above, "confirm", annotator))
    columns = st.columns(COLUMNS)
    for i, hit in enumerate(hits):
        with columns[i % COLUMNS]:
            image = store.get_image(hit.image_id)
            session.show_image(image, (hit.box,), side=300)
            st.text(f"{i + 1}. score {hit.score:.3f}\n{session.label(image)}")
            if i in judged:
                verdict, link_id = judged[i]
                st.text(f"{'confirmed' if verdict == 'confirm' else 'rejected'} as link #{link_id}")
                continue
            yes, no = st.columns(2)
            yes.button("Confirm as link", key=f"query_confirm_{i}", on_click=on_confirm,
                       args=(store, model, i, annotator))
            no.button("Reject", key=f"query_reject_{i}", on_click=on_judge,
                      args=(store, model, [i], "reject", annotator),
                      help="Not the detail: kept as a hard negative for training")


store = session.store()
annotator = session.require_annotator()
model = session.model_id(store)
st.title("Query")
images = store.list_images()
if not images:
    st.info("The project has no images yet: `artminer ingest` adds them.")
    st.stop()
by_id = {im.image_id: im for im in images}
choice = st.selectbox("Image", list(by_id), format_func=lambda i: session.label(by_id[i]),
                      key="query_image")
image = by_id[choice]
if st.session_state.get("query_for") != choice:  # a new image: forget the old box
    st.session_state.query_for = choice
    for key in BOX_KEYS:
        st.session_state[key] = 0.0
    st.session_state.query_taken = None
    st.session_state.pop("query_results", None)
chart_key = f"query_pick_{choice}"
take_selection(st.session_state.get(chart_key), image)
left, right = st.columns([3, 2])
with left:
    try:
        st.plotly_chart(picker_figure(image), key=chart_key, on_select="rerun",
                        selection_mode="box", config={"displaylogo": False})
    except ImageReadError as err:
        st.text(str(err))
        st.stop()
with right:
    st.text("Drag a box around a detail on the picture,\nor type its corners (original pixels).")
    box = box_ui(image)
    top_k = st.slider("Results", 4, 40, 12, 4, key="query_top_k")
    if st.button("Find this detail", type="primary", key="query_run", disabled=box is None):
        with st.spinner("Searching the collection…"):
            run_query(store, model, image, box, top_k)
results_ui(store, model, annotator)
