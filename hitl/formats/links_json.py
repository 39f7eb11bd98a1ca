"""Our own links format (``artminer-links`` JSON): written by export, read back by import."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db import ImageRecord, Link, Store
from engine.types import Box, ModelRef, PairMatch
from hitl.formats.link_rows import Row, iso, link_key

JSON_FORMAT = "artminer-links"
JSON_VERSION = 1


@dataclass(frozen=True)
class ImportResult:
    """What `import_links` added (existing links and verdicts are recognised, not doubled)."""

    images_added: int
    links_added: int
    links_existing: int
    verdicts_added: int



def json_text(store: Store, rows: list[Row]) -> str:
    images = {r.image_a.image_id: r.image_a for r in rows} | {
        r.image_b.image_id: r.image_b for r in rows}
    used_models = {r.link.model_id for r in rows}
    models = [m for m in store.list_models() if m.model_id in _with_ancestors(store, used_models)]
    doc = {
        "format": JSON_FORMAT, "version": JSON_VERSION, "exported": iso(datetime.now(UTC)),
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
        "inliers": [list(p) for p in link.match.inliers],
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
    try:  # check the whole file before writing anything: a bad file changes nothing
        records, models, matches = _parse_export(doc)
        _check_references(store, doc, records, models)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as err:
        raise ValueError(f"{path}: malformed links export ({type(err).__name__}: {err})") from err
    images_added, _ = store.add_images(records)
    for ref, sha in models:
        if store.get_model(ref.model_id) is None:
            store.add_model(ref, checkpoint_sha256=sha)
    link_ids, existing = _import_link_rows(store, doc["links"], matches, str(path))
    added = sum(_import_history(store, link_id, entry["verdicts"])
                for link_id, entry in zip(link_ids, doc["links"]))
    return ImportResult(len(images_added), len(doc["links"]) - existing, existing, added)


def _parse_export(doc: dict[str, Any]) -> tuple[list[ImageRecord], list[tuple[ModelRef, Any]],
                                                 list[PairMatch]]:
    """Typed records from an export; raises KeyError/TypeError/ValueError on any bad field."""
    for key in ("images", "models", "links"):
        if not isinstance(doc[key], list) or not all(isinstance(e, dict) for e in doc[key]):
            raise TypeError(f"{key} must be a list of objects")
    records = [ImageRecord(**{**im, "extra": _dict(im.get("extra"))}) for im in doc["images"]]
    for r in records:
        _typed(r.image_id, str), _typed(r.path, str), _typed(r.width, int), _typed(r.height, int)
    models = [(ModelRef(_typed(m["model_id"], str), _typed(m["backbone"], str),
                        _typed(m.get("checkpoint"), str, None), _typed(m.get("parent"), str, None)),
               _typed(m.get("checkpoint_sha256"), str, None)) for m in doc["models"]]
    matches = []
    for e in doc["links"]:
        _typed(e["model_id"], str)
        affine = tuple(tuple(_num(x) for x in row) for row in e["affine"])
        if len(affine) != 2 or any(len(row) != 3 for row in affine):
            raise ValueError("affine must be 2 x 3")
        matches.append(PairMatch(_typed(e["image_a"], str), _typed(e["image_b"], str),
                                 Box(*map(_num, e["box_a"])), Box(*map(_num, e["box_b"])),
                                 affine, _num(e["score"]), _typed(e["n_inliers"], int),
                                 _flag(e.get("mirrored", False)), _inliers(e.get("inliers", []))))
        _check_verdicts(e["verdicts"])
    return records, models, matches


def _check_verdicts(verdicts: Any) -> None:
    if not isinstance(verdicts, list):
        raise TypeError("verdicts must be a list")
    seen: set[int] = set()
    for v in sorted(verdicts, key=lambda v: _typed(v["verdict_id"], int)):
        if _typed(v["verdict"], str) == "revoke" and v.get("revokes") not in seen:
            raise ValueError(f"verdict {v['verdict_id']} revokes an unknown verdict")
        _typed(v["annotator"], str), _typed(v.get("note"), str, None)
        datetime.fromisoformat(_typed(v["created"], str).replace("Z", "+00:00"))
        seen.add(v["verdict_id"])


def _check_references(store: Store, doc: dict[str, Any], records: list[ImageRecord],
                      models: list[tuple[ModelRef, Any]]) -> None:
    images = {r.image_id for r in records}
    model_ids = {ref.model_id for ref, _ in models}
    for e in doc["links"]:
        for key in ("image_a", "image_b"):
            if e[key] not in images and store.get_image(e[key]) is None:
                raise ValueError(f"link names image {e[key]!r}, which is neither in the file "
                                 "nor in the project")
        if e["model_id"] not in model_ids and store.get_model(e["model_id"]) is None:
            raise ValueError(f"link names model {e['model_id']!r}, unknown")


def _typed(value: Any, kind: type, *optional: None) -> Any:
    """``value`` if it is a ``kind`` (``None`` too when ``optional``), else TypeError."""
    if (value is None and optional) or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{value!r} is not a {kind.__name__}")


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{value!r} is not true or false")
    return value


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _inliers(value: Any) -> tuple[tuple[float, float, float, float], ...]:
    """Inlier points of a link: a list of [x_a, y_a, x_b, y_b] (absent in older exports)."""
    if not isinstance(value, list) or any(not isinstance(p, list) or len(p) != 4 for p in value):
        raise TypeError("inliers must be a list of [x_a, y_a, x_b, y_b]")
    return tuple(tuple(_num(v) for v in p) for p in value)


def _dict(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError("extra must be an object")
    return value


def _read_export(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read links export {path}: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not an ArtMiner links export (format {JSON_FORMAT!r})")
    version = doc.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path}: version {version!r} is not a number")
    if version > JSON_VERSION:
        raise ValueError(f"{path} is export version {doc['version']}, newer than this ArtMiner "
                         f"reads ({JSON_VERSION})")
    return doc


def _import_link_rows(store: Store, entries: list[dict], matches: list[PairMatch],
                      source: str) -> tuple[list[int], int]:
    """Store new links (one import run per model); return the link id per entry."""
    known = {link_key(lk.model_id, lk.match): lk.link_id for lk in store.list_links()}
    ids: list[int | None] = []
    fresh: dict[str, list[tuple[int, PairMatch]]] = {}
    for i, (e, match) in enumerate(zip(entries, matches)):
        ids.append(known.get(link_key(e["model_id"], match)))
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


