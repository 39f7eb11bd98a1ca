"""IIIF export: per manifest, an annotation list (2.1) or AnnotationPage (3) of links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hitl.formats.link_rows import Row, write_atomic
from hitl.formats.w3c import annotation_id, region_source, specific_resource, xywh

IIIF3_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
IIIF2_CONTEXT = "http://iiif.io/api/presentation/2/context.json"


def _iiif_annotations(rows: list[Row]) -> dict[str, tuple[int, list[dict[str, Any]]]]:
    """Per manifest: (presentation version, annotations on its canvases)."""
    pages: dict[str, tuple[int, list[dict[str, Any]]]] = {}
    for row in rows:
        poly_a, poly_b = (row.mask.polygon_a, row.mask.polygon_b) if row.mask else ((), ())
        sides = ((row.image_a, row.link.box_a, row.image_b, row.link.box_b, poly_b),
                 (row.image_b, row.link.box_b, row.image_a, row.link.box_a, poly_a))
        for n, (here, box, there, other_box, other_polygon) in enumerate(sides):
            if not (here.iiif_canvas and here.iiif_manifest):
                continue
            version = int(here.extra.get("iiif_version", 3))
            _, sx, sy = region_source(here)
            target = f"{here.iiif_canvas}#{xywh(box, sx, sy)}"
            body = specific_resource(there, other_box, other_polygon)
            ann_id = f"{annotation_id(row.link)}-{n}"
            if version == 2:
                other = f"{body['source']}#{body['selector']['value']}"
                ann = {"@id": ann_id, "@type": "oa:Annotation", "motivation": "oa:linking",
                       "resource": {"@id": other, "@type": "oa:SpecificResource"}, "on": target}
            else:
                ann = {"id": ann_id, "type": "Annotation", "motivation": "linking",
                       "body": body, "target": target}
            pages.setdefault(here.iiif_manifest, (version, []))[1].append(ann)
    return pages


def _iiif_page(manifest: str, version: int, annotations: list[dict[str, Any]]) -> dict:
    page_id = f"{manifest.rsplit('.json', 1)[0]}/artminer-links"
    if version == 2:
        return {"@context": IIIF2_CONTEXT, "@id": page_id, "@type": "sc:AnnotationList",
                "within": manifest, "resources": annotations}
    return {"@context": IIIF3_CONTEXT, "id": page_id, "type": "AnnotationPage",
            "partOf": [{"id": manifest, "type": "Manifest"}], "items": annotations}


def write_iiif(rows: list[Row], out: Path) -> int:
    pages = _iiif_annotations(rows)
    count = sum(len(anns) for _, anns in pages.values())
    if len(pages) <= 1:
        manifest, (version, anns) = next(iter(pages.items()), ("urn:artminer:none", (3, [])))
        write_atomic(out, json.dumps(_iiif_page(manifest, version, anns), indent=1) + "\n")
        return count
    index = []
    for n, (manifest, (version, anns)) in enumerate(sorted(pages.items()), start=1):
        part = out.with_name(f"{out.stem}-{n}{out.suffix or '.json'}")
        write_atomic(part, json.dumps(_iiif_page(manifest, version, anns), indent=1) + "\n")
        index.append({"manifest": manifest, "iiif_version": version, "file": part.name,
                      "annotations": len(anns)})
    write_atomic(out, json.dumps({"artminer_iiif_export": index}, indent=1) + "\n")
    return count
