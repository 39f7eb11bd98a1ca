"""Known-answer tests of the synced zoom's geometry and of the crops it sends."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engine.types import Box
from hitl.tiles import build_pyramid
from hitl.views.zoom_view import (
    MAX_ZOOM,
    ZoomView,
    detail,
    fit_view,
    inverse_affine,
    linear_scale,
    mapped_view,
    visible_box,
    zoom_data,
    zoom_js,
)

HALF = ((0.5, 0.0, -100.0), (0.0, 0.5, -50.0))  # B = A's part from (200, 100) on, at half size
MIRROR = ((-2.0, 0.0, 900.0), (0.0, 2.0, 10.0))  # B = A mirrored, twice as large


def test_mapped_view_follows_the_affine():
    view = ZoomView(400.0, 300.0, 2.0)
    assert mapped_view(view, HALF) == ZoomView(100.0, 100.0, 4.0)  # half as large: twice the zoom
    assert mapped_view(view, MIRROR) == ZoomView(100.0, 610.0, 1.0)
    assert linear_scale(MIRROR) == 2.0


def test_inverse_affine_goes_back():
    for affine in (HALF, MIRROR, ((0.9, -0.2, 5.0), (0.3, 1.1, -7.0))):
        view = ZoomView(123.0, 45.0, 1.5)
        back = mapped_view(mapped_view(view, affine), inverse_affine(affine))
        assert (back.cx, back.cy, back.zoom) == pytest.approx((view.cx, view.cy, view.zoom))
    with pytest.raises(ValueError, match="not invertible"):
        inverse_affine(((1.0, 2.0, 0.0), (2.0, 4.0, 0.0)))


def test_fit_and_visible_box():
    view = fit_view(Box(100, 100, 300, 200), canvas=(400, 300), margin=0.5)
    assert view == ZoomView(200.0, 150.0, 1.0)  # 400 px show the 200-px box and 100 px each side
    assert visible_box(view, (400, 300)) == Box(0, 0, 400, 300)
    assert fit_view(Box(0, 0, 2, 2), canvas=(400, 300)).zoom == MAX_ZOOM  # a tiny box: capped
    with pytest.raises(ValueError, match="zoom > 0"):
        ZoomView(0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    rng = np.random.default_rng(1)
    pixels = np.asarray(Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).resize((1200, 800)))
    path = tmp_path_factory.mktemp("zoom") / "a.png"
    Image.fromarray(pixels).save(path)
    return build_pyramid(path, path.parent / "tiles", tile=256)


def _size(uri: str) -> tuple[int, int]:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).size


def test_detail_is_the_visible_area_at_the_screen_s_sharpness(pyramid):
    close = detail(pyramid, ZoomView(600.0, 400.0, 2.0), canvas=(400, 300))  # 200 x 150 px of the image
    assert close["level"] == 0 and close["box"] == [500, 325, 700, 475] and _size(close["src"]) == (200, 150)
    far = detail(pyramid, ZoomView(600.0, 400.0, 0.25), canvas=(400, 300))  # 4 image px per screen px
    assert far["level"] == 2 and far["box"] == [0, 0, 1200, 800] and _size(far["src"]) == (300, 200)
    sharp = detail(pyramid, ZoomView(600.0, 400.0, 0.25), canvas=(400, 300), pixel_ratio=2.0)
    assert sharp["level"] == 1  # a 2x screen needs twice the pixels
    assert detail(pyramid, ZoomView(5000.0, 400.0, 1.0), canvas=(400, 300)) is None  # off the image


def test_zoom_data_holds_both_views_and_points(pyramid):
    view = ZoomView(600.0, 400.0, 1.0)
    data = zoom_data(7, (pyramid, pyramid), (Box(500, 300, 700, 500), Box(150, 100, 250, 200)), HALF, view,
                     ((550.0, 350.0, 175.0, 125.0),), canvas=(400, 300))
    assert data["link"] == 7 and data["a"]["view"] == [600.0, 400.0, 1.0] and data["b"]["view"] == [200.0, 150.0, 2.0]
    assert data["b"]["detail"]["box"] == [100, 75, 300, 225]  # B's visible area, mapped
    assert data["points"] == [[550.0, 350.0, 175.0, 125.0]] and data["inverse"][0] == [2.0, 0.0, 200.0]
    assert data["a"]["overview"]["box"] == [0, 0, 1200, 800]
    assert "export default function" in zoom_js() and "http" not in zoom_js()  # inline, nothing fetched
