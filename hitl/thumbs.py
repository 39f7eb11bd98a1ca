"""Thumbnails of a project's images, made once and kept in its data folder.

The map's atlas draws every image as a small picture; decoding thousands of originals
on every visit would take minutes, so each image's thumbnail is written once to
``artminer-data/thumbs/<image_id>-<side>.jpg`` (by discovery after its map, or by the
first map view) and read from there afterwards. An image that cannot be read gets no
file; the atlas draws a grey cell for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from db.records import ImageRecord
from engine.images import ImageReadError
from hitl.project import ProjectPaths
from hitl.views.thumbnails import load_view

THUMB_SIDE = 96  # px, longer side: sharp atlas cells up to 96 px and a hover preview


def thumbs_dir(paths: ProjectPaths) -> Path:
    return paths.data_dir / "thumbs"


def thumb_path(paths: ProjectPaths, image_id: str, side: int = THUMB_SIDE) -> Path:
    return thumbs_dir(paths) / f"{image_id}-{side}.jpg"


def ensure_thumbnails(paths: ProjectPaths, images: Iterable[ImageRecord],
                      side: int = THUMB_SIDE) -> dict[str, Path | None]:
    """Each image's thumbnail file, written now if missing; None for unreadable images."""
    thumbs_dir(paths).mkdir(parents=True, exist_ok=True)
    found: dict[str, Path | None] = {}
    for image in images:
        target = thumb_path(paths, image.image_id, side)
        if not target.exists():
            try:
                view, _ = load_view(image.path, side)
            except ImageReadError:
                found[image.image_id] = None
                continue
            tmp = target.with_suffix(".tmp")
            view.save(tmp, format="JPEG", quality=85)
            tmp.replace(target)  # atomic: a reader never sees half a file
        found[image.image_id] = target
    return found


def open_thumbnail(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError:
        return None
