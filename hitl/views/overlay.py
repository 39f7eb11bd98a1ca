"""Pictures of a candidate link for the expert: boxes, enlarged regions, aligned overlay.

Boxes and affines are in original image pixels (`engine.types`); the app works on
downscaled *views* of the images, so every function takes the view's ``scale``
(view pixels per original pixel). The aligned overlay resamples image B into the frame
of A's region: for each pixel of the output, the link's affine (A -> B) says where in B
to read, which is PIL's ``Image.transform`` convention (it maps output to input), so B
is warped onto A by the inverse of the affine without ever inverting a matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from engine.types import Affine, Box

BOX_COLOURS = ((230, 57, 70), (29, 120, 230), (250, 180, 0), (40, 170, 90))
"""Red for A, blue for B, then amber and green: distinguishable with common colour blindness."""


def fit_size(width: float, height: float, side: int) -> tuple[int, int]:
    """(w, h) of a ``width`` x ``height`` picture scaled so its longer side is ``side``."""
    if width <= 0 or height <= 0 or side <= 0:
        raise ValueError(f"cannot fit a {width}x{height} picture into {side} px")
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def draw_boxes(view: Image.Image, boxes: Sequence[Box], scale: float = 1.0,
               colours: Sequence[tuple[int, int, int]] = BOX_COLOURS,
               width: int | None = None) -> Image.Image:
    """A copy of ``view`` with ``boxes`` (original pixels) outlined, colour i for box i."""
    out = view.convert("RGB") if view.mode != "RGB" else view.copy()
    draw = ImageDraw.Draw(out)
    line = width or max(2, round(max(out.size) / 200))
    for i, box in enumerate(boxes):
        xy = [v * scale for v in box.as_list()]
        draw.rectangle([xy[0], xy[1], xy[2] - 1, xy[3] - 1], outline=colours[i % len(colours)],
                       width=line)
    return out


def crop_region(view: Image.Image, box: Box, scale: float = 1.0, side: int = 320,
                margin: float = 0.0) -> Image.Image:
    """The region ``box`` (original pixels) of ``view``, enlarged so its longer side is ``side``.

    Args:
        margin: context kept around the box, as a share of its size on each side.
    """
    grown = Box(box.x0 - margin * box.width, box.y0 - margin * box.height,
                box.x1 + margin * box.width, box.y1 + margin * box.height)
    size = fit_size(grown.width, grown.height, side)
    area = tuple(v * scale for v in grown.as_list())
    # EXTENT, unlike resize(box=), accepts areas reaching past the border (filled black)
    return view.convert("RGB").transform(size, Image.Transform.EXTENT, area,
                                         resample=Image.Resampling.BILINEAR)


def warp_onto(view_b: Image.Image, box_a: Box, affine: Affine, scale_b: float = 1.0,
              size: tuple[int, int] | None = None, side: int = 320) -> Image.Image:
    """Image B resampled into the frame of A's region ``box_a``.

    Output pixel ``(u, v)`` shows B at ``affine(x0 + u * sx, y0 + v * sy)``, with
    ``(x0, y0)`` the box's corner and ``(sx, sy)`` original A pixels per output pixel.

    Args:
        view_b: B, possibly downscaled by ``scale_b`` (view pixels per original pixel).
        box_a: the region of A (original pixels).
        affine: the link's 2x3 affine, A pixels -> B pixels.
        size: output (w, h); default: ``box_a``'s shape fitted to ``side``.

    Returns:
        An RGB image of ``size``; where the affine leaves B, it is black.
    """
    w, h = size or fit_size(box_a.width, box_a.height, side)
    sx, sy = box_a.width / w, box_a.height / h
    (a, b, c), (d, e, f) = affine
    # (u, v) -> A pixel (x0 + sx u, y0 + sy v) -> B pixel via the affine -> B's view
    coeffs = (a * sx, b * sy, a * box_a.x0 + b * box_a.y0 + c,
              d * sx, e * sy, d * box_a.x0 + e * box_a.y0 + f)
    coeffs = tuple(scale_b * k for k in coeffs)
    return view_b.convert("RGB").transform((w, h), Image.Transform.AFFINE, coeffs,
                                           resample=Image.Resampling.BILINEAR)


def aligned_pair(view_a: Image.Image, scale_a: float, view_b: Image.Image, scale_b: float,
                 box_a: Box, affine: Affine, side: int = 320) -> tuple[Image.Image, Image.Image]:
    """(A's region, B warped into it), same size, pixel for pixel comparable."""
    crop_a = crop_region(view_a, box_a, scale_a, side)
    return crop_a, warp_onto(view_b, box_a, affine, scale_b, size=crop_a.size)


def blend(base: Image.Image, top: Image.Image, opacity: float) -> Image.Image:
    """``top`` laid over ``base`` with ``opacity`` in [0, 1] (0: base only, 1: top only)."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if base.size != top.size:
        raise ValueError(f"cannot blend a {base.size} picture with a {top.size} one")
    return Image.blend(base.convert("RGB"), top.convert("RGB"), opacity)
