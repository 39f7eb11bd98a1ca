"""Known-answer tests of the matched-points picture: layout, placed points, drawn dots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.types import Box
from hitl.views.match_points import GAP, draw_matches, place_points, point_colours, side_by_side


def test_layout_scales_both_regions_to_one_height():
    layout = side_by_side(Box(10, 20, 110, 70), Box(0, 0, 50, 100), height=200, margin=0.0)
    assert (layout.scale_a, layout.scale_b) == (4.0, 2.0)  # 50 px high -> 200; 100 -> 200
    assert layout.offset_b == 400 + GAP and layout.size == (400 + GAP + 100, 200)
    grown = side_by_side(Box(10, 20, 110, 70), Box(0, 0, 50, 100), height=200, margin=0.1)
    assert grown.crop_a == Box(0, 15, 120, 75)
    with pytest.raises(ValueError, match="height"):
        side_by_side(Box(0, 0, 1, 1), Box(0, 0, 1, 1), height=0)


def test_points_land_where_their_pixels_are():
    layout = side_by_side(Box(10, 20, 110, 70), Box(0, 0, 50, 100), height=200, margin=0.0)
    placed = place_points(layout, [(10, 20, 0, 0), (60, 45, 25, 50)])
    assert np.allclose(placed, [[0, 0, 400 + GAP, 0], [200, 100, 400 + GAP + 50, 100]])
    assert place_points(layout, []).shape == (0, 4)


def test_drawn_dots_sit_on_the_points_in_both_halves():
    a = Image.new("RGB", (200, 100), (0, 0, 0))
    b = Image.new("RGB", (100, 200), (0, 0, 0))  # B at half scale: its view is 50 x 100 px
    b = b.resize((50, 100))
    inliers = [(60.0, 45.0, 25.0, 50.0)]
    picture = draw_matches(a, 1.0, b, 0.5, Box(10, 20, 110, 70), Box(0, 0, 50, 100), inliers, height=200)
    layout = side_by_side(Box(10, 20, 110, 70), Box(0, 0, 50, 100), height=200)
    assert picture.size == layout.size
    (ua, va, ub, vb), = place_points(layout, inliers).round().astype(int)
    colour = point_colours(1)[0]
    pixels = np.asarray(picture)
    assert tuple(pixels[va, ua]) == colour and tuple(pixels[vb, ub]) == colour
    assert tuple(pixels[va, (ua + ub) // 2]) == colour  # the line between them
    assert tuple(pixels[5, layout.offset_b - GAP // 2]) == (255, 255, 255)  # the gap
    plain = draw_matches(a, 1.0, b, 0.5, Box(10, 20, 110, 70), Box(0, 0, 50, 100), inliers, height=200, lines=False)
    assert tuple(np.asarray(plain)[va, (ua + ub) // 2]) != colour


def test_a_mirrored_copy_is_flipped_back():
    layout = side_by_side(Box(10, 20, 110, 70), Box(0, 0, 50, 100), height=200, margin=0.0, mirror_b=True)
    placed = place_points(layout, [(10, 20, 0, 0), (60, 45, 25, 50), (60, 45, 50, 50)])
    assert np.allclose(placed[:, 2:], [[400 + GAP + 100, 0], [400 + GAP + 50, 100], [400 + GAP, 100]])
    b = Image.new("RGB", (50, 100), (0, 0, 0))
    b.paste((255, 255, 255), (0, 0, 10, 100))  # B's left edge white: drawn on the right once flipped
    picture = np.asarray(draw_matches(Image.new("RGB", (200, 100)), 1.0, b, 1.0, Box(10, 20, 110, 70),
                                      Box(0, 0, 50, 100), [], height=200, mirror_b=True))
    layout = side_by_side(Box(10, 20, 110, 70), Box(0, 0, 50, 100), height=200, mirror_b=True)
    (_, _, u_white, v), (_, _, u_dark, _) = place_points(layout, [(0, 0, 5, 50), (0, 0, 40, 50)]).round().astype(int)
    assert u_white > u_dark  # B's left edge now on the right
    assert picture[v, u_white].min() > 200 and picture[v, u_dark].max() < 60


def test_colours_are_distinct():
    colours = point_colours(64)
    assert len(set(colours)) == 64 and point_colours(0) == []
