"""Image files: find them in folders, probe them (hash, header size, truncation), store them.

Ingest reads only what it needs: the bytes once for the hash, the image header for its
size (pixels are never decoded), and the file's tail to catch truncation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from db import ImageRecord, Store
from db.records import IMAGE_SUFFIXES
from engine.images import DEFAULT_MAX_PIXELS, HARD_MAX_PIXELS, content_hash
from hitl.formats.report import Tally

_BATCH = 500  # images per store transaction: short enough not to hold the file long

MAX_PIXELS_SETTING = "max_image_pixels"
"""Project setting: the pixel limit for ingest and decoding (default `DEFAULT_MAX_PIXELS`)."""


def project_max_pixels(store: Store) -> int:
    """The project's pixel limit: its ``max_image_pixels`` setting, else the default."""
    value = store.get_setting(MAX_PIXELS_SETTING)
    try:
        limit = int(value) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        return DEFAULT_MAX_PIXELS  # a garbled setting must not lift the guard
    return limit if 0 < limit <= HARD_MAX_PIXELS else DEFAULT_MAX_PIXELS


class BadImage(ValueError):
    """A file that cannot be ingested as an image; the message says why."""


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order; hidden ones skipped."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, n) for n in sorted(names)
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return found


def probe_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Hash a file and read its size from the header (after EXIF orientation).

    Images of more than ``max_pixels`` pixels are refused (decompression bombs: a
    109 KB PNG can declare 30,000 x 30,000 pixels); the project's limit is
    `project_max_pixels`.

    Returns:
        An `ImageRecord` with id, hash, absolute path and size; metadata empty.

    Raises:
        BadImage: empty, unreadable, not an image, or truncated; the message says which.
    """
    path = Path(path).absolute()
    try:
        size = path.stat().st_size
        if size == 0:
            raise BadImage("empty file (0 bytes)")
        digest = content_hash(path)
    except OSError as err:
        raise BadImage(f"cannot read: {err.strerror or err}") from err
    width, height = _header_size(path, size)
    if width * height > max_pixels:
        raise BadImage(f"{width}x{height} = {width * height:,} pixels is over the project's "
                       f"{max_pixels:,}-pixel limit (setting max_image_pixels)")
    return ImageRecord(image_id=digest[:16], sha256=digest, path=str(path), width=width,
                       height=height)


def _header_size(path: Path, size: int) -> tuple[int, int]:
    """(width, height) from the header, swapped for EXIF orientations 5-8; checks the tail."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                fmt = im.format
                orientation = _orientation(im)
                problem = _truncation(path, fmt, im, size)
    except Image.DecompressionBombError as err:
        raise BadImage(f"too large for PIL's decompression-bomb guard: {err}") from err
    except UnidentifiedImageError as err:
        raise BadImage("not an image (PIL cannot identify the format)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"unreadable image header: {err}") from err
    if problem:
        raise BadImage(problem)
    if width <= 0 or height <= 0:
        raise BadImage(f"image has no pixels ({width}x{height})")
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _orientation(im: Image.Image) -> int | None:
    """EXIF orientation from what the header parse already read (no pixel decode)."""
    if im.format == "TIFF":
        return im.tag_v2.get(274)
    raw = im.info.get("exif")
    if not raw:
        return None
    exif = Image.Exif()
    try:
        exif.load(raw)
    except Exception:  # a broken EXIF block does not make a broken image
        return None
    return exif.get(274)


def _truncation(path: Path, fmt: str | None, im: Image.Image, size: int) -> str | None:
    """Why the file looks cut short, from its tail or declared sizes; None if complete."""
    with open(path, "rb") as f:
        f.seek(max(0, size - 2048))
        tail = f.read()
        f.seek(0)
        head = f.read(16)
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail[-32:]:
        return "truncated PNG (no IEND chunk)"
    if fmt == "WEBP" and int.from_bytes(head[4:8], "little") + 8 > size:
        return "truncated WebP (file shorter than its RIFF header says)"
    if fmt == "BMP" and int.from_bytes(head[2:6], "little") > size:
        return "truncated BMP (file shorter than its header says)"
    if fmt == "TIFF":
        tags = im.tag_v2
        offsets = tags.get(273) or tags.get(324) or ()
        counts = tags.get(279) or tags.get(325) or ()
        if any(o + c > size for o, c in zip(offsets, counts)):
            return "truncated TIFF (image data runs past the end of the file)"
    return None


def store_images(store: Store, records: list[ImageRecord], tally: Tally) -> None:
    for start in range(0, len(records), _BATCH):
        batch = records[start:start + _BATCH]
        added, _ = store.add_images(batch)
        fresh = set(added)
        tally.added += added
        for record in batch:
            if record.image_id in fresh:
                fresh.discard(record.image_id)  # a second copy in this batch is a duplicate
            else:
                tally.duplicates.append((record.source_url or record.path, record.image_id))


def progress_bar(items: Sequence, enabled: bool, what: str) -> Iterable:
    if not enabled or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="file", leave=False)


def iter_image_files(folder: str | os.PathLike) -> Iterator[Path]:
    """The image files ingest would read under ``folder`` (recursive, stable order)."""
    yield from image_files(Path(folder))
