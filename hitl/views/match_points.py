"""The matched points of a link drawn for the expert: why verification linked two regions.

A link's inliers (``PairMatch.inliers``: ``(x_a, y_a, x_b, y_b)`` in original pixels) are
drawn on a side-by-side picture: A's region on the left, B's on the right, both with a
margin of context and scaled to one height, each inlier a dot in both halves and a line
between them. Parallel, untangled lines are what a true copy looks like; crossing ones
betray a chance match. A mirrored copy's half is shown flipped back (``mirror_b``), so
its lines are parallel too. Geometry (:func:`side_by_side`, :func:`place_points`) is kept
apart from drawing, so it can be checked on numbers.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine.types import Box, Inlier
from hitl.views.overlay import crop_region

GAP = 12  # px of white between the halves, so the lines read as crossing a border
MARGIN = 0.15  # context around each region, as a share of its size (the boxes' edge stays visible)


@dataclass(frozen=True)
class SideBySide:
    """Where each region lands on the picture: ``crop_*`` the area shown (original
    pixels), ``scale_*`` picture pixels per original pixel, B's half starting at ``offset_b``."""

    crop_a: Box
    crop_b: Box
    scale_a: float
    scale_b: float
    offset_b: int
    size: tuple[int, int]  # (w, h) of the whole picture
    mirror_b: bool = False  # B's half flipped left-right (a mirrored copy shown the way A is)


def _grown(box: Box, margin: float) -> Box:
    return Box(box.x0 - margin * box.width, box.y0 - margin * box.height,
               box.x1 + margin * box.width, box.y1 + margin * box.height)


def side_by_side(box_a: Box, box_b: Box, height: int = 320, margin: float = MARGIN,
                 mirror_b: bool = False) -> SideBySide:
    """Layout of A's and B's regions (grown by ``margin``) side by side, ``height`` px high."""
    if height <= 0 or margin < 0:
        raise ValueError(f"height must be > 0 and margin >= 0, got {height}, {margin}")
    crop_a, crop_b = _grown(box_a, margin), _grown(box_b, margin)
    scale_a, scale_b = height / crop_a.height, height / crop_b.height
    width_a = max(1, round(crop_a.width * scale_a))
    width_b = max(1, round(crop_b.width * scale_b))
    return SideBySide(crop_a, crop_b, scale_a, scale_b, width_a + GAP, (width_a + GAP + width_b, height), mirror_b)


def place_points(layout: SideBySide, inliers: Sequence[Inlier]) -> np.ndarray:
    """(K, 4) picture pixels ``(u_a, v_a, u_b, v_b)`` of the inliers in ``layout``."""
    points = np.asarray(inliers, dtype=np.float64).reshape(-1, 4)
    a = (points[:, :2] - [layout.crop_a.x0, layout.crop_a.y0]) * layout.scale_a
    b = (points[:, 2:] - [layout.crop_b.x0, layout.crop_b.y0]) * layout.scale_b
    if layout.mirror_b:
        b[:, 0] = (layout.size[0] - layout.offset_b) - b[:, 0]
    return np.concatenate([a, b + [layout.offset_b, 0]], axis=1)


def point_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct bright colours around the hue circle, so a dot's partner is findable."""
    return [tuple(round(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0)) for i in range(n)]


def draw_matches(view_a: Image.Image, scale_a: float, view_b: Image.Image, scale_b: float,
                 box_a: Box, box_b: Box, inliers: Sequence[Inlier], height: int = 320,
                 lines: bool = True, mirror_b: bool = False) -> Image.Image:
    """A's and B's regions side by side with each inlier a dot in both and a line between.

    Args:
        view_a, view_b: the images, possibly downscaled (``scale_*``: view pixels per
            original pixel); boxes and inliers are in original pixels.
        mirror_b: show B's region flipped left-right (for a mirrored copy).
    """
    layout = side_by_side(box_a, box_b, height, mirror_b=mirror_b)
    left = crop_region(view_a, layout.crop_a, scale_a, height)
    right = crop_region(view_b, layout.crop_b, scale_b, height)
    if mirror_b:
        right = right.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    picture = Image.new("RGB", layout.size, (255, 255, 255))
    picture.paste(left.resize((layout.offset_b - GAP, height)), (0, 0))
    picture.paste(right.resize((layout.size[0] - layout.offset_b, height)), (layout.offset_b, 0))
    draw = ImageDraw.Draw(picture)
    radius = max(2, height // 110)
    placed = place_points(layout, inliers)
    for (ua, va, ub, vb), colour in zip(placed.tolist(), point_colours(len(placed))):
        if lines:
            draw.line([(ua, va), (ub, vb)], fill=colour, width=1)
        for u, v in ((ua, va), (ub, vb)):
            draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=colour, outline=(0, 0, 0))
    return picture
