"""Thumbnails of a project's images, made once and kept in its data folder.

The map's atlas draws every image as a small picture; decoding thousands of originals
on every visit would take minutes, so each image's thumbnail is written once to
``artminer-data/thumbs/<image_id>-<side>.jpg`` (by discovery after its map, or by the
first map view) and read from there afterwards. An image that cannot be read gets no
file; the atlas draws a grey cell for it. The region map's atlas draws each detail as its
crop, written the same way to ``thumbs/regions/<image_id>-<box>-<side>.jpg`` (one decode
of an image serves all of its regions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from db.records import ImageRecord
from engine.images import ImageReadError
from engine.types import Box
from hitl.project import ProjectPaths
from hitl.views.overlay import crop_region
from hitl.views.thumbnails import load_view

THUMB_SIDE = 96  # px, longer side: sharp atlas cells up to 96 px and a hover preview
REGION_DECODE_SIDE = 1024  # px: the view regions are cut from (a detail of a tenth of the image keeps ~100 px)


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


def region_crop_path(paths: ProjectPaths, image_id: str, box: Box, side: int = THUMB_SIDE) -> Path:
    corners = "_".join(f"{v:.0f}" for v in box.as_list())
    return thumbs_dir(paths) / "regions" / f"{image_id}-{corners}-{side}.jpg"


def ensure_region_crops(paths: ProjectPaths, regions: Sequence[tuple[ImageRecord, Box]],
                        side: int = THUMB_SIDE) -> list[Path | None]:
    """Each region's crop file (in order), written now if missing; None where unreadable."""
    (thumbs_dir(paths) / "regions").mkdir(parents=True, exist_ok=True)
    targets = [region_crop_path(paths, image.image_id, box, side) for image, box in regions]
    todo: dict[str, list[int]] = {}  # image -> its regions still to cut: one decode each
    for k, ((image, _), target) in enumerate(zip(regions, targets)):
        if not target.exists():
            todo.setdefault(image.image_id, []).append(k)
    failed: set[int] = set()
    for ks in todo.values():
        try:
            view, scale = load_view(regions[ks[0]][0].path, REGION_DECODE_SIDE)
        except ImageReadError:
            failed.update(ks)
            continue
        for k in ks:
            tmp = targets[k].with_suffix(".tmp")
            crop_region(view, regions[k][1], scale, side).save(tmp, format="JPEG", quality=85)
            tmp.replace(targets[k])  # atomic: a reader never sees half a file
    return [None if k in failed else target for k, target in enumerate(targets)]


def open_thumbnail(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError:
        return None
