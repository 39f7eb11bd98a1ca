"""IIIF Presentation manifests (version 3 or 2.1): canvases become images.

Canvas labels and metadata become image metadata; each image is fetched from its image
service (``{service}/full/max/0/default.jpg`` for Image API 3,
``{service}/full/full/0/default.jpg`` for 2) and cached.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from db import Store
from engine.images import DEFAULT_MAX_PIXELS
from hitl.formats.fetch import FetchLimits, cached_fetch, fetch_json, resolve_named
from hitl.formats.image_files import BadImage, probe_image, progress_bar, store_images
from hitl.formats.metadata_csv import map_headers, row_fields, with_fields
from hitl.formats.report import Skipped, Tally


@dataclass(frozen=True)
class CanvasImage:
    """One canvas of a manifest and the image to fetch for it."""

    canvas_id: str
    image_url: str
    label: str | None
    metadata: dict[str, str]
    width: int | None
    height: int | None


@dataclass(frozen=True)
class Manifest:
    """What ingest needs from a IIIF Presentation manifest (version 2.1 or 3)."""

    manifest_id: str
    version: int
    label: str | None
    metadata: dict[str, str]
    canvases: tuple[CanvasImage, ...]
    problems: tuple[str, ...] = ()


def parse_manifest(doc: Any, where: str) -> Manifest:
    """Read canvases, labels and metadata from a v3 or v2.1 manifest.

    Broken canvases are listed in ``problems``; the valid ones are returned.

    Raises:
        ValueError: not a IIIF manifest at all.
    """
    if not is_manifest(doc):
        raise ValueError(f"{where}: not a IIIF Presentation manifest")
    version = 3 if _is_v3(doc) else 2
    manifest_id = str(doc.get("id") or doc.get("@id") or where)
    metadata = _iiif_metadata(doc.get("metadata"))
    for key, out in (("requiredStatement", "attribution"), ("attribution", "attribution"),
                     ("rights", "rights"), ("license", "rights")):
        value = doc.get(key)
        if value and out not in metadata:
            metadata[out] = _iiif_text(value.get("value") if isinstance(value, dict)
                                       and "value" in value else value) or ""
    canvases, problems = [], []
    raw_canvases = doc.get("items") if version == 3 else _v2_canvases(doc)
    if not isinstance(raw_canvases, list) or not raw_canvases:
        problems.append("manifest has no canvases")
        raw_canvases = []
    for i, canvas in enumerate(raw_canvases):
        try:
            canvases.append(_v3_canvas(canvas) if version == 3 else _v2_canvas(canvas))
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            cid = canvas.get("id") or canvas.get("@id") if isinstance(canvas, dict) else None
            problems.append(f"canvas {i + 1} ({cid or 'no id'}): {err}")
    return Manifest(manifest_id, version, _iiif_text(doc.get("label")), metadata,
                    tuple(canvases), tuple(problems))


def is_manifest(doc: Any) -> bool:
    if not isinstance(doc, dict):
        return False
    kind = doc.get("type") or doc.get("@type")
    return kind in ("Manifest", "sc:Manifest") or "iiif.io/api/presentation" in str(
        doc.get("@context", "")) and ("items" in doc or "sequences" in doc)


def _is_v3(doc: dict) -> bool:
    return doc.get("type") == "Manifest" or "presentation/3" in str(doc.get("@context", ""))


def _v2_canvases(doc: dict) -> list:
    sequences = doc.get("sequences") or []
    if not isinstance(sequences, list) or not sequences or not isinstance(sequences[0], dict):
        return []
    return sequences[0].get("canvases") or []


def _v3_canvas(canvas: dict) -> CanvasImage:
    canvas_id = canvas.get("id")
    if not canvas_id:
        raise ValueError("canvas has no id")
    bodies = [ann.get("body") for page in canvas.get("items") or []
              for ann in page.get("items") or [] if ann.get("motivation", "painting") == "painting"]
    bodies = [b for body in bodies for b in (body if isinstance(body, list) else [body]) if b]
    if not bodies:
        raise ValueError("no painting annotation with an image body")
    body = bodies[0]
    if body.get("type") == "Choice":
        body = (body.get("items") or [{}])[0]
    return CanvasImage(canvas_id, _image_url(body), _iiif_text(canvas.get("label")),
                       _iiif_metadata(canvas.get("metadata")), _int(canvas.get("width")),
                       _int(canvas.get("height")))


def _v2_canvas(canvas: dict) -> CanvasImage:
    canvas_id = canvas.get("@id")
    if not canvas_id:
        raise ValueError("canvas has no @id")
    images = canvas.get("images") or []
    if not images or not isinstance(images[0], dict) or not images[0].get("resource"):
        raise ValueError("no image annotation with a resource")
    resource = images[0]["resource"]
    if resource.get("@type") == "oa:Choice":
        resource = resource.get("default") or {}
    return CanvasImage(canvas_id, _image_url(resource), _iiif_text(canvas.get("label")),
                       _iiif_metadata(canvas.get("metadata")), _int(canvas.get("width")),
                       _int(canvas.get("height")))


def _image_url(resource: dict) -> str:
    """The URL of the full image: from the image service if there is one, else the body."""
    services = resource.get("service") or []
    services = services if isinstance(services, list) else [services]
    for service in services:
        if not isinstance(service, dict):
            continue
        base = (service.get("id") or service.get("@id") or "").rstrip("/")
        if not base:
            continue
        kind = f"{service.get('type', '')} {service.get('@type', '')} {service.get('@context', '')}"
        if "ImageService3" in kind or "image/3" in kind:
            return f"{base}/full/max/0/default.jpg"
        return f"{base}/full/full/0/default.jpg"
    url = resource.get("id") or resource.get("@id")
    if not url:
        raise ValueError("image has neither an image service nor an id")
    return str(url)


def _iiif_text(value: Any) -> str | None:
    """Plain text of a v3 language map, a v2 value/list/@value, with HTML tags removed."""
    if value is None:
        return None
    if isinstance(value, dict) and "@value" in value:
        value = value["@value"]
    elif isinstance(value, dict):
        for lang in ("en", "none", *value.keys()):
            if lang in value:
                value = value[lang]
                break
    if isinstance(value, list):
        parts = [_iiif_text(v) for v in value]
        value = "; ".join(p for p in parts if p)
    text = re.sub(r"<[^>]+>", "", str(value)).strip()
    return text or None


def _iiif_metadata(entries: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        label, value = _iiif_text(entry.get("label")), _iiif_text(entry.get("value"))
        if label and value:
            found[label] = value
    return found


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _canvas_fields(manifest: Manifest, canvas: CanvasImage) -> dict[str, Any]:
    """Map manifest and canvas metadata (canvas wins) onto image fields."""
    merged = {**manifest.metadata, **canvas.metadata}
    mapping = map_headers(list(merged))
    fields = row_fields(merged, mapping)
    fields.pop("file", None)
    if "title" not in fields:
        single = len(manifest.canvases) == 1
        fields["title"] = (manifest.label if single else canvas.label) or manifest.label
    fields["extra"].update({"iiif_version": manifest.version,
                            "manifest_label": manifest.label, "canvas_label": canvas.label})
    return fields


def ingest_manifest(store: Store, source: str, cache_dir: Path, tally: Tally, progress: bool,
                    limits: FetchLimits = FetchLimits(),
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Fetch a manifest and its images; every problem becomes a note or a skipped source.

    Each canvas's image must be one the manifest may name (`resolve_named`): a manifest
    read over http(s) names http(s) images only; a local one also files in its folder.
    """
    try:
        manifest = parse_manifest(fetch_json(source, limits), source)
    except (OSError, ValueError, RecursionError) as err:
        reason = "nested too deeply to read" if isinstance(err, RecursionError) else str(err)
        tally.skipped.append(Skipped(source, reason))
        return
    tally.notes += [f"{source}: {p}" for p in manifest.problems]
    records = []
    for canvas in progress_bar(manifest.canvases, progress, "fetching IIIF images"):
        try:
            where = resolve_named(canvas.image_url, source)
            local = cached_fetch(where, cache_dir, limits)
            record = probe_image(local, max_pixels)
        except (OSError, BadImage) as err:
            tally.skipped.append(Skipped(canvas.image_url, f"canvas {canvas.canvas_id}: {err}"))
            continue
        record = replace(record, source="iiif", iiif_canvas=canvas.canvas_id,
                         iiif_manifest=manifest.manifest_id, source_url=canvas.image_url,
                         canvas_width=canvas.width or record.width,
                         canvas_height=canvas.height or record.height)
        records.append(with_fields(record, _canvas_fields(manifest, canvas)))
    store_images(store, records, tally)


def cache_dir_for(store: Store, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if store.path == ":memory:":
        raise ValueError("an in-memory project needs an explicit cache_dir for IIIF images")
    return Path(store.path).parent / "artminer-data" / "iiif-cache"


