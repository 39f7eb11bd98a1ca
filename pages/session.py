"""What every page shares: the open project, the annotator, cached pictures, safe text.

Session state keys (set up here, read by the pages):

* ``project_path``: the project file, from ``ARTMINER_PROJECT``, the URL or the sidebar;
* ``annotator``: the expert's name, asked once per browser session and kept in the URL
  (``?annotator=``) so a reload does not ask again; only with ``auth = none``.
* ``user``: the logged-in `User` (name and role) with ``auth = local`` or ``oidc``; the
  annotator is then that user's name and the URL parameter is ignored.

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
from hitl.roles import ACTIONS, User
from hitl.users import (
    AUTH_ENV,
    OIDC_DEFAULT_ROLE_SETTING,
    app_auth_mode,
    auth_mode,
    authenticate,
    oidc_user,
    users_file,
)
from hitl.views.overlay import BOX_COLOURS, crop_region, draw_boxes
from hitl.views.thumbnails import jpeg_bytes, load_view

PROJECT_ENV = "ARTMINER_PROJECT"
PROJECTS_ENV = "ARTMINER_PROJECTS"  # `artminer app --projects DIR`: project files under DIR


# ---------------------------------------------------------------------- project


@st.cache_resource(show_spinner=False)
def open_project_file(path: str) -> tuple[Store, ProjectPaths]:
    """The project at ``path`` (absolute), opened once per app process."""
    return open_project(path)


def allowed_project(text: str | None) -> str | None:
    """``text`` as an absolute path if the app may open it, else None.

    The app serves the project it was started with (``ARTMINER_PROJECT``) and ``.duckdb``
    files under the projects folder it was started with (``ARTMINER_PROJECTS``); a URL
    parameter or the sidebar can choose among those, never any file the server can read.
    """
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    start = os.environ.get(PROJECT_ENV)
    if start and path == Path(start).expanduser().resolve():
        return str(path)
    folder = os.environ.get(PROJECTS_ENV)
    if (folder and path.suffix == ".duckdb" and path.is_file()
            and path.is_relative_to(Path(folder).expanduser().resolve())):
        return str(path)
    return None


def project_path() -> str | None:
    if "project_path" not in st.session_state:
        found = allowed_project(st.query_params.get("project")) or allowed_project(
            os.environ.get(PROJECT_ENV))
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


def auth() -> str:
    """The auth mode: the app's (``artminer app --auth``) if set, else the project's."""
    return app_auth_mode(os.environ.get(AUTH_ENV)) or auth_mode(store())


def actor() -> User | None:
    """The logged-in user, or None with ``auth = none`` (the trusted single user).

    A login holds for the project it was made on: opening another project asks again.
    """
    user = st.session_state.get("user")
    if user is not None and st.session_state.get("user_project") != _resolved(project_path()):
        st.session_state.pop("user", None)
        return None
    return user


def _resolved(path: str | None) -> str | None:
    """No page functions here: `actor` also runs in widget callbacks."""
    return str(Path(path).expanduser().resolve()) if path else None


def _sign_in(user: User, project: str) -> None:
    st.session_state.user = user
    st.session_state.user_project = _resolved(project)


def can(action: str) -> bool:
    """Whether this session's user may do ``action`` (see `hitl.roles`)."""
    user = actor()
    return user is None or user.can(action)


def require_role(action: str) -> None:
    """Stop the page with a plain message if this session's user may not do ``action``."""
    if not can(action):
        user = actor()
        st.info(f"Signed in as {user.name} ({user.role}): this page needs the "
                f"{ACTIONS[action]} role.")
        st.stop()


def require_login() -> User | None:
    """The logged-in user; stops the page at a login form (``local``) or the provider's
    login (``oidc``) until there is one. None with ``auth = none``."""
    mode = auth()
    if mode == "none":
        return None
    if actor() is None and mode == "oidc":
        _oidc_login()
    if actor() is None:
        _local_login()
    return actor()


def _local_login() -> None:
    st.subheader("Sign in")
    with st.form("login_form"):
        st.text_input("Name", key="login_name")
        st.text_input("Password", type="password", key="login_password")
        # a callback runs before the next script run, so the page starts signed in
        st.form_submit_button("Sign in", type="primary", on_click=_check_password,
                              args=(store().path,))
    if st.session_state.get("login_failed"):
        st.error("Unknown name or wrong password.")
    st.stop()


def _check_password(project: str) -> None:
    """Form callback (no page functions here: a callback runs outside the page's run)."""
    name = (st.session_state.get("login_name") or "").strip()
    password = st.session_state.get("login_password") or ""
    st.session_state.login_password = ""  # never kept in the session
    user = authenticate(users_file(project), name, password) if name else None
    st.session_state.login_failed = user is None
    if user is not None:
        _sign_in(user, project)


def _oidc_login() -> None:
    if not getattr(st.user, "is_logged_in", False):
        st.subheader("Sign in")
        st.button("Sign in with your institution's account", on_click=st.login, type="primary")
        st.stop()
    default = store().get_setting(OIDC_DEFAULT_ROLE_SETTING) or "viewer"
    _sign_in(oidc_user(st.user.to_dict(), users_file(store().path), default), store().path)


def log_out() -> None:
    st.session_state.pop("user", None)
    if auth() == "oidc" and getattr(st.user, "is_logged_in", False):
        st.logout()


def annotator() -> str | None:
    user = actor()
    if user is not None:  # with auth on, the identity is the annotator, never the URL
        return user.name
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
