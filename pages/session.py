"""What every page shares: the open project, the annotator, cached pictures, safe text.

Session state keys (set up here, read by the pages):

* ``project_path``: the project file, from ``ARTMINER_PROJECT``, the URL or the sidebar;
* ``annotator``: the expert's name, asked once per browser session and kept in the URL
  (``?annotator=``) so a reload does not ask again.

Text from files and metadata is only ever shown with `st.text` or in dataframes, never
as Markdown (image captions and button labels render Markdown, so they get none).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
from PIL import Image

from db.records import ImageRecord, Run
from db.store import Store
from engine.images import ImageReadError
from engine.types import Box
from hitl.discover import DEFAULT_MIN_SCORE
from hitl.project import ProjectPaths, active_model_id, open_project
from hitl.views.overlay import BOX_COLOURS, crop_region, draw_boxes
from hitl.views.thumbnails import jpeg_bytes, load_view

PROJECT_ENV = "ARTMINER_PROJECT"


# ---------------------------------------------------------------------- project


@st.cache_resource(show_spinner=False)
def open_project_file(path: str) -> tuple[Store, ProjectPaths]:
    """The project at ``path`` (absolute), opened once per app process."""
    return open_project(path)


def project_path() -> str | None:
    if "project_path" not in st.session_state:
        found = st.query_params.get("project") or os.environ.get(PROJECT_ENV)
        st.session_state.project_path = found or None
    return st.session_state.project_path


def _through_entry() -> None:
    """Make sure this run went through ``streamlit_app.py``, rerunning it if not.

    Streamlit still honours its old "``pages/`` folder" mode until a script calls
    ``st.navigation``: the first request a fresh server gets for a page's URL (and every
    `AppTest` run) executes the page file alone, without the entry's project, annotator
    and sidebar. Switching the mode off and rerunning goes through the entry instead.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a future Streamlit without the old mode
        return
    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


def project() -> tuple[Store, ProjectPaths]:
    """The open project; stops the page with a message when there is none."""
    _through_entry()
    path = project_path()
    if not path:
        st.info("Open a project file in the sidebar (or start the app with "
                "`artminer app --project FILE`).")
        st.stop()
    try:
        return open_project_file(str(Path(path).expanduser().resolve()))
    except (FileNotFoundError, ValueError, OSError) as err:
        st.error("Cannot open the project file:")
        st.text(str(err))
        st.stop()


def store() -> Store:
    return project()[0]


def model_id(store: Store) -> str:
    """The active model (the pretrained default is registered on first use)."""
    return active_model_id(store)


def latest_run(store: Store, model: str) -> Run | None:
    runs = store.list_runs(model_id=model, kind="discovery")
    return runs[-1] if runs else None


def decision_threshold(store: Store, model: str) -> float:
    """The latest discovery run's clustering threshold, else discovery's default."""
    run = latest_run(store, model)
    return float(run.params.get("min_score", DEFAULT_MIN_SCORE)) if run else DEFAULT_MIN_SCORE


@st.cache_data(show_spinner=False, max_entries=4)
def _image_index(_store: Store, path: str, n_images: int) -> dict[str, ImageRecord]:
    return {im.image_id: im for im in _store.list_images()}


def image_index(store: Store) -> dict[str, ImageRecord]:
    """Every image of the project by id (cached until images are added)."""
    return _image_index(store, store.path, store.count_images())


# ---------------------------------------------------------------------- annotator


def annotator() -> str | None:
    if not st.session_state.get("annotator"):
        st.session_state.annotator = (st.query_params.get("annotator") or "").strip() or None
    return st.session_state.annotator


def set_annotator(name: str) -> None:
    name = name.strip()
    st.session_state.annotator = name or None
    if name:
        st.query_params["annotator"] = name
    elif "annotator" in st.query_params:
        del st.query_params["annotator"]


def require_annotator() -> str:
    """The annotator's name; stops the page to ask for it if this session has none."""
    name = annotator()
    if name:
        return name
    st.subheader("Who is reviewing?")
    st.write("Your name is stored with every verdict you give. It is asked once per session.")
    with st.form("annotator_form"):
        st.text_input("Your name", key="annotator_input")
        # a callback runs before the next script run: the page then starts with the name set
        st.form_submit_button("Start reviewing", type="primary",
                              on_click=lambda: set_annotator(st.session_state.annotator_input))
    st.stop()


# ---------------------------------------------------------------------- pictures


@st.cache_resource(show_spinner=False, max_entries=64)
def view(path: str, side: int) -> tuple[Image.Image, float]:
    """A decoded view of an image (shared, never modified) and its scale."""
    return load_view(path, side)


@st.cache_data(show_spinner=False, max_entries=512)
def boxed_jpeg(path: str, boxes: tuple[tuple[float, float, float, float], ...],
               side: int = 320, colour: tuple[int, int, int] | None = None) -> bytes | None:
    """JPEG of an image with boxes drawn (all in ``colour`` if given); None if unreadable."""
    try:
        picture, scale = view(path, side)
    except ImageReadError:
        return None
    colours = (colour,) if colour else BOX_COLOURS
    return jpeg_bytes(draw_boxes(picture, [Box(*b) for b in boxes], scale, colours))


@st.cache_data(show_spinner=False, max_entries=512)
def crop_jpeg(path: str, box: tuple[float, float, float, float], side: int = 200) -> bytes | None:
    """JPEG of one region of an image, enlarged so its longer side is ``side``; None if unreadable."""
    try:
        picture, scale = view(path, 1024)
    except ImageReadError:
        return None
    return jpeg_bytes(crop_region(picture, Box(*box), scale, side))


def show_image(image: ImageRecord | None, boxes: tuple[Box, ...] = (), side: int = 320,
               width: int | str = "stretch", colour: tuple[int, int, int] | None = None) -> None:
    """An image with its boxes, or a text line saying why it cannot be shown."""
    data = (boxed_jpeg(image.path, tuple(tuple(b.as_list()) for b in boxes), side, colour)
            if image else None)
    if data is None:
        st.text(f"(image not readable: {image.path if image else 'unknown image'})")
    else:
        st.image(data, width=width)


# ---------------------------------------------------------------------- text


def label(image: ImageRecord | None) -> str:
    """Short plain-text name of an image, for selectboxes and tables."""
    if image is None:
        return "(unknown image)"
    name = image.title or Path(image.path).name
    return f"{name} ({image.artist}, {image.date})" if image.artist and image.date else name


def show_metadata(image: ImageRecord | None, with_file: bool = True) -> None:
    """Title, artist, date, medium and collection (and the file name) as plain text."""
    if image is None:
        st.text("(image missing from the project)")
        return
    fields = (("Title", image.title), ("Artist", image.artist), ("Date", image.date),
              ("Medium", image.medium), ("Collection", image.collection),
              ("File", Path(image.path).name if with_file or not image.title else None))
    st.text("\n".join(f"{k}: {v}" for k, v in fields if v))
