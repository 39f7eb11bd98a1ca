"""Downscaled views of collection images, and their bytes for the browser.

The app never sends a full-resolution scan: each picture is decoded once at about the
size it is shown (JPEG ``draft`` decoding makes that cheap) and encoded as JPEG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from engine.images import image_size, load_rgb
from engine.types import Box
from hitl.views.overlay import draw_boxes


def load_view(path: str | Path, max_side: int) -> tuple[Image.Image, float]:
    """An upright RGB view of the image, longer side at most ``max_side``.

    Returns:
        ``(view, scale)`` with ``scale`` = view pixels per original pixel (<= 1).

    Raises:
        ImageReadError: missing or unreadable file (names the file).
    """
    width, _ = image_size(path)
    view = Image.fromarray(load_rgb(path, max_side=max_side))
    return view, view.width / width


def thumbnail(path: str | Path, boxes: Sequence[Box] = (), side: int = 256) -> Image.Image:
    """A thumbnail with ``boxes`` (original pixels) outlined."""
    view, scale = load_view(path, side)
    return draw_boxes(view, boxes, scale) if boxes else view


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    """JPEG encoding for the browser (a fraction of PNG's size and time for paintings)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
