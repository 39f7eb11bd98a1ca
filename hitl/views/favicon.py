"""The app's favicon, drawn here so that it is served by the app itself.

A Material-icon or emoji ``page_icon`` makes every page fetch the icon from the
internet; a PIL image is served from the app's own media endpoint instead, and the
research team's browser asks nothing of anyone else.
"""

from __future__ import annotations

from PIL import Image, ImageDraw

FAVICON_SIDE = 64
_BLUE = (29, 120, 230, 255)  # the theme's primaryColor (.streamlit/config.toml)
_RED = (220, 50, 47, 255)  # box colour of image A on the review page


def favicon(side: int = FAVICON_SIDE) -> Image.Image:
    """Two overlapping frames, one detail found in two pictures (RGBA, ``side`` x ``side``)."""
    if side < 16:
        raise ValueError(f"a favicon needs at least 16 pixels a side, got {side}")
    icon = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    width = max(2, side // 12)
    unit = side / 16
    draw.rectangle([unit * 1, unit * 1, unit * 10, unit * 10], outline=_RED, width=width)
    draw.rectangle([unit * 6, unit * 6, unit * 15, unit * 15], outline=_BLUE, width=width)
    return icon
