"""The map as an atlas of thumbnails (the PixPlot idea): one picture per point.

Every thumbnail is pasted into one sprite sheet (the *atlas*), sent to the browser once
as a single JPEG; deck.gl's ``IconLayer`` then draws each point as its cell of the
atlas, on the GPU, so 10,000 pictures pan and zoom like 10,000 dots. ``icon_mapping``
says where each point's cell lies in the sheet.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence

from PIL import Image

PLACEHOLDER = (200, 200, 200)  # the cell of an unreadable image
HOVER_SIDE = 160  # px: the picture in the hover card, the atlas cell enlarged (sharp up to ~2.5x a 64-px cell)
MAX_ATLAS_SIDE = 4096  # px: within every WebGL implementation's texture limit (software too)


def cell_size(n: int, largest: int = 64, smallest: int = 16) -> int:
    """The atlas cell side for ``n`` pictures: as large as fits a `MAX_ATLAS_SIDE` sheet."""
    if n <= 0:
        return largest
    fits = MAX_ATLAS_SIDE // math.ceil(math.sqrt(n))
    return max(smallest, min(largest, fits))


def build_atlas(thumbs: Sequence[Image.Image | None], cell: int) -> tuple[Image.Image, dict]:
    """The sprite sheet and deck.gl's ``icon_mapping`` (key: the point's index as text).

    Each thumbnail is scaled to fit a ``cell`` x ``cell`` square, centred; ``None`` gets
    a grey cell. The mapping gives each icon its true aspect (width, height in the sheet).
    """
    n = len(thumbs)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    sheet = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    mapping = {}
    for i, thumb in enumerate(thumbs):
        x0, y0 = (i % cols) * cell, (i // cols) * cell
        if thumb is None:
            w = h = cell
            sheet.paste(PLACEHOLDER, (x0, y0, x0 + cell, y0 + cell))
        else:
            scale = cell / max(thumb.size)
            w, h = max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))
            sheet.paste(thumb.resize((w, h), Image.Resampling.BILINEAR), (x0, y0))
        mapping[str(i)] = {"x": x0, "y": y0, "width": w, "height": h, "mask": False}
    return sheet, mapping


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def view_state(x: Sequence[float], y: Sequence[float], width_px: int = 900) -> dict:
    """Centre and zoom of an orthographic view showing every point (zoom is log2 px per unit)."""
    if not len(x):
        return {"target": [0.0, 0.0, 0.0], "zoom": 0.0}
    span = max(max(x) - min(x), max(y) - min(y), 1e-9)
    return {"target": [(max(x) + min(x)) / 2, (max(y) + min(y)) / 2, 0.0],
            "zoom": math.log2(0.8 * width_px / span)}


def hover_sprite(cell: dict, sheet_size: tuple[int, int], side: int = HOVER_SIDE) -> dict:
    """CSS for showing one atlas cell enlarged to ``side`` px (its longer side): the
    hover card draws the sheet as a background, scaled and shifted onto the cell.

    Args:
        cell: the point's entry of ``icon_mapping`` (x, y, width, height in the sheet).
        sheet_size: (w, h) of the sheet.

    Returns:
        ``{"hw", "hh"}`` the box, ``{"hx", "hy"}`` the background offset and ``{"sw", "sh"}``
        the background size, in CSS px.
    """
    scale = side / max(cell["width"], cell["height"], 1)
    return {"hw": round(cell["width"] * scale), "hh": round(cell["height"] * scale),
            "hx": round(-cell["x"] * scale), "hy": round(-cell["y"] * scale),
            "sw": round(sheet_size[0] * scale), "sh": round(sheet_size[1] * scale)}
