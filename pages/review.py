"""Review: one candidate link at a time, answered with a click or a key.

Every answer is written to the verdict log at once (a reload loses nothing) and the
next candidate is drawn in the same script run, from pictures cached ahead of time.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image

from db.records import UNREVIEWED, Link
from engine.images import ImageReadError
from engine.types import Box
from hitl.difference import difference_view, flicker_gif, outline, swipe
from hitl.overlay import aligned_pair, crop_region
from hitl.queue import STRATEGIES, next_links
from hitl.thumbnails import jpeg_bytes
from pages import session

DETAIL_SIDE = 1024  # decode side for enlarged regions: sharp crops of big scans
SHOWN_SIDE = 480  # side of the two full images
CROP_SIDE = 300
A_COLOUR, B_COLOUR = (230, 57, 70), (29, 120, 230)
KEYS = {"confirm": "Y", "reject": "N", "unsure": "U", "skip": "S", "undo": "Z"}

for key, default in (("review_skipped", []), ("review_focus", None), ("review_note", "")):
    st.session_state.setdefault(key, default)


@st.cache_data(show_spinner=False, max_entries=256)
def region_pictures(path_a: str, path_b: str, box_a: tuple, box_b: tuple, affine: tuple,
                    ) -> tuple[bytes, bytes, np.ndarray, np.ndarray] | None:
    """(A region JPEG, B region JPEG, A region pixels, B warped onto A pixels)."""
    try:
        view_a, scale_a = session.view(path_a, DETAIL_SIDE)
        view_b, scale_b = session.view(path_b, DETAIL_SIDE)
    except ImageReadError:
        return None
    crop_a, warped = aligned_pair(view_a, scale_a, view_b, scale_b, Box(*box_a), affine, CROP_SIDE)
    crop_b = crop_region(view_b, Box(*box_b), scale_b, CROP_SIDE)
    return jpeg_bytes(crop_a), jpeg_bytes(crop_b), np.asarray(crop_a), np.asarray(warped)


def pictures_of(store, link: Link) -> tuple:
    a, b = store.get_image(link.image_a), store.get_image(link.image_b)
    if a is None or b is None:
        return a, b, None
    return a, b, region_pictures(a.path, b.path, tuple(link.box_a.as_list()),
                                 tuple(link.box_b.as_list()), link.match.affine)


def prefetch(store, link: Link | None) -> None:
    """Decode and draw the next candidate now, so answering shows it without waiting."""
    if link is None:
        return
    a, b, _ = pictures_of(store, link)
    for image, box, colour in ((a, link.box_a, A_COLOUR), (b, link.box_b, B_COLOUR)):
        if image is not None:  # the same arguments as show_image's call: a cache hit later
            session.boxed_jpeg(image.path, (tuple(box.as_list()),), SHOWN_SIDE, colour)


# ---------------------------------------------------------------------- actions


def answer(store, link: Link, verdict: str, annotator: str) -> None:
    note = st.session_state.review_note.strip() or None
    store.add_verdict(link.link_id, verdict, annotator, note=note)
    st.session_state.review_note = ""
    st.session_state.review_focus = None
    st.session_state.review_last = f"Link #{link.link_id}: {verdict}"


def skip(link: Link) -> None:
    st.session_state.review_skipped = [*st.session_state.review_skipped, link.link_id]
    st.session_state.review_focus = None


def undo_last(store, annotator: str) -> None:
    last = store.last_verdict_by(annotator, target_kind="link")
    if last is None:
        st.session_state.review_last = "Nothing of yours to undo."
        return
    store.undo_verdict(last.verdict_id, annotator)
    st.session_state.review_focus = last.target_id  # show the link again, to answer anew
    st.session_state.review_last = f"Undid your {last.verdict} on link #{last.target_id}"


# ---------------------------------------------------------------------- drawing


def controls_ui(store, model: str) -> tuple[str, float]:
    left, right, count = st.columns([2, 2, 3], vertical_alignment="bottom")
    strategy = left.selectbox("Queue order", STRATEGIES, key="review_strategy",
                              help="score: best first · uncertainty: nearest the threshold · "
                                   "coverage: one per cluster first")
    threshold = right.number_input("Decision threshold", value=session.decision_threshold(store, model),
                                   min_value=0.0, step=0.005, format="%.3f", key="review_threshold",
                                   disabled=strategy != "uncertainty")
    count.text(f"{store.count_links(model_id=model, status=UNREVIEWED)} links left to review")
    return strategy, float(threshold)


def link_ui(store, link: Link) -> None:
    """Row 1: A and B with their boxes, the aligned overlay; row 2: enlarged regions, metadata."""
    a, b, regions = pictures_of(store, link)
    full_a, full_b, overlay = st.columns(3)
    for col, image, box, colour in ((full_a, a, link.box_a, A_COLOUR), (full_b, b, link.box_b, B_COLOUR)):
        with col:
            session.show_image(image, (box,), SHOWN_SIDE, colour=colour)
    if regions is None:
        st.warning("The regions cannot be shown: an image file is missing or unreadable.")
        return
    jpeg_a, jpeg_b, pixels_a, warped = regions
    with overlay:
        opacity = st.slider("B over A (aligned by the link's affine)", 0.0, 1.0, 0.5, 0.05,
                            key="review_opacity", help="0: A's region only, 1: B's region only, "
                                                       "warped onto A's frame")
        mixed = (pixels_a * (1 - opacity) + warped * opacity).astype(np.uint8)
        st.image(jpeg_bytes_of(mixed), width="stretch")
    region_a, region_b, text_a, text_b = st.columns(4)
    region_a.image(jpeg_a, width="stretch")
    region_b.image(jpeg_b, width="stretch")
    with text_a:
        st.text("A (red)")
        session.show_metadata(a)
    with text_b:
        st.text("B (blue)")
        session.show_metadata(b)
    mask_ui(store, a, b, link)
    difference_ui(a, b, link)


@st.cache_data(show_spinner=False, max_entries=64)
def difference_pictures(path_a: str, path_b: str, box_a: tuple, affine: tuple,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bytes, bool] | None:
    """(A region, aligned B, A with differences in red, flicker GIF, flow kept?)."""
    try:
        view_a, scale_a = session.view(path_a, DETAIL_SIDE)
        view_b, scale_b = session.view(path_b, DETAIL_SIDE)
    except ImageReadError:
        return None
    found = difference_view(np.asarray(view_a.convert("RGB")), np.asarray(view_b.convert("RGB")), Box(*box_a),
                            affine, scale_a, scale_b)
    return (np.asarray(found.a), np.asarray(found.b), np.asarray(found.highlight),
            flicker_gif(found.a, found.b), found.alignment.refined)


@st.cache_data(show_spinner=False, max_entries=64)
def mask_pictures(path_a: str, path_b: str, box_a: tuple, box_b: tuple, polygon_a: tuple, polygon_b: tuple,
                  ) -> tuple[bytes, bytes] | None:
    """JPEGs of the two regions with the shared detail outlined."""
    try:
        view_a, scale_a = session.view(path_a, DETAIL_SIDE)
        view_b, scale_b = session.view(path_b, DETAIL_SIDE)
    except ImageReadError:
        return None
    pictures = []
    for view, scale, box, polygon, colour in ((view_a, scale_a, box_a, polygon_a, A_COLOUR),
                                              (view_b, scale_b, box_b, polygon_b, B_COLOUR)):
        crop = crop_region(view, Box(*box), scale, CROP_SIDE)
        pictures.append(jpeg_bytes(outline(crop, Box(*box), polygon, colour)))
    return pictures[0], pictures[1]


def mask_ui(store, a, b, link: Link) -> None:
    """The shared detail (engine/cosegment.py) outlined in both regions, when stored."""
    mask = store.link_masks([link.link_id]).get(link.link_id)
    if a is None or b is None or mask is None or len(mask.polygon_a) < 3:
        return
    pictures = mask_pictures(a.path, b.path, tuple(link.box_a.as_list()), tuple(link.box_b.as_list()),
                             mask.polygon_a, mask.polygon_b)
    if pictures is not None:
        left, right, note = st.columns([1, 1, 2])
        left.image(pictures[0], width="stretch")
        right.image(pictures[1], width="stretch")
        note.caption("Outlined: the shared detail in A and in B (its mask)"
                     + ("" if mask.refined else "; aligned by the affine only"))


def difference_ui(a, b, link: Link) -> None:
    """Aligned B over A (affine + regularised flow) and what differs: changes, additions, omissions."""
    if a is None or b is None:
        return
    # A toggle, not an expander: Streamlit runs a collapsed expander's code too, and the
    # alignment would slow every answer -> next candidate step.
    if not st.toggle("Difference view: B finely aligned over A", key="review_diff_on"):
        return
    with st.container(border=True):
        pictures = difference_pictures(a.path, b.path, tuple(link.box_a.as_list()), link.match.affine)
        if pictures is None:
            st.text("(an image is not readable)")
            return
        crop_a, aligned, marked, gif, refined = pictures
        mode = st.radio("Show", ("differences", "flicker", "swipe"), horizontal=True, key="review_diff_mode")
        if mode == "differences":
            st.image(jpeg_bytes_of(marked), caption="A in grey; red: where aligned B differs", width=CROP_SIDE * 2)
        elif mode == "flicker":
            st.image(gif, caption="A and aligned B in turn", width=CROP_SIDE * 2)
        else:
            split = st.slider("Swipe: A left, B right", 0.0, 1.0, 0.5, 0.01, key="review_swipe")
            st.image(jpeg_bytes_of(np.asarray(swipe(Image.fromarray(crop_a), Image.fromarray(aligned), split))),
                     width=CROP_SIDE * 2)
        st.caption("aligned by the link's affine and a local flow" if refined else
                   "aligned by the link's affine (no local flow passed the consistency checks)")


def jpeg_bytes_of(pixels: np.ndarray) -> bytes:
    return jpeg_bytes(Image.fromarray(pixels))


def buttons_ui(store, link: Link | None, annotator: str) -> None:
    if link is not None:
        st.text(f"Link #{link.link_id}   score {link.score:.3f}   {link.match.n_inliers} inliers   "
                f"status: {link.status}" + ("   mirrored copy" if link.match.mirrored else ""))
    cols = st.columns([1, 1, 1, 1, 1, 3], vertical_alignment="bottom")
    cols[5].text_input("Note (optional, saved with your answer)", key="review_note")
    if link is not None:
        for col, verdict, kind in ((cols[0], "confirm", "primary"), (cols[1], "reject", "secondary"),
                                   (cols[2], "unsure", "secondary")):
            col.button(verdict.capitalize(), key=verdict, type=kind, shortcut=KEYS[verdict],
                       on_click=answer, args=(store, link, verdict, annotator), width="stretch")
        cols[3].button("Skip", key="skip", shortcut=KEYS["skip"], on_click=skip, args=(link,),
                       width="stretch")
    cols[4].button("Undo", key="undo", shortcut=KEYS["undo"], on_click=undo_last,
                   args=(store, annotator), width="stretch", help="Undo your last verdict")
    st.caption("Keys: **Y** confirm · **N** reject · **U** unsure · **S** skip · "
               "**Z** undo your last verdict")


def history_ui(store, link: Link) -> None:
    rows = [{"when (UTC)": v.created.strftime("%Y-%m-%d %H:%M:%S"), "who": v.annotator,
             "verdict": v.verdict if v.verdict != "revoke" else f"undo of #{v.revokes}",
             "note": v.note or "", "id": v.verdict_id,
             "undone by": v.revoked_by if v.revoked_by is not None else None}
            for v in store.link_history(link.link_id)]
    with st.expander(f"History of link #{link.link_id} ({len(rows)})", expanded=bool(rows)):
        if rows:
            st.dataframe(rows, hide_index=True, width="stretch")
        else:
            st.text("No verdicts yet.")


# ---------------------------------------------------------------------- page

store = session.store()
annotator = session.require_annotator()
model = session.model_id(store)
st.title("Review")
strategy, threshold = controls_ui(store, model)
if st.session_state.get("review_last"):
    st.toast(st.session_state.pop("review_last"))
queue = next_links(store, strategy, threshold, limit=2, model_id=model,
                   exclude=st.session_state.review_skipped)
focus = st.session_state.review_focus
current = store.get_link(focus) if focus is not None else (queue[0] if queue else None)
if current is None:
    st.success("Nothing left to review with this model."
               + (" (You skipped some; reload the page to see them again.)"
                  if st.session_state.review_skipped else ""))
    buttons_ui(store, None, annotator)
    st.stop()
buttons_ui(store, current, annotator)
link_ui(store, current)
history_ui(store, current)
upcoming = [lk for lk in queue if lk.link_id != current.link_id]
prefetch(store, upcoming[0] if upcoming else None)
