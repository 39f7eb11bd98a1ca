"""The difference view of a link: B finely aligned over A, and where the two differ.

What a copyist changed, added or left out shows where the aligned copy's structure (the
contrast-normalised luminance of :func:`engine.align.structure`, so a change of medium
alone is not a difference) departs from A's. The pictures are plain PIL images, for the
review page or any other caller:

- ``a``, ``b``: A's region and B resampled onto it (link affine + regularised flow);
- ``highlight``: A in grey with the differing places in red;
- :func:`swipe`: A left of a split, aligned B right of it;
- :func:`flicker_gif`: an animated GIF alternating A and aligned B;
- :func:`outline`: a link's shared-detail polygon drawn on a crop of its region.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from engine.align import (
    AlignConfig,
    Alignment,
    aligned_crops,
    structure,
)
from engine.types import Affine, Box

DIFF_COLOUR = np.array([230, 30, 40], np.float32)  # red: colour-blind safe against grey


@dataclass(frozen=True)
class DifferenceView:
    a: Image.Image
    b: Image.Image
    highlight: Image.Image
    difference: np.ndarray  # (h, w) float32 in [0, 1], 1 = most different
    alignment: Alignment


def difference_map(crop_a: np.ndarray, aligned_b: np.ndarray, valid: np.ndarray, sigma: float) -> np.ndarray:
    """(h, w) in [0, 1]: smoothed disagreement of the two crops' structure images.

    Scaled by its 99th percentile over ``valid`` pixels, and 0 outside them (where B
    does not reach, nothing is known).
    """
    sa, sb = structure(crop_a, sigma), structure(aligned_b, sigma)
    diff = cv2.GaussianBlur(np.abs(sa - sb), (0, 0), 2 * sigma)
    top = float(np.percentile(diff[valid], 99)) if valid.any() else 1.0
    return np.where(valid, np.clip(diff / max(top, 1e-6), 0, 1), 0).astype(np.float32)


def highlight(crop_a: np.ndarray, difference: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A in grey, red where ``difference`` exceeds ``threshold`` (strength by excess)."""
    grey = crop_a.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat(grey[..., None], 3, axis=2) * 0.8 + 40
    alpha = np.clip((difference - threshold) / (1 - threshold), 0, 1)[..., None] * 0.8
    return (out * (1 - alpha) + DIFF_COLOUR * alpha).clip(0, 255).astype(np.uint8)


def difference_view(view_a: np.ndarray, view_b: np.ndarray, box_a: Box, affine: Affine,
                    scale_a: float = 1.0, scale_b: float = 1.0,
                    config: AlignConfig = AlignConfig()) -> DifferenceView:
    """The pictures of the module docstring for a link (views as (H, W, 3) uint8 arrays)."""
    crops = aligned_crops(view_a, view_b, box_a, affine, config, scale_a, scale_b)
    alignment, crop_a, aligned, reach = crops.alignment, crops.crop_a, crops.aligned, crops.valid
    diff = difference_map(crop_a, aligned, reach, config.contrast_sigma)
    return DifferenceView(Image.fromarray(crop_a), Image.fromarray(aligned), Image.fromarray(highlight(crop_a, diff)),
                          diff, alignment)


def outline(picture: Image.Image, box: Box, polygon, colour: tuple[int, int, int], width: int = 3) -> Image.Image:
    """A copy of ``picture`` (the crop of ``box``, any size) with ``polygon`` (original
    pixels of the same image) drawn on it; unchanged when the polygon is empty."""
    out = picture.convert("RGB").copy()
    if len(polygon) < 3:
        return out
    sx, sy = out.width / box.width, out.height / box.height
    points = [((x - box.x0) * sx, (y - box.y0) * sy) for x, y in polygon]
    ImageDraw.Draw(out).line([*points, points[0]], fill=colour, width=width, joint="curve")
    return out


def swipe(a: Image.Image, b: Image.Image, position: float) -> Image.Image:
    """A left of ``position`` (share of the width, 0..1), B right of it, a white split line."""
    if a.size != b.size:
        raise ValueError(f"cannot swipe between a {a.size} and a {b.size} picture")
    if not 0.0 <= position <= 1.0:
        raise ValueError(f"swipe position must be in [0, 1], got {position}")
    out = np.array(b.convert("RGB"))
    split = round(position * out.shape[1])
    out[:, :split] = np.asarray(a.convert("RGB"))[:, :split]
    out[:, max(0, split - 1) : split + 1] = 255
    return Image.fromarray(out)


def flicker_gif(a: Image.Image, b: Image.Image, period_ms: int = 700) -> bytes:
    """An endless two-frame GIF, A then aligned B: the eye catches what jumps."""
    buffer = io.BytesIO()
    a.convert("RGB").save(buffer, format="GIF", save_all=True, append_images=[b.convert("RGB")],
                          duration=period_ms, loop=0)
    return buffer.getvalue()
