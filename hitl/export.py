"""Give a project's links back in the formats other tools read, and read our own back in.

``export_links(store, fmt, out_path, all_verdicts=False)`` writes confirmed links (or,
with ``all_verdicts``, every link with a verdict in force: confirmed, rejected, unsure)
as one of

``csv``
    One row per link, header::

        link_id,image_a,image_b,path_a,path_b,title_a,title_b,
        box_a_x0,box_a_y0,box_a_x1,box_a_y1,box_b_x0,box_b_y0,box_b_x1,box_b_y1,
        score,n_inliers,status,annotator,verdict_at,note

    (one line in the file). ``image_a``/``image_b`` are content-hash ids, ``path_*`` the
    image files (or cached copies of IIIF images), boxes ``x0,y0`` top-left and
    ``x1,y1`` bottom-right in original image pixels, ``score`` the discovery score,
    ``n_inliers`` the matched features, ``status`` the verdict in force
    (confirm/reject/unsure), ``annotator``, ``verdict_at`` (ISO 8601 UTC) and ``note``
    of that verdict.
``json``
    ArtMiner's own format (``"format": "artminer-links"``): the links, their images and
    models, and each link's full verdict history. `import_links` reads it back.
``w3c``
    A W3C Web Annotation ``AnnotationPage`` (JSON-LD): one ``linking`` annotation per
    link whose two targets are the regions, as ``FragmentSelector``s ``xywh=x,y,w,h``
    on the image (or its IIIF canvas), with creator and created of the verdict.
``iiif``
    For images that came from IIIF manifests: per manifest, an annotation list
    (Presentation 2.1) or AnnotationPage (Presentation 3) of ``linking`` annotations on
    its canvases, each pointing at the matched region. One manifest: written to
    ``out_path``; several: ``<stem>-<n><suffix>`` beside it, with ``out_path`` an index.
``training``
    A JSON list of ``{link_id, image_a, image_b, path_a, path_b, box_a, box_b, affine,
    label}`` with label 1 for confirmed and 0 for rejected links (both always: a
    training set needs its negatives; unsure links are left out).
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db import VERDICTS, ImageRecord, Link, Store, Verdict
from db.records import LinkMaskRecord
from engine.types import Box, ModelRef, PairMatch

FORMATS = ("csv", "json", "w3c", "iiif", "training")

CSV_HEADER = (
    "link_id", "image_a", "image_b", "path_a", "path_b", "title_a", "title_b",
    "box_a_x0", "box_a_y0", "box_a_x1", "box_a_y1", "box_b_x0", "box_b_y0", "box_b_x1", "box_b_y1",
    "score", "n_inliers", "status", "annotator", "verdict_at", "note",
)

JSON_FORMAT = "artminer-links"
JSON_VERSION = 1
ANNO_CONTEXT = "http://www.w3.org/ns/anno.jsonld"
MEDIA_FRAGMENTS = "http://www.w3.org/TR/media-frags/"
IIIF3_CONTEXT = "http://iiif.io/api/presentation/3/context.json"
IIIF2_CONTEXT = "http://iiif.io/api/presentation/2/context.json"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/artminer-hitl/links")


@dataclass(frozen=True)
class _Row:
    """A link with what every format needs: its images and the verdict in force."""

    link: Link
    image_a: ImageRecord
    image_b: ImageRecord
    verdict: Verdict | None
    mask: LinkMaskRecord | None = None  # the shared detail's polygons, when computed


@dataclass(frozen=True)
class ImportResult:
    """What `import_links` added (existing links and verdicts are recognised, not doubled)."""

    images_added: int
    links_added: int
    links_existing: int
    verdicts_added: int


# ---------------------------------------------------------------------- export


def export_links(store: Store, fmt: str, out_path: str | os.PathLike,
                 all_verdicts: bool = False) -> int:
    """Write the project's links to ``out_path`` in ``fmt`` (see module docstring).

    Returns:
        The number of links written (for ``iiif``: annotations written).

    Raises:
        ValueError: unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    statuses = ("confirm", "reject") if fmt == "training" else (
        VERDICTS if all_verdicts else ("confirm",))
    rows = _rows(store, statuses)
    out = Path(out_path)
    if fmt == "iiif":
        return _write_iiif(rows, out)
    writers = {"csv": _csv_text, "json": lambda r: _json_text(store, r),
               "w3c": _w3c_text, "training": _training_text}
    _write(out, writers[fmt](rows))
    return len(rows)


def _rows(store: Store, statuses: Iterable[str]) -> list[_Row]:
    links = store.list_links(status=list(statuses), order="link_id")
    current = store.current_verdicts("link")
    ids = sorted({i for lk in links for i in (lk.image_a, lk.image_b)})
    images = {im.image_id: im for im in store.list_images(image_ids=ids)}
    masks = store.link_masks([lk.link_id for lk in links])
    return [_Row(lk, images.get(lk.image_a) or _unknown(lk.image_a),
                 images.get(lk.image_b) or _unknown(lk.image_b), current.get(lk.link_id),
                 masks.get(lk.link_id))
            for lk in links]


def _unknown(image_id: str) -> ImageRecord:
    """Stand-in for a link's image missing from the images table (never expected)."""
    return ImageRecord(image_id, "", "", 0, 0, source="missing")


def _write(out: Path, text: str) -> None:
    """Write atomically, so an interrupted export never leaves half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)


def _iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _csv_text(rows: list[_Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        v, lk = row.verdict, row.link
        writer.writerow([
            lk.link_id, lk.image_a, lk.image_b, row.image_a.path, row.image_b.path,
            row.image_a.title or "", row.image_b.title or "",
            *(_num(x) for x in lk.box_a.as_list()), *(_num(x) for x in lk.box_b.as_list()),
            f"{lk.score:.6g}", lk.match.n_inliers, lk.status,
            v.annotator if v else "", _iso(v.created) if v else "", (v.note or "") if v else "",
        ])
    return buffer.getvalue()


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _training_text(rows: list[_Row]) -> str:
    items = [{
        "link_id": row.link.link_id, "image_a": row.link.image_a, "image_b": row.link.image_b,
        "path_a": row.image_a.path, "path_b": row.image_b.path,
        "box_a": row.link.box_a.as_list(), "box_b": row.link.box_b.as_list(),
        "affine": [list(r) for r in row.link.match.affine], "mirrored": row.link.match.mirrored,
        "label": 1 if row.link.status == "confirm" else 0,
    } for row in rows]
    return json.dumps(items, indent=1) + "\n"


# ---------------------------------------------------------------------- own JSON


def _json_text(store: Store, rows: list[_Row]) -> str:
    images = {r.image_a.image_id: r.image_a for r in rows} | {
        r.image_b.image_id: r.image_b for r in rows}
    used_models = {r.link.model_id for r in rows}
    models = [m for m in store.list_models() if m.model_id in _with_ancestors(store, used_models)]
    doc = {
        "format": JSON_FORMAT, "version": JSON_VERSION, "exported": _iso(datetime.now(UTC)),
        "project": store.path,
        "models": [{"model_id": m.model_id, "backbone": m.ref.backbone, "parent": m.ref.parent,
                    "checkpoint": m.ref.checkpoint, "checkpoint_sha256": m.checkpoint_sha256}
                   for m in models],
        "images": [_image_json(im) for im in images.values()],
        "links": [_link_json(store, r.link) for r in rows],
    }
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def _with_ancestors(store: Store, model_ids: set[str]) -> set[str]:
    parents = {m.model_id: m.ref.parent for m in store.list_models()}
    found, todo = set(), list(model_ids)
    while todo:
        current = todo.pop()
        if current and current not in found:
            found.add(current)
            todo.append(parents.get(current))
    return found


def _image_json(im: ImageRecord) -> dict[str, Any]:
    keys = ("image_id", "sha256", "path", "width", "height", "title", "artist", "date", "year",
            "medium", "collection", "extra", "source", "iiif_canvas", "iiif_manifest",
            "source_url", "canvas_width", "canvas_height")
    return {k: getattr(im, k) for k in keys}


def _link_json(store: Store, link: Link) -> dict[str, Any]:
    return {
        "link_id": link.link_id, "model_id": link.model_id, "run_id": link.run_id,
        "image_a": link.image_a, "image_b": link.image_b,
        "box_a": link.box_a.as_list(), "box_b": link.box_b.as_list(),
        "affine": [list(r) for r in link.match.affine], "score": link.score,
        "n_inliers": link.match.n_inliers, "mirrored": link.match.mirrored, "status": link.status,
        "verdicts": [{"verdict_id": v.verdict_id, "verdict": v.verdict, "annotator": v.annotator,
                      "created": _iso_precise(v.created), "note": v.note, "revokes": v.revokes,
                      "geometry": v.geometry} for v in store.link_history(link.link_id)],
    }


def _iso_precise(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def import_links(store: Store, path: str | os.PathLike) -> ImportResult:
    """Read an ``artminer-links`` JSON export into ``store``: images, models, links, verdicts.

    Links already present (same model, images and boxes) and verdicts already present
    (same link, verdict, annotator and time) are recognised, so importing twice adds
    nothing.

    Raises:
        ValueError: the file is not an ArtMiner links export, or is of a newer version.
    """
    doc = _read_export(Path(path))
    records = [ImageRecord(**{**im, "extra": im.get("extra") or {}}) for im in doc["images"]]
    images_added, _ = store.add_images(records)
    for m in doc["models"]:
        if store.get_model(m["model_id"]) is None:
            store.add_model(ModelRef(m["model_id"], m["backbone"], m.get("checkpoint"),
                                     m.get("parent")), checkpoint_sha256=m.get("checkpoint_sha256"))
    link_ids, existing = _import_link_rows(store, doc["links"], str(path))
    added = sum(_import_history(store, link_id, entry["verdicts"])
                for link_id, entry in zip(link_ids, doc["links"]))
    return ImportResult(len(images_added), len(doc["links"]) - existing, existing, added)


def _read_export(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read links export {path}: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not an ArtMiner links export (format {JSON_FORMAT!r})")
    if doc.get("version", 0) > JSON_VERSION:
        raise ValueError(f"{path} is export version {doc['version']}, newer than this ArtMiner "
                         f"reads ({JSON_VERSION})")
    return doc


def _link_key(model_id: str, match: PairMatch) -> tuple:
    return (model_id, match.image_a, match.image_b, tuple(match.box_a.as_list()),
            tuple(match.box_b.as_list()))


def _import_link_rows(store: Store, entries: list[dict], source: str) -> tuple[list[int], int]:
    """Store new links (one import run per model); return the link id per entry."""
    known = {_link_key(lk.model_id, lk.match): lk.link_id for lk in store.list_links()}
    ids: list[int | None] = []
    fresh: dict[str, list[tuple[int, PairMatch]]] = {}
    for i, e in enumerate(entries):
        match = PairMatch(e["image_a"], e["image_b"], Box(*e["box_a"]), Box(*e["box_b"]),
                          tuple(tuple(r) for r in e["affine"]), e["score"], e["n_inliers"],
                          bool(e.get("mirrored", False)))
        ids.append(known.get(_link_key(e["model_id"], match)))
        if ids[-1] is None:
            fresh.setdefault(e["model_id"], []).append((i, match))
    existing = sum(1 for link_id in ids if link_id is not None)
    for model_id, items in fresh.items():
        run = store.start_run(model_id, {"imported_from": source}, kind="import")
        for (i, _), link_id in zip(items, store.add_links(run, [m for _, m in items])):
            ids[i] = link_id
        store.finish_run(run)
    return ids, existing


def _import_history(store: Store, link_id: int, verdicts: list[dict]) -> int:
    """Replay a link's verdict log in order; old verdict ids map to new ones."""
    present = {(v.verdict, v.annotator, v.created): v.verdict_id
               for v in store.link_history(link_id)}
    new_ids: dict[int, int] = {}
    added = 0
    for v in sorted(verdicts, key=lambda v: v["verdict_id"]):
        created = datetime.fromisoformat(v["created"].replace("Z", "+00:00"))
        key = (v["verdict"], v["annotator"], created)
        if key in present:
            new_ids[v["verdict_id"]] = present[key]
            continue
        if v["verdict"] == "revoke":
            new = store.undo_verdict(new_ids[v["revokes"]], v["annotator"], note=v["note"],
                                     created=created)
        else:
            new = store.add_verdict(link_id, v["verdict"], v["annotator"], note=v["note"],
                                    geometry=v.get("geometry"), created=created)
        new_ids[v["verdict_id"]] = new
        added += 1
    return added


# ---------------------------------------------------------------------- W3C Web Annotation


def _source(image: ImageRecord) -> tuple[str, float, float]:
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


def _specific(image: ImageRecord, box: Box, polygon: tuple = ()) -> dict[str, Any]:
    iri, sx, sy = _source(image)
    selector = {"type": "FragmentSelector", "conformsTo": MEDIA_FRAGMENTS, "value": xywh(box, sx, sy)}
    if len(polygon) >= 3:  # the shared detail's outline, within the box (W3C "refinedBy")
        selector["refinedBy"] = {"type": "SvgSelector", "value": svg_polygon(polygon, box, sx, sy)}
    return {"type": "SpecificResource", "source": iri, "selector": selector}


def svg_polygon(polygon, box: Box, sx: float = 1.0, sy: float = 1.0) -> str:
    """An SVG polygon in the coordinates of ``box``'s media fragment (its corner at 0, 0)."""
    x0, y0 = round(box.x0 * sx), round(box.y0 * sy)
    points = " ".join(f"{x * sx - x0:.1f},{y * sy - y0:.1f}" for x, y in polygon)
    return f"<svg xmlns='http://www.w3.org/2000/svg'><polygon points='{points}'/></svg>"


def _annotation_id(link: Link) -> str:
    """Stable across exports and projects: derived from the model, images and boxes."""
    key = "|".join(map(str, _link_key(link.model_id, link.match)))
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}"


def _w3c_annotation(row: _Row) -> dict[str, Any]:
    link, v = row.link, row.verdict
    bodies = [{"type": "TextualBody", "purpose": "assessing", "value": link.status}]
    bodies.append({"type": "TextualBody", "purpose": "describing",
                   "value": f"score {link.score:.4f}, {link.match.n_inliers} inliers"
                            + (", mirrored copy" if link.match.mirrored else "")})
    if v is not None and v.note:
        bodies.append({"type": "TextualBody", "purpose": "commenting", "value": v.note})
    annotation = {
        "id": _annotation_id(link), "type": "Annotation", "motivation": "linking",
        "body": bodies,
        "target": [_specific(row.image_a, link.box_a, row.mask.polygon_a if row.mask else ()),
                   _specific(row.image_b, link.box_b, row.mask.polygon_b if row.mask else ())],
    }
    if v is not None:
        annotation["creator"] = {"type": "Person", "name": v.annotator}
        annotation["created"] = _iso(v.created)
    return annotation


def _w3c_text(rows: list[_Row]) -> str:
    page = {"@context": ANNO_CONTEXT,
            "id": f"urn:uuid:{uuid.uuid4()}", "type": "AnnotationPage",
            "generator": {"type": "Software", "name": "ArtMiner HITL"},
            "generated": _iso(datetime.now(UTC)),
            "items": [_w3c_annotation(r) for r in rows]}
    return json.dumps(page, indent=1, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------- IIIF


def _iiif_annotations(rows: list[_Row]) -> dict[str, tuple[int, list[dict[str, Any]]]]:
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
            _, sx, sy = _source(here)
            target = f"{here.iiif_canvas}#{xywh(box, sx, sy)}"
            body = _specific(there, other_box, other_polygon)
            ann_id = f"{_annotation_id(row.link)}-{n}"
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


def _write_iiif(rows: list[_Row], out: Path) -> int:
    pages = _iiif_annotations(rows)
    count = sum(len(anns) for _, anns in pages.values())
    if len(pages) <= 1:
        manifest, (version, anns) = next(iter(pages.items()), ("urn:artminer:none", (3, [])))
        _write(out, json.dumps(_iiif_page(manifest, version, anns), indent=1) + "\n")
        return count
    index = []
    for n, (manifest, (version, anns)) in enumerate(sorted(pages.items()), start=1):
        part = out.with_name(f"{out.stem}-{n}{out.suffix or '.json'}")
        _write(part, json.dumps(_iiif_page(manifest, version, anns), indent=1) + "\n")
        index.append({"manifest": manifest, "iiif_version": version, "file": part.name,
                      "annotations": len(anns)})
    _write(out, json.dumps({"artminer_iiif_export": index}, indent=1) + "\n")
    return count
