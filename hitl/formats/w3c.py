"""W3C Web Annotation export: one ``linking`` annotation per link, regions as xywh fragments."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db import ImageRecord, Link
from engine.types import Box
from hitl.formats.link_rows import Row, iso, link_key

ANNO_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
MEDIA_FRAGMENTS = "http://www.w3.org/TR/media-frags/"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/artminer-hitl/links")


def region_source(image: ImageRecord) -> tuple[str, float, float]:
    """Where a region lives for others: the IIIF canvas if any, else the image URI.

    Returns ``(iri, sx, sy)``: scale factors from image pixels to that source's pixels.
    """
    if image.iiif_canvas:
        sx = (image.canvas_width or image.width) / image.width if image.width else 1.0
        sy = (image.canvas_height or image.height) / image.height if image.height else 1.0
        return image.iiif_canvas, sx, sy
    if urllib.parse.urlparse(image.path).scheme in ("http", "https", "file"):
        return image.path, 1.0, 1.0
    return Path(image.path).absolute().as_uri(), 1.0, 1.0


def xywh(box: Box, sx: float = 1.0, sy: float = 1.0) -> str:
    """Media-fragment ``xywh=x,y,w,h`` in integer pixels (width and height at least 1)."""
    x, y = round(box.x0 * sx), round(box.y0 * sy)
    w, h = max(1, round(box.width * sx)), max(1, round(box.height * sy))
    return f"xywh={x},{y},{w},{h}"


def specific_resource(image: ImageRecord, box: Box, polygon: tuple = ()) -> dict[str, Any]:
    iri, sx, sy = region_source(image)
    selector = {"type": "FragmentSelector", "conformsTo": MEDIA_FRAGMENTS, "value": xywh(box, sx, sy)}
    if len(polygon) >= 3:  # the shared detail's outline, within the box (W3C "refinedBy")
        selector["refinedBy"] = {"type": "SvgSelector", "value": svg_polygon(polygon, box, sx, sy)}
    return {"type": "SpecificResource", "source": iri, "selector": selector}


def svg_polygon(polygon, box: Box, sx: float = 1.0, sy: float = 1.0) -> str:
    """An SVG polygon in the coordinates of ``box``'s media fragment (its corner at 0, 0)."""
    x0, y0 = round(box.x0 * sx), round(box.y0 * sy)
    points = " ".join(f"{x * sx - x0:.1f},{y * sy - y0:.1f}" for x, y in polygon)
    return f"<svg xmlns='http://www.w3.org/2000/svg'><polygon points='{points}'/></svg>"


def annotation_id(link: Link) -> str:
    """Stable across exports and projects: derived from the model, images and boxes."""
    key = "|".join(map(str, link_key(link.model_id, link.match)))
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}"


def _w3c_annotation(row: Row) -> dict[str, Any]:
    link, v = row.link, row.verdict
    bodies = [{"type": "TextualBody", "purpose": "assessing", "value": link.status}]
    bodies.append({"type": "TextualBody", "purpose": "describing",
                   "value": f"score {link.score:.4f}, {link.match.n_inliers} inliers"
                            + (", mirrored copy" if link.match.mirrored else "")})
    if v is not None and v.note:
        bodies.append({"type": "TextualBody", "purpose": "commenting", "value": v.note})
    annotation = {
        "id": annotation_id(link), "type": "Annotation", "motivation": "linking",
        "body": bodies,
        "target": [specific_resource(row.image_a, link.box_a, row.mask.polygon_a if row.mask else ()),
                   specific_resource(row.image_b, link.box_b, row.mask.polygon_b if row.mask else ())],
    }
    if v is not None:
        annotation["creator"] = {"type": "Person", "name": v.annotator}
        annotation["created"] = iso(v.created)
    return annotation


def w3c_text(rows: list[Row]) -> str:
    page = {"@context": ANNO_CONTEXT,
            "id": f"urn:uuid:{uuid.uuid4()}", "type": "AnnotationPage",
            "generator": {"type": "Software", "name": "ArtMiner HITL"},
            "generated": iso(datetime.now(UTC)),
            "items": [_w3c_annotation(r) for r in rows]}
    return json.dumps(page, indent=1, ensure_ascii=False) + "\n"


