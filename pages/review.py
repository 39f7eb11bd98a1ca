"""Review: one candidate link at a time, answered with a click or a key.

Every answer is written to the verdict log at once (a reload loses nothing) and the
next candidate is drawn in the same script run, from pictures cached ahead of time.

The evidence fits one 1366x768 laptop screen: a compact header (session progress,
queue order, filters, previous link), the buttons, then one row with both images and
their boxes, both enlarged regions and the aligned overlay, each work captioned with
its title, artist, date, medium and collection.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
from PIL import Image

from db.records import DIRECTIONS, UNREVIEWED, Link
from engine.images import ImageReadError
from engine.types import Box
from hitl.difference import difference_view, flicker_gif, outline, swipe
from hitl.queue import STRATEGIES, link_clusters, next_links, order_links, source_summary
from hitl.team import is_blind, plan_new_links, review_state, second_reviews
from hitl.tiles import ensure_pyramid
from hitl.verdicts import record_verdict, undo_last_verdict
from hitl.views.cluster_edits import current_clusters
from hitl.views.match_points import draw_matches
from hitl.views.overlay import aligned_pair, crop_region
from hitl.views.review_view import ReviewFilter, describe_affine, filter_links, session_progress
from hitl.views.thumbnails import jpeg_bytes
from hitl.views.zoom_view import CANVAS, ZoomView, fit_view, zoom_data, zoom_js
from pages import session

DETAIL_SIDE = 1024  # decode side for enlarged regions: sharp crops of big scans
SHOWN_SIDE = 360  # side of the two full images (a fifth of a 1366-pixel screen, sharp at 2x)
CROP_SIDE = 300
# Streamlit's default top padding (6rem) and heading margins cost a laptop screen a
# sixth of its height; our own constant CSS, no user text in it.
COMPACT_CSS = """<style>
.block-container {padding-top: 1.2rem; padding-bottom: 1rem;}
.block-container h1 {padding: 0 0 0.2rem 0; font-size: 1.6rem;}
.st-key-review_evidence [data-testid="stImage"] img {max-height: 260px; object-fit: contain;}
.st-key-review_evidence [data-testid="stText"] {font-size: 0.85rem; line-height: 1.35;}
</style>"""
A_COLOUR, B_COLOUR = (230, 57, 70), (29, 120, 230)
DIRECTION_WORDS = {None: "Direction: not said", "a_copies_b": "A copies B", "b_copies_a": "B copies A",
                   "common_model": "Both from a common model", "unknown": "Direction unknown"}
ZOOM_KEY = "review_zoom"
# Inline JS (no CDN): two canvases with one shared view; see hitl/views/zoom_view.py.
ZOOM_COMPONENT = st.components.v2.component("artminer_zoom", js=zoom_js(), isolate_styles=False)
KEYS = {"confirm": "Y", "reject": "N", "unsure": "U", "skip": "S", "undo": "Z"}

for key, default in (("review_skipped", []), ("review_focus", None), ("review_note", ""),
                     ("review_answered", [])):
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
    direction = st.session_state.get("review_direction") if verdict == "confirm" else None
    record_verdict(store, link.link_id, verdict, annotator, actor=session.actor(), note=note, direction=direction)
    st.session_state.review_note = ""
    st.session_state.review_direction = None
    st.session_state.review_focus = None
    st.session_state.review_answered = [*st.session_state.review_answered, link.link_id]
    st.session_state.review_last = f"Link #{link.link_id}: {verdict}"


def skip(link: Link) -> None:
    st.session_state.review_skipped = [*st.session_state.review_skipped, link.link_id]
    st.session_state.review_focus = None


def previous(current: Link | None) -> None:
    """Show the link answered before the one on screen (this session), to look or answer anew."""
    answered = st.session_state.review_answered
    at = answered.index(current.link_id) if current and current.link_id in answered else len(answered)
    if at == 0:
        st.session_state.review_last = "No earlier link in this session."
        return
    st.session_state.review_focus = answered[at - 1]


def undo_last(store, annotator: str) -> None:
    last = undo_last_verdict(store, annotator, actor=session.actor())
    if last is None:
        st.session_state.review_last = "Nothing of yours to undo."
        return
    st.session_state.review_focus = last.target_id  # show the link again, to answer anew
    st.session_state.review_last = f"Undid your {last.verdict} on link #{last.target_id}"


# ---------------------------------------------------------------------- drawing


def controls_ui(store, model: str) -> tuple[str, float, ReviewFilter, st.delta_generator.DeltaGenerator]:
    """One header row: session progress (a slot, filled once the queue is known), queue
    order, threshold, filters."""
    bar, left, right, filters = st.columns([4, 2, 2, 1], vertical_alignment="bottom")
    strategy = left.selectbox("Queue order", STRATEGIES, key="review_strategy",
                              help="score: best first · uncertainty: nearest the threshold · "
                                   "coverage: one per cluster first")
    threshold = right.number_input("Decision threshold", value=session.decision_threshold(store, model),
                                   min_value=0.0, step=0.005, format="%.3f", key="review_threshold",
                                   disabled=strategy != "uncertainty")
    with filters.popover("Filters", width="stretch"):
        flt = filters_ui(store, model)
    return strategy, float(threshold), flt, bar.empty()


def filters_ui(store, model: str) -> ReviewFilter:
    """Artist, medium, collection, score range, cluster and model of the links to review."""
    images = session.image_index(store)
    def options(field: str) -> list[str]:
        return sorted({v for im in images.values() if (v := getattr(im, field))})
    artists = st.multiselect("Artist", options("artist"), key="review_f_artist")
    media = st.multiselect("Medium", options("medium"), key="review_f_medium")
    collections = st.multiselect("Collection", options("collection"), key="review_f_collection")
    low, high = st.slider("Score range", 0.0, 1.0, (0.0, 1.0), 0.005, key="review_f_score",
                          format="%.3f")
    clusters = {c.cluster_id: c for c in current_clusters(store, model)}
    cluster = st.selectbox("Cluster", [None, *clusters], key="review_f_cluster",
                           format_func=lambda c: "any" if c is None else
                           f"#{c} ({len(clusters[c].images)} images)")
    models = st.multiselect("Model", [m.model_id for m in store.list_models()], key="review_f_model",
                            help=f"Links found by these models (default: the active one, {model})")
    only = frozenset(clusters[cluster].link_ids) if cluster is not None else None
    batch = st.session_state.get("review_batch")  # links of a map selection ("Open in Review")
    if batch is not None:
        only = frozenset(batch) if only is None else only & frozenset(batch)
    return ReviewFilter(frozenset(artists), frozenset(media), frozenset(collections),
                        low if low > 0 else None, high if high < 1 else None, only,
                        frozenset(models))


def review_queue(store, model: str, strategy: str, threshold: float, flt: ReviewFilter,
                 annotator: str, limit: int = 2) -> tuple[list[Link], int]:
    """The next ``limit`` links to review and how many are left, under the filters.

    Double-reviewed links waiting for this annotator's blind second look come first.
    """
    skipped = st.session_state.review_skipped
    second = [lk for lk in second_reviews(store, annotator, model) if lk.link_id not in skipped]
    if flt.active:
        second = filter_links(second, session.image_index(store), flt)
    if not flt.active:
        queue = next_links(store, strategy, threshold, limit=limit, model_id=model, exclude=skipped)
        return (second + queue)[:limit], store.status_counts(model)[UNREVIEWED] + len(second)
    links = [lk for lk in store.list_links(status=UNREVIEWED, order="link_id")
             if (flt.models or lk.model_id == model)]
    passed = filter_links(links, session.image_index(store), flt)
    clusters = (link_clusters(store.list_clusters(status=UNREVIEWED)) if strategy == "coverage" else None)
    sources = ({i: im.collection for i, im in session.image_index(store).items()}
               if strategy == "cross-source" else None)
    ordered = order_links([lk for lk in passed if lk.link_id not in skipped], strategy, threshold, clusters, sources)
    return (second + ordered)[:limit], len(passed) + len(second)


def sources_ui(store, model: str) -> None:
    """Links within each source and across each pair of sources (``collection``), by status."""
    images = session.image_index(store)
    rows = source_summary(store.list_links(model_id=model), {i: im.collection for i, im in images.items()})
    if len(rows) < 2:
        return
    with st.expander("Links by source"):
        table = [{"source A": a, "source B": "(within)" if a == b else b,
                  **{k: v for k, v in row.items() if k != "sources"}} for row in rows for a, b in [row["sources"]]]
        st.dataframe(table, hide_index=True, width="stretch")


def link_ui(store, link: Link) -> None:
    """One row: A and B with their boxes and captions, both enlarged regions, the overlay."""
    a, b, regions = pictures_of(store, link)
    with st.container(key="review_evidence"):
        full_a, full_b, region_a, region_b, overlay = st.columns([5, 5, 4, 4, 4])
        for col, image, box, colour, name in ((full_a, a, link.box_a, A_COLOUR, "A (red)"),
                                              (full_b, b, link.box_b, B_COLOUR, "B (blue)")):
            with col:
                session.show_image(image, (box,), SHOWN_SIDE, colour=colour)
                st.text(name)
                session.show_metadata(image, with_file=False)
        if regions is None:
            st.warning("The regions cannot be shown: an image file is missing or unreadable.")
            return
        jpeg_a, jpeg_b, pixels_a, warped = regions
        region_a.image(jpeg_a, width="stretch")
        region_a.text("A's region")
        region_b.image(jpeg_b, width="stretch")
        region_b.text("B's region")
        with overlay:
            opacity = st.slider("B over A", 0.0, 1.0, 0.5, 0.05, key="review_opacity",
                                help="Aligned by the link's affine. 0: A's region only, "
                                     "1: B's region only, warped onto A's frame")
            mixed = (pixels_a * (1 - opacity) + warped * opacity).astype(np.uint8)
            st.image(jpeg_bytes_of(mixed), width="stretch")
    points_ui(store, a, b, link)
    zoom_ui(store, a, b, link)
    mask_ui(store, a, b, link)
    difference_ui(a, b, link)


@st.cache_data(show_spinner=False, max_entries=64)
def points_picture(path_a: str, path_b: str, box_a: tuple, box_b: tuple, inliers: tuple,
                   mirrored: bool) -> bytes | None:
    """JPEG of both regions side by side, the inliers dotted in both and joined by lines."""
    try:
        view_a, scale_a = session.view(path_a, DETAIL_SIDE)
        view_b, scale_b = session.view(path_b, DETAIL_SIDE)
    except ImageReadError:
        return None
    return jpeg_bytes(draw_matches(view_a, scale_a, view_b, scale_b, Box(*box_a), Box(*box_b), inliers,
                                   height=CROP_SIDE, mirror_b=mirrored))


def points_ui(store, a, b, link: Link) -> None:
    """The link's inlier correspondences (why it was made), on a toggle: off, it costs nothing."""
    if a is None or b is None or not st.toggle("Matched points", key="review_points_on",
                                              help="The feature matches that verification found "
                                                   "consistent with the link's transform"):
        return
    stored = store.get_link(link.link_id)  # the queue reads links without their points
    inliers = stored.match.inliers if stored is not None else ()
    if not inliers:
        st.caption("No matched points stored for this link (re-run discovery to store them).")
        return
    mirrored = link.match.mirrored
    picture = points_picture(a.path, b.path, tuple(link.box_a.as_list()), tuple(link.box_b.as_list()), inliers,
                             mirrored)
    if picture is None:
        st.text("(an image is not readable)")
        return
    st.image(picture, width="content")
    st.caption(f"{len(inliers)} matched points of {link.match.n_inliers} inliers (the strongest), "
               "A left, B right" + (" (mirrored back, as it copies A's mirror image)" if mirrored else "")
               + ": parallel lines mean a consistent copy")


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


def zoom_ui(store, a, b, link: Link) -> None:
    """Both images at full resolution, zoomed and panned together (a toggle: off, no cost)."""
    if a is None or b is None or not st.toggle(
            "Zoom both at full resolution", key="review_zoom_on",
            help="Scroll to zoom, drag to pan, on either image: the other follows through the link's transform"):
        return
    zoom_fragment(store, a, b, link)


@st.fragment
def zoom_fragment(store, a, b, link: Link) -> None:
    """Reruns alone when the view settles: only the crops of the new view are read and sent."""
    _, paths = session.project()
    try:
        with st.spinner("Cutting the images into tiles (once per image)..."):
            pyramids = (ensure_pyramid(paths, a), ensure_pyramid(paths, b))
    except ImageReadError as err:
        st.text(f"(cannot zoom: {err})")
        return
    view, ratio, canvas = fit_view(link.box_a), 1.0, CANVAS
    sent = (st.session_state.get(ZOOM_KEY) or {}).get("view")
    if isinstance(sent, dict) and sent.get("link") == link.link_id:
        try:
            view, ratio = ZoomView(float(sent["cx"]), float(sent["cy"]), float(sent["zoom"])), float(sent["ratio"])
            canvas = (min(int(sent["width"]), CANVAS[0]), min(int(sent["height"]), CANVAS[1]))
        except (KeyError, TypeError, ValueError):
            pass  # a malformed view from the browser: start from the link's box
    inliers = ()
    if st.session_state.get("review_points_on"):
        stored = store.get_link(link.link_id)
        inliers = stored.match.inliers if stored is not None else ()
    data = zoom_data(link.link_id, pyramids, (link.box_a, link.box_b), link.match.affine, view, inliers, ratio,
                     canvas)
    data["canvas"] = list(CANVAS)  # the largest canvas; the browser fits them to its column
    ZOOM_COMPONENT(key=ZOOM_KEY, data=data, on_view_change=lambda: None)
    st.caption("Scroll to zoom, drag to pan, on either image: the other follows through the link's transform"
               + (" · yellow: matched points" if inliers else ""))


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
        agreement = link.match.agreement
        st.text(f"Link #{link.link_id}   score {link.score:.3f}   {link.match.n_inliers} inliers   "
                + (f"aligned agreement {agreement:.2f}   " if agreement is not None else "")
                + f"status: {review_state(store, link, annotator)}   "
                f"B against A: {describe_affine(link.match.affine)}"
                + ("   mirrored copy" if link.match.mirrored else ""))
    cols = st.columns([1.4, 1.2, 1.2, 1, 1, 1.2, 1.6, 1.6], vertical_alignment="bottom")
    cols[6].text_input("Note (optional, saved with your answer)", key="review_note",
                       label_visibility="collapsed", placeholder="Note (optional, saved with your answer)")
    cols[7].selectbox("Direction (stored with a confirm)", [None, *DIRECTIONS], key="review_direction",
                      label_visibility="collapsed", format_func=lambda d: DIRECTION_WORDS.get(d, d),
                      help="Who copied whom: drawn as the arrow on the Propagation page")
    cols[5].button("Previous", key="review_previous", on_click=previous, args=(link,),
                   width="stretch", help="The link you answered before this one")
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


def history_ui(store, link: Link, annotator: str) -> None:
    if is_blind(store, link.link_id, annotator):
        st.text("Double review: the other verdicts on this link are hidden until you answer.")
        return
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
session.require_role("verdict")
model = session.model_id(store)
st.html(COMPACT_CSS)
st.title("Review")
strategy, threshold, flt, progress_slot = controls_ui(store, model)
if st.session_state.get("review_batch") is not None:
    note, clear = st.columns([4, 1], vertical_alignment="center")
    note.text(f"Reviewing only the {len(st.session_state.review_batch)} links of your map selection.")
    if clear.button("Review everything", key="review_batch_clear"):
        del st.session_state["review_batch"]
        st.rerun()
if st.session_state.get("review_last"):
    st.toast(st.session_state.pop("review_last"))
queue, left = review_queue(store, model, strategy, threshold, flt, annotator)
fraction, words = session_progress(len(st.session_state.review_answered), left)
progress_slot.progress(fraction, text=words)
focus = st.session_state.review_focus
current = store.get_link(focus) if focus is not None else (queue[0] if queue else None)
if current is None:
    st.success("Nothing left to review with this model."
               + (" (You skipped some; reload the page to see them again.)"
                  if st.session_state.review_skipped else ""))
    buttons_ui(store, None, annotator)
    st.stop()
plan_new_links(store, [current])  # double review: its draw is made when a link is first shown
buttons_ui(store, current, annotator)
link_ui(store, current)
history_ui(store, current, annotator)
sources_ui(store, model)
upcoming = [lk for lk in queue if lk.link_id != current.link_id]
prefetch(store, upcoming[0] if upcoming else None)
