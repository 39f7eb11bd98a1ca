"""Tile pyramids of a project's images, built once and kept in its data folder.

The review page's synchronised zoom shows any part of an image at full resolution. A
20,000-pixel scan cannot be decoded on every zoom step (a JPEG has no random access:
one full decode takes seconds and a gigabyte), so each image is cut once into a pyramid
of 512-pixel JPEG tiles, ``artminer-data/tiles/<image_id>/<level>/<col>_<row>.jpg``:
level 0 at full resolution, each next level half the size, up to the level that fits
one tile. A view of any area at any zoom then reads only the few tiles it covers, at the
level whose pixels are about the screen's (:func:`read_region`), in milliseconds.

A pyramid is written into a temporary folder and renamed into place, so a reader never
sees half of one and two builders never mix their tiles.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from db.records import ImageRecord
from engine.images import ImageReadError, max_pixels, to_rgb
from engine.types import Box
from hitl.project import ProjectPaths

TILE_SIDE = 512  # px: the size deep-zoom viewers use (OpenSeadragon's default is 254-512)
TILE_QUALITY = 88  # JPEG quality of tiles: visually lossless for paintings at 1:1
META = "pyramid.json"


@dataclass(frozen=True)
class TilePyramid:
    """A built pyramid: ``folder`` holds ``levels`` levels of ``tile``-pixel tiles of a
    ``width`` x ``height`` image (upright, EXIF orientation applied)."""

    folder: Path
    width: int
    height: int
    tile: int
    levels: int

    def level_size(self, level: int) -> tuple[int, int]:
        """(w, h) of the image at ``level`` (level 0: full resolution)."""
        return max(1, math.ceil(self.width / 2**level)), max(1, math.ceil(self.height / 2**level))

    def level_for(self, pixels_per_screen_pixel: float) -> int:
        """The coarsest level still as sharp as the screen: original pixels per screen
        pixel ``p`` -> level floor(log2 p), within the pyramid."""
        if pixels_per_screen_pixel <= 1:
            return 0
        return min(self.levels - 1, int(math.floor(math.log2(pixels_per_screen_pixel))))


def n_levels(width: int, height: int, tile: int = TILE_SIDE) -> int:
    """Levels from full resolution down to the first that fits one tile."""
    return 1 + max(0, math.ceil(math.log2(max(width, height) / tile)))


def pyramid_dir(paths: ProjectPaths, image_id: str) -> Path:
    return paths.data_dir / "tiles" / image_id


def open_pyramid(folder: Path) -> TilePyramid | None:
    """The pyramid stored in ``folder``, or None when there is none (yet)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        return TilePyramid(folder, int(meta["width"]), int(meta["height"]), int(meta["tile"]), int(meta["levels"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _decode(path: str | Path) -> Image.Image:
    """The whole image, upright RGB, refusing decompression bombs (as engine.images)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > max_pixels():
                    raise ImageReadError(path, f"{img.width}x{img.height} is over the "
                                               f"{max_pixels():,}-pixel limit (decompression-bomb guard)")
                img.load()
                return to_rgb(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(path, f"cannot read image ({err})") from err


def build_pyramid(source: str | Path, folder: Path, tile: int = TILE_SIDE) -> TilePyramid:
    """Cut the image at ``source`` into a tile pyramid in ``folder`` (replacing nothing
    that is already there: a finished pyramid is returned as it is).

    Raises:
        ImageReadError: missing, unreadable or too large an image.
    """
    found = open_pyramid(folder)
    if found is not None:
        return found
    level_image = _decode(source)
    width, height = level_image.size
    levels = n_levels(width, height, tile)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for level in range(levels):
            (work / str(level)).mkdir()
            for row in range(math.ceil(level_image.height / tile)):
                for col in range(math.ceil(level_image.width / tile)):
                    area = (col * tile, row * tile, min(level_image.width, (col + 1) * tile),
                            min(level_image.height, (row + 1) * tile))
                    level_image.crop(area).save(work / str(level) / f"{col}_{row}.jpg", quality=TILE_QUALITY)
            if level + 1 < levels:  # box filter by 2: exact halving, the fastest PIL offers
                level_image = level_image.reduce(2)
        meta = {"width": width, "height": height, "tile": tile, "levels": levels}
        (work / META).write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.rename(work, folder)  # atomic; fails if another builder got there first
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    built = open_pyramid(folder)
    if built is None:
        raise ImageReadError(source, f"tile pyramid in {folder} is unreadable")
    return built


def ensure_pyramid(paths: ProjectPaths, image: ImageRecord) -> TilePyramid:
    """The image's pyramid, built now if missing (seconds for a large scan, once)."""
    return build_pyramid(image.path, pyramid_dir(paths, image.image_id))


def read_region(pyramid: TilePyramid, box: Box, level: int) -> tuple[Image.Image, Box]:
    """The part of ``box`` (original pixels) inside the image, at ``level``.

    Returns:
        ``(picture, covered)``: the pixels of level ``level`` and the box they cover in
        original pixels (``box`` clipped to the image and to whole level pixels).

    Raises:
        ValueError: ``box`` lies outside the image, or no such level.
    """
    if not 0 <= level < pyramid.levels:
        raise ValueError(f"level {level} is not in the pyramid's 0..{pyramid.levels - 1}")
    f = 2**level
    lw, lh = pyramid.level_size(level)
    x0, y0 = max(0, math.floor(box.x0 / f)), max(0, math.floor(box.y0 / f))
    x1, y1 = min(lw, math.ceil(box.x1 / f)), min(lh, math.ceil(box.y1 / f))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box.as_list()} lies outside the {pyramid.width}x{pyramid.height} image")
    t = pyramid.tile
    out = Image.new("RGB", (x1 - x0, y1 - y0))
    for row in range(y0 // t, (y1 - 1) // t + 1):
        for col in range(x0 // t, (x1 - 1) // t + 1):
            with Image.open(pyramid.folder / str(level) / f"{col}_{row}.jpg") as tile_image:
                out.paste(tile_image, (col * t - x0, row * t - y0))
    covered = Box(x0 * f, y0 * f, min(pyramid.width, x1 * f), min(pyramid.height, y1 * f))
    return out, covered
