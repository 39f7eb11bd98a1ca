"""Synchronised zoom and pan on both images of a link, at full resolution.

The browser draws two canvases (``zoom_view.js``): A on the left, B on the right. A's
view (a centre in A's original pixels and a zoom in screen pixels per original pixel) is
the one state; B shows the place the link's affine maps it to (:func:`mapped_view`), at
the zoom that keeps a detail the same size on screen in both. Zooming or panning either
image moves both (a gesture on B goes through the inverse affine first).

While the view moves, the browser redraws at once from what it holds (a 1024-pixel
overview of each image and the last sharp crops): smooth at any image size. When the
gesture settles, the app reads the crops of exactly the visible areas from each image's
tile pyramid (:mod:`hitl.tiles`), at the level whose pixels match the screen's, and the
canvases sharpen. So a 20,000-pixel scan is never decoded whole after its pyramid exists,
and the browser never holds more than about two screens of pixels per image.

These functions are the geometry and the data passed to the browser; the JS mirrors
:func:`mapped_view` and :func:`inverse_affine` (tested in the browser test).
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from engine.types import Affine, Box, Inlier
from hitl.tiles import TilePyramid, read_region
from hitl.views.thumbnails import jpeg_bytes

CANVAS = (640, 480)  # CSS px of each canvas at most; the browser shrinks both to fit its column
OVERVIEW_SIDE = 1024  # px: the coarse picture drawn at once while a gesture is under way
FIT_MARGIN = 0.5  # the first view shows the link's box with half its size of context around it
MAX_ZOOM = 8.0  # screen px per original px: 8x past full resolution, enough to see brush strokes
JS_FILE = Path(__file__).with_name("zoom_view.js")


@dataclass(frozen=True)
class ZoomView:
    """What one canvas shows: centre ``(cx, cy)`` in original pixels and ``zoom`` in
    screen pixels per original pixel."""

    cx: float
    cy: float
    zoom: float

    def __post_init__(self) -> None:
        if not (self.zoom > 0 and math.isfinite(self.zoom) and math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"a zoom view needs a finite centre and a zoom > 0, got {self}")


def linear_scale(affine: Affine) -> float:
    """B pixels per A pixel along any direction (on average): sqrt |det| of the linear part."""
    (a, b, _), (d, e, _) = affine
    return math.sqrt(abs(a * e - b * d))


def inverse_affine(affine: Affine) -> Affine:
    """The B -> A affine of an A -> B one.

    Raises:
        ValueError: a degenerate (non-invertible) affine.
    """
    (a, b, c), (d, e, f) = affine
    det = a * e - b * d
    if abs(det) < 1e-12:
        raise ValueError(f"the affine {affine} is not invertible")
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return ((ia, ib, -(ia * c + ib * f)), (id_, ie, -(id_ * c + ie * f)))


def mapped_view(view: ZoomView, affine: Affine) -> ZoomView:
    """The view of the other image: its centre mapped by ``affine``, the zoom divided by
    the affine's scale (a detail ×1.3 larger there is shown at 1/1.3 the zoom)."""
    (a, b, c), (d, e, f) = affine
    return ZoomView(a * view.cx + b * view.cy + c, d * view.cx + e * view.cy + f,
                    view.zoom / linear_scale(affine))


def fit_view(box: Box, canvas: tuple[int, int] = CANVAS, margin: float = FIT_MARGIN) -> ZoomView:
    """The view centred on ``box`` that shows it whole, with ``margin`` of its size around."""
    zoom = min(canvas[0] / (box.width * (1 + 2 * margin)), canvas[1] / (box.height * (1 + 2 * margin)))
    return ZoomView(*box.center, min(zoom, MAX_ZOOM))


def visible_box(view: ZoomView, canvas: tuple[int, int] = CANVAS) -> Box:
    """The area of the image (original pixels) the view shows on a ``canvas`` (w, h)."""
    half_w, half_h = canvas[0] / 2 / view.zoom, canvas[1] / 2 / view.zoom
    return Box(view.cx - half_w, view.cy - half_h, view.cx + half_w, view.cy + half_h)


def data_uri(picture) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(picture, quality=88)).decode("ascii")


@functools.lru_cache(maxsize=32)  # a pyramid never changes once built: one encoding per image
def overview(pyramid: TilePyramid) -> dict:
    """The whole image at the first level no larger than ``OVERVIEW_SIDE``, as a data URI."""
    level = next((k for k in range(pyramid.levels) if max(pyramid.level_size(k)) <= OVERVIEW_SIDE),
                 pyramid.levels - 1)
    picture, covered = read_region(pyramid, Box(0, 0, pyramid.width, pyramid.height), level)
    return {"src": data_uri(picture), "box": covered.as_list()}


def detail(pyramid: TilePyramid, view: ZoomView, canvas: tuple[int, int] = CANVAS,
           pixel_ratio: float = 1.0) -> dict | None:
    """The visible area of the view as sharp as the screen shows it, or None when the
    view lies outside the image. ``level`` says which pyramid level it came from."""
    box = visible_box(view, canvas)
    if box.x1 <= 0 or box.y1 <= 0 or box.x0 >= pyramid.width or box.y0 >= pyramid.height:
        return None
    level = pyramid.level_for(1.0 / (view.zoom * max(pixel_ratio, 1e-3)))
    picture, covered = read_region(pyramid, box, level)
    return {"src": data_uri(picture), "box": covered.as_list(), "level": level}


def zoom_data(link_id: int, pyramids: tuple[TilePyramid, TilePyramid], boxes: tuple[Box, Box],
              affine: Affine, view: ZoomView, inliers: tuple[Inlier, ...] = (), pixel_ratio: float = 1.0,
              canvas: tuple[int, int] = CANVAS) -> dict:
    """Everything the browser needs for one link: per image its size, overview, box and the
    sharp crop of ``view`` (A) or of the mapped view (B); the affine both ways; the points."""
    views = (view, mapped_view(view, affine))
    images = [{"size": [p.width, p.height], "overview": overview(p), "box": b.as_list(),
               "detail": detail(p, v, canvas, pixel_ratio), "view": [v.cx, v.cy, v.zoom]}
              for p, b, v in zip(pyramids, boxes, views)]
    return {"link": link_id, "a": images[0], "b": images[1], "canvas": list(canvas), "max_zoom": MAX_ZOOM,
            "affine": [list(r) for r in affine], "inverse": [list(r) for r in inverse_affine(affine)],
            "points": [list(p) for p in inliers]}


def zoom_js() -> str:
    """The component's JavaScript (inline: the app loads nothing from the internet)."""
    return JS_FILE.read_text(encoding="utf-8")
