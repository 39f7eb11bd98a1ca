"""The difference view: a known change in an otherwise exact copy is what lights up."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.types import Box
from hitl.difference import difference_view, flicker_gif, outline, swipe
from tests.conftest import textured

AFFINE = np.array([[1.1, 0.0, 20.0], [0.0, 1.1, 15.0]])  # A -> B


def _pair():
    a = textured(1, 480, 640)[::2, ::2].copy()  # (240, 320) texture of 4-px cells
    b = cv2.warpAffine(a, AFFINE, (360, 280), flags=cv2.INTER_LINEAR)
    b[130:170, 150:200] = (20, 20, 20)  # the copyist's change: a dark patch
    return a, b


def test_the_changed_place_is_highlighted():
    a, b = _pair()
    view = difference_view(a, b, Box(60, 50, 260, 200), tuple(map(tuple, AFFINE)))
    assert view.a.size == view.b.size == view.highlight.size
    diff = view.difference
    # Where the patch lands in A's working crop: B (150..200, 130..170) back through the affine.
    inv = cv2.invertAffineTransform(AFFINE)
    (x0, y0), (x1, y1) = (inv[:, :2] @ np.array(p) + inv[:, 2] for p in ((150, 130), (200, 170)))
    region, scale = view.alignment.region, view.alignment.scale
    c0, c1 = int((x0 - region.x0) * scale) + 6, int((x1 - region.x0) * scale) - 6
    r0, r1 = int((y0 - region.y0) * scale) + 6, int((y1 - region.y0) * scale) - 6
    changed = diff[r0:r1, c0:c1].mean()
    elsewhere = np.delete(diff, np.s_[r0 - 30 : r1 + 30], axis=0).mean()
    assert changed > 0.5 and elsewhere < 0.25
    red = np.asarray(view.highlight).astype(int)
    assert (red[r0:r1, c0:c1, 0] - red[r0:r1, c0:c1, 1]).mean() > 60  # drawn in red


def test_swipe_and_flicker():
    a = Image.new("RGB", (10, 4), (0, 0, 0))
    b = Image.new("RGB", (10, 4), (200, 0, 0))
    out = np.asarray(swipe(a, b, 0.5))
    assert (out[:, :4] == 0).all() and (out[:, 6:, 0] == 200).all() and (out[:, 4:6] == 255).all()
    with pytest.raises(ValueError, match="swipe"):
        swipe(a, b, 1.5)
    with pytest.raises(ValueError, match="cannot swipe"):
        swipe(a, b.resize((5, 4)), 0.5)
    gif = Image.open(io.BytesIO(flicker_gif(a, b)))
    assert gif.n_frames == 2 and gif.info["loop"] == 0


def test_outline_draws_the_polygon_in_crop_coordinates():
    crop = Image.new("RGB", (100, 50), (0, 0, 0))  # the crop of box (200, 100)-(400, 200): 0.5 px per px
    box = Box(200, 100, 400, 200)
    drawn = np.asarray(outline(crop, box, [(220, 110), (380, 110), (380, 190), (220, 190)], (255, 0, 0), width=1))
    assert drawn[5, 50, 0] == 255 and drawn[25, 50, 0] == 0  # the top edge at y = (110-100)/2, not inside
    assert (np.asarray(outline(crop, box, [], (255, 0, 0))) == 0).all()
