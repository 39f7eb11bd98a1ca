"""Reading artwork files into RGB arrays, whatever their mode, orientation or size.

Collections arrive as scans and museum downloads: CMYK JPEGs, 16-bit TIFFs, palette
PNGs with transparency, phone photos with an EXIF rotation. Everything becomes an
upright 8-bit RGB array here, or an :class:`ImageReadError` that names the file.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")

# PIL's own guard refuses at open above this; scans of large panels legitimately exceed
# PIL's default (89 Mpx warns, 179 Mpx refuses), so PIL's guard is only the hard ceiling
# and the limit that matters is ``max_pixels`` below, which a project may raise up to it.
Image.MAX_IMAGE_PIXELS = 1_000_000_000
HARD_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS

DEFAULT_MAX_PIXELS = 178_956_970
"""Largest image decoded by default: PIL's own decompression-bomb error threshold
(2 x 89,478,485 px, about 13,400 x 13,400). A 30,000 x 30,000 PNG bomb of 109 KB is over it
and refused before any pixel is decoded; a project may set its own (``max_image_pixels``)."""

_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> int:
    """Set the pixel limit `load_rgb` applies by default (a project's setting); returns it.

    ``None`` restores `DEFAULT_MAX_PIXELS`. Limits above ``HARD_MAX_PIXELS`` are refused.
    """
    global _max_pixels
    limit = DEFAULT_MAX_PIXELS if limit is None else int(limit)
    if not 0 < limit <= HARD_MAX_PIXELS:
        raise ValueError(f"pixel limit must be between 1 and {HARD_MAX_PIXELS:,}, got {limit:,}")
    _max_pixels = limit
    return limit


def max_pixels() -> int:
    """The pixel limit `load_rgb` applies when none is given."""
    return _max_pixels


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def content_hash(path: str | Path) -> str:
    """Full sha256 hex digest of a file's bytes: the identity of an image everywhere."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_rgb(path: str | Path, max_side: int | None = None,
             pixel_limit: int | None = None) -> np.ndarray:
    """Read an image as upright 8-bit RGB.

    Args:
        path: image file.
        max_side: if given, JPEGs are decoded at reduced size when possible (``draft``)
            and the result is downscaled so its longer side is at most ``max_side``.
        pixel_limit: refuse images that would decode to more pixels than this (after
            JPEG draft reduction), before decoding; default `max_pixels()`.

    Returns:
        (H, W, 3) uint8 array, EXIF orientation applied.

    Raises:
        ImageReadError: missing, truncated, corrupt or unsupported file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if max_side is not None and img.format == "JPEG":
                    img.draft("RGB", (max_side, max_side))
                _check_pixels(path, img.size, pixel_limit)
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageReadError(path, f"cannot read image ({err})") from err
    if max_side is not None and max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(rgb)


def _check_pixels(path: Path, size: tuple[int, int], limit: int | None) -> None:
    limit = max_pixels() if limit is None else limit
    if size[0] * size[1] > limit:
        raise ImageReadError(path, f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is over "
                                   f"the {limit:,}-pixel limit (decompression-bomb guard)")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: 16-bit and float rescaled, alpha over white."""
    if img.mode.startswith("I;16"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(arr.round().astype(np.uint8)).convert("RGB")
    if img.mode in ("I", "F"):  # 32-bit data has no fixed white: stretch its range
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, [0.1, 99.9]) if arr.size else (0.0, 1.0)
        arr = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1)
        return Image.fromarray((arr * 255).round().astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageReadError(path, f"cannot read image ({err})") from err
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
