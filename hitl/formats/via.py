"""VGG Image Annotator (VIA 2) project or annotation files: named regions become regions.

Regions are stored with ``source='via'`` on the images with the same file name.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from db import ImageRecord, Store
from engine.types import Box, Region
from hitl.formats.fetch import FetchLimits, fetch_json, is_url
from hitl.formats.report import Skipped, Tally


def via_entries(doc: Any) -> list[dict] | None:
    """The per-image entries of a VIA 2 project or annotation export; None if not VIA."""
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("_via_img_metadata"), dict):
        return [e for e in doc["_via_img_metadata"].values() if isinstance(e, dict)]
    values = list(doc.values())
    if values and all(isinstance(v, dict) and "filename" in v for v in values):
        return values
    return None


def via_regions(doc: Any, where: str) -> tuple[list[tuple[str, Box, str | None, dict]], list[str]]:
    """Regions of a VIA 2 file as ``(file name, box, label, attributes)``, plus problems.

    Rectangles, polygons, polylines, circles and ellipses become their bounding boxes;
    points are dropped (no area). The label is the region attribute named label, name,
    class, type or category, else the first non-empty one.

    Raises:
        ValueError: not a VIA file.
    """
    entries = via_entries(doc)
    if entries is None:
        raise ValueError(f"{where}: not a VIA project or annotation file")
    found, problems = [], []
    for entry in entries:
        name = entry.get("filename")
        if not name or not isinstance(name, str):
            problems.append(f"{where}: an image entry without a filename")
            continue
        regions = entry.get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        if not isinstance(regions, list):  # VIA writes a list (2.x) or a dict (1.x)
            problems.append(f"{where}: {name}: regions is a {type(regions).__name__}, "
                            "not a list")
            continue
        for i, region in enumerate(regions):
            try:
                box, attrs = _via_region(region)
            except (ValueError, TypeError, KeyError, OverflowError) as err:
                problems.append(f"{where}: {name} region {i + 1}: {err}")
                continue
            found.append((_file_name(name), box, _via_label(attrs), attrs))
    return found, problems


def _via_region(region: Any) -> tuple[Box, dict]:
    """A region's box and attributes; TypeError/ValueError say what is wrong with it."""
    if not isinstance(region, dict):
        raise TypeError(f"a region must be an object, not a {type(region).__name__}")
    shape = region.get("shape_attributes") or {}
    attrs = region.get("region_attributes") or {}
    if not isinstance(shape, dict):
        raise TypeError("shape_attributes is not an object")
    if not isinstance(attrs, dict):
        raise TypeError("region_attributes is not an object")
    return _via_box(shape), attrs


def _via_box(shape: dict) -> Box:
    kind = shape.get("name")
    if kind == "rect":
        x, y, w, h = (_coord(shape, k) for k in ("x", "y", "width", "height"))
        return Box.from_xywh(x, y, w, h)
    if kind in ("polygon", "polyline"):
        xs, ys = _coords(shape, "all_points_x"), _coords(shape, "all_points_y")
        return Box(min(xs), min(ys), max(xs), max(ys))
    if kind == "circle":
        cx, cy, r = (_coord(shape, k) for k in ("cx", "cy", "r"))
        return Box(cx - r, cy - r, cx + r, cy + r)
    if kind == "ellipse":
        cx, cy, rx, ry = (_coord(shape, k) for k in ("cx", "cy", "rx", "ry"))
        return Box(cx - rx, cy - ry, cx + rx, cy + ry)
    if kind == "point":
        raise ValueError("a point has no area")
    raise ValueError(f"unknown or missing shape {kind!r}")


def _coord(shape: dict, key: str) -> float:
    """A finite number from the shape, or a TypeError/KeyError naming the attribute."""
    value = shape[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{key} is {value!r}, not a number")
    return float(value)


def _coords(shape: dict, key: str) -> list[float]:
    values = shape[key]
    if not isinstance(values, list) or not values:
        raise TypeError(f"{key} is not a list of numbers")
    return [_coord({key: v}, key) for v in values]


def _via_label(attrs: Any) -> str | None:
    if not isinstance(attrs, dict):
        return None
    keys = [k for k in ("label", "name", "class", "type", "category") if k in attrs]
    for key in keys + [k for k in attrs if k not in keys]:
        value = attrs[key]
        if isinstance(value, dict):  # checkbox attribute: {"dog": true, "cat": false}
            value = ", ".join(k for k, on in value.items() if on)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _file_name(name: str) -> str:
    """Last path component of a VIA filename, which may be a path or a URL."""
    path = urllib.parse.urlparse(name).path if is_url(name) else name
    return re.split(r"[\\/]", path)[-1]


def ingest_via(store: Store, source: str, tally: Tally,
               limits: FetchLimits = FetchLimits()) -> None:
    try:
        regions, problems = via_regions(fetch_json(source, limits), source)
    except (OSError, ValueError) as err:
        tally.skipped.append(Skipped(source, str(err)))
        return
    tally.notes += problems
    images = _images_by_name(store.list_images())
    keep, labels, attributes, missing = [], [], [], {}
    for name, box, label, attrs in regions:
        matches = images.get(name.lower(), [])
        if len(matches) != 1:
            missing.setdefault(name, "ambiguous: several images have this name" if matches
                               else "not in the project; ingest the image first")
            continue
        image = matches[0]
        clipped = _clip(box, image.width, image.height)
        if clipped is None:
            tally.notes.append(f"{source}: {name} region {box.as_list()} lies outside the image")
            continue
        keep.append(Region(image.image_id, clipped))
        labels.append(label)
        attributes.append(attrs)
    for name, why in missing.items():
        tally.notes.append(f"{source}: regions on {name} skipped: image {why}")
    if keep:
        tally.regions_added += len(store.add_regions(keep, source="via", labels=labels,
                                                     attributes=attributes))


def _images_by_name(images: Iterable[ImageRecord]) -> dict[str, list[ImageRecord]]:
    found: dict[str, list[ImageRecord]] = {}
    for image in images:
        found.setdefault(Path(image.path).name.lower(), []).append(image)
    return found


def _clip(box: Box, width: int, height: int) -> Box | None:
    x0, y0 = max(0.0, box.x0), max(0.0, box.y0)
    x1, y1 = min(float(width), box.x1), min(float(height), box.y1)
    return Box(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


