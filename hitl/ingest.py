"""Ingest a collection as it comes: folders, metadata spreadsheets, IIIF manifests, VIA files.

``ingest_paths(store, paths, metadata_csv=...)`` takes any mix of

* folders (searched recursively for jpg, jpeg, png, tif/tiff, webp, bmp) and image files;
* IIIF Presentation manifests, version 3 or 2.1, as a file or an http(s)/file URL: canvas
  labels and metadata become image metadata; each image is fetched from its image
  service (``{service}/full/max/0/default.jpg`` for Image API 3,
  ``{service}/full/full/0/default.jpg`` for 2) and cached;
* VGG Image Annotator (VIA 2) project or annotation files: named regions become stored
  regions (``source='via'``) on the images with the same file name;

plus a CSV/TSV of metadata joined to images by file name. An image is identified by its
content hash, so a file seen before (under any name) is reported as a duplicate, and
re-running an ingest adds only new files. A bad file never stops an ingest: it is
reported with its reason and the rest goes in.

Ingest reads only what it needs: the bytes once for the hash, the image header for its
size (pixels are never decoded), and the file's tail to catch truncation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from db import ImageRecord, Store, parse_year
from db.records import IMAGE_SUFFIXES
from engine.images import content_hash
from engine.types import Box, Region

FETCH_TIMEOUT_S = 30.0
"""Per-request timeout for manifests and IIIF images."""

_BATCH = 500  # images per store transaction: short enough not to hold the file long

# Header synonyms per image field, in priority order (normalised: lower case, a-z0-9_).
FIELD_SYNONYMS: dict[str, tuple[str, ...]] = {
    "file": ("file", "filename", "file_name", "image", "image_file", "imagefile", "path",
             "filepath", "file_path", "img", "fichier"),
    "title": ("title", "name", "object_name", "work", "titre", "titel"),
    "artist": ("artist", "author", "creator", "maker", "painter", "attribution", "artiste",
               "auteur", "kunstler"),
    "date": ("date", "year", "dated", "date_created", "creation_date", "period"),
    "medium": ("medium", "technique", "material", "materials", "support", "object_type"),
    "collection": ("collection", "museum", "institution", "repository", "holding_institution",
                   "owner", "location"),
}
_TEXT_FIELDS = ("title", "artist", "date", "medium", "collection")


# ---------------------------------------------------------------------- report


@dataclass(frozen=True)
class Skipped:
    """Something that was not ingested, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did.

    Attributes:
        added: ids of images new to the project.
        duplicates: ``(path or URL, image_id)`` of files whose content was already there.
        skipped: bad files, unreachable images, unreadable manifests, with reasons.
        regions_added: VIA regions stored.
        metadata_updated: images already in the project whose metadata the CSV updated.
        notes: everything else worth reading (unmatched CSV rows, VIA regions dropped).
    """

    added: tuple[str, ...] = ()
    duplicates: tuple[tuple[str, str], ...] = ()
    skipped: tuple[Skipped, ...] = ()
    regions_added: int = 0
    metadata_updated: int = 0
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """Human-readable lines for the command line."""
        lines = [f"added {len(self.added)} images, {len(self.duplicates)} duplicates, "
                 f"{len(self.skipped)} skipped, {self.regions_added} regions, "
                 f"metadata updated on {self.metadata_updated}"]
        lines += [f"skipped {s.source}: {s.reason}" for s in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "duplicates": [list(d) for d in self.duplicates],
                "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
                "regions_added": self.regions_added, "metadata_updated": self.metadata_updated,
                "notes": list(self.notes)}


@dataclass
class _Tally:
    added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    regions_added: int = 0
    metadata_updated: int = 0

    def report(self) -> IngestReport:
        return IngestReport(tuple(self.added), tuple(self.duplicates), tuple(self.skipped),
                            self.regions_added, self.metadata_updated, tuple(self.notes))


class BadImage(ValueError):
    """A file that cannot be ingested as an image; the message says why."""


# ---------------------------------------------------------------------- entry point


def ingest_paths(store: Store, paths: Sequence[str | os.PathLike],
                 metadata_csv: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> IngestReport:
    """Ingest folders, image files, IIIF manifests (files or URLs) and VIA files.

    Args:
        store: the project.
        paths: folders, files or URLs, in any mix.
        metadata_csv: a CSV/TSV joined to images by file name (see `read_metadata`);
            also updates images ingested earlier.
        cache_dir: where IIIF images are cached; default ``artminer-data/iiif-cache``
            beside the project file.
        progress: show a progress bar on stderr.

    Raises:
        ValueError: the metadata file is unreadable or has no file-name column (nothing
            is ingested then). Bad images, manifests and VIA files are reported instead.
    """
    metadata = read_metadata(metadata_csv) if metadata_csv is not None else None
    tally = _Tally()
    files, manifests, via_files = _classify(paths, tally)
    _ingest_files(store, files, metadata, tally, progress)
    for source in manifests:
        _ingest_manifest(store, source, _cache_dir(store, cache_dir), tally, progress)
    for source in via_files:
        _ingest_via(store, source, tally)
    if metadata is not None:
        _apply_metadata_to_existing(store, metadata, tally)
    return tally.report()


def _classify(paths: Sequence[str | os.PathLike], tally: _Tally,
              ) -> tuple[list[Path], list[str], list[str]]:
    """Split inputs into image files, manifests (paths or URLs) and VIA files."""
    files: list[Path] = []
    manifests: list[str] = []
    via_files: list[str] = []
    for raw in paths:
        text = os.fspath(raw)
        if _is_url(text):
            manifests.append(text)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            files += _image_files(path)
        elif not path.exists():
            tally.skipped.append(Skipped(text, "no such file or folder"))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        elif path.suffix.lower() == ".json":
            kind = _json_kind(path, tally)
            if kind == "iiif":
                manifests.append(str(path))
            elif kind == "via":
                via_files.append(str(path))
        elif path.suffix.lower() in (".csv", ".tsv"):
            tally.skipped.append(Skipped(text, "a metadata table: pass it with --metadata"))
        else:
            tally.skipped.append(Skipped(text, f"unsupported file type {path.suffix!r}"))
    return files, manifests, via_files


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, in a stable order; hidden ones skipped."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, n) for n in sorted(names)
                  if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _json_kind(path: Path, tally: _Tally) -> str | None:
    try:
        doc = _load_json(path.read_bytes(), str(path))
    except (OSError, ValueError) as err:
        tally.skipped.append(Skipped(str(path), str(err)))
        return None
    if _is_manifest(doc):
        return "iiif"
    if _via_entries(doc) is not None:
        return "via"
    tally.skipped.append(Skipped(str(path), "JSON file is neither a IIIF manifest nor a VIA "
                                            "project"))
    return None


# ---------------------------------------------------------------------- image files


def probe_image(path: str | os.PathLike) -> ImageRecord:
    """Hash a file and read its size from the header (after EXIF orientation).

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


def _ingest_files(store: Store, files: list[Path], metadata: _Metadata | None,
                  tally: _Tally, progress: bool) -> None:
    records = []
    for path in _progress(files, progress, "reading images"):
        try:
            record = probe_image(path)
        except BadImage as err:
            tally.skipped.append(Skipped(str(path), str(err)))
            continue
        if metadata is not None:
            record = metadata.apply(record, path.name)
        records.append(record)
    _store_images(store, records, tally)


def _store_images(store: Store, records: list[ImageRecord], tally: _Tally) -> None:
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


def _progress(items: Sequence, enabled: bool, what: str) -> Iterable:
    if not enabled or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="file", leave=False)


# ---------------------------------------------------------------------- metadata table


@dataclass(frozen=True)
class _Metadata:
    """A metadata table keyed by file name (also by stem, for names without extension)."""

    source: str
    by_name: dict[str, dict[str, Any]]
    by_stem: dict[str, dict[str, Any]]
    used: set[str] = field(default_factory=set)

    def lookup(self, file_name: str) -> dict[str, Any] | None:
        row = self.by_name.get(file_name.lower()) or self.by_stem.get(Path(file_name).stem.lower())
        if row is not None:
            self.used.add(row["_key"])
        return row

    def apply(self, record: ImageRecord, file_name: str) -> ImageRecord:
        row = self.lookup(file_name)
        return _with_fields(record, row) if row else record


def read_metadata(path: str | os.PathLike) -> _Metadata:
    """Read a CSV/TSV of image metadata joined by file name.

    The header decides the mapping (case and punctuation ignored, synonyms in
    `FIELD_SYNONYMS`): a file-name column (``file``, ``filename``, ``image``, ``path``)
    is required; ``title``/``name``, ``artist``/``author``/``creator``,
    ``date``/``year``, ``medium``/``technique`` and ``collection`` fill those fields;
    every other column is kept in the image's ``extra`` metadata.

    Raises:
        ValueError: unreadable file or no file-name column.
    """
    text = _read_text(Path(path))
    dialect = _dialect(Path(path), text)
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    headers = [h for h in (reader.fieldnames or []) if h is not None]
    mapping = _map_headers(headers)
    if "file" not in mapping.values():
        raise ValueError(f"{path}: no file-name column; the header needs one of "
                         f"{', '.join(FIELD_SYNONYMS['file'][:4])} (found {headers})")
    by_name: dict[str, dict[str, Any]] = {}
    for row in reader:
        fields = _row_fields(row, mapping)
        name = fields.pop("file", None)
        if not name:
            continue
        key = re.split(r"[\\/]", name)[-1]
        fields["_key"] = key
        by_name[key.lower()] = fields
    by_stem = {Path(k).stem.lower(): v for k, v in by_name.items()}
    return _Metadata(str(path), by_name, by_stem)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read metadata file {path}: {err.strerror or err}") from err
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ValueError(f"{path}: not UTF-8 or Windows-1252 text")


def _dialect(path: Path, text: str) -> type[csv.Dialect] | csv.Dialect:
    if path.suffix.lower() == ".tsv":
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _normalise(header: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", header.strip().lower()).strip("_")


def _map_headers(headers: list[str]) -> dict[str, str]:
    """header -> field name (``file``, ``title``, ...) or ``extra:<header>``."""
    normal = {h: _normalise(h) for h in headers}
    mapping: dict[str, str] = {}
    for name, synonyms in FIELD_SYNONYMS.items():
        for synonym in synonyms:
            match = next((h for h in headers if normal[h] == synonym and h not in mapping), None)
            if match is not None:
                mapping[match] = name
                break
    for h in headers:
        mapping.setdefault(h, f"extra:{h.strip()}")
    return mapping


def _row_fields(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {"extra": {}}
    for header, value in row.items():
        if header is None or header not in mapping:
            continue
        value = (value or "").strip()
        if not value:
            continue
        target = mapping[header]
        if target.startswith("extra:"):
            fields["extra"][target[6:]] = value
        else:
            fields[target] = value
    return fields


def _with_fields(record: ImageRecord, fields: dict[str, Any]) -> ImageRecord:
    """``record`` with metadata fields (title, artist, date, ...) and extra merged in."""
    values = {k: fields[k] for k in _TEXT_FIELDS if fields.get(k)}
    if "date" in values:
        values["year"] = parse_year(values["date"])
    extra = {**record.extra, **fields.get("extra", {})}
    return replace(record, extra=extra, **values)


def _apply_metadata_to_existing(store: Store, metadata: _Metadata, tally: _Tally) -> None:
    """Join the table onto images ingested before (or found as duplicates now)."""
    fresh = set(tally.added)
    updates = []
    for image in store.list_images():
        if image.image_id in fresh:
            continue
        row = metadata.lookup(Path(image.path).name)
        if row is not None:
            updated = _with_fields(image, row)
            if updated != image:  # re-running the same table rewrites nothing
                updates.append(updated)
    if updates:
        tally.metadata_updated += store.update_image_metadata(updates)
    unmatched = sorted({row["_key"] for row in metadata.by_name.values()} - metadata.used)
    if unmatched:
        tally.notes.append(f"{metadata.source}: {len(unmatched)} rows match no image "
                           f"(e.g. {', '.join(unmatched[:3])})")


# ---------------------------------------------------------------------- IIIF manifests


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
    if not _is_manifest(doc):
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


def _is_manifest(doc: Any) -> bool:
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
    mapping = _map_headers(list(merged))
    fields = _row_fields(merged, mapping)
    fields.pop("file", None)
    if "title" not in fields:
        single = len(manifest.canvases) == 1
        fields["title"] = (manifest.label if single else canvas.label) or manifest.label
    fields["extra"].update({"iiif_version": manifest.version,
                            "manifest_label": manifest.label, "canvas_label": canvas.label})
    return fields


def _ingest_manifest(store: Store, source: str, cache_dir: Path, tally: _Tally,
                     progress: bool) -> None:
    try:
        doc = _load_json(_fetch_bytes(source), source)
        manifest = parse_manifest(doc, source)
    except (OSError, ValueError) as err:
        tally.skipped.append(Skipped(source, str(err)))
        return
    tally.notes += [f"{source}: {p}" for p in manifest.problems]
    records = []
    for canvas in _progress(manifest.canvases, progress, "fetching IIIF images"):
        try:
            local = _cached_fetch(canvas.image_url, cache_dir)
            record = probe_image(local)
        except (OSError, BadImage) as err:
            tally.skipped.append(Skipped(canvas.image_url, f"canvas {canvas.canvas_id}: {err}"))
            continue
        record = replace(record, source="iiif", iiif_canvas=canvas.canvas_id,
                         iiif_manifest=manifest.manifest_id, source_url=canvas.image_url,
                         canvas_width=canvas.width or record.width,
                         canvas_height=canvas.height or record.height)
        records.append(_with_fields(record, _canvas_fields(manifest, canvas)))
    _store_images(store, records, tally)


def _cache_dir(store: Store, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if store.path == ":memory:":
        raise ValueError("an in-memory project needs an explicit cache_dir for IIIF images")
    return Path(store.path).parent / "artminer-data" / "iiif-cache"


def _cached_fetch(url: str, cache_dir: Path) -> Path:
    """The image at ``url``, downloaded once into ``cache_dir`` (named by URL hash)."""
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
    name = hashlib.sha256(url.encode()).hexdigest()[:24] + (suffix if suffix in IMAGE_SUFFIXES
                                                            else ".jpg")
    target = cache_dir / name
    if target.exists() and target.stat().st_size > 0:
        return target
    data = _fetch_bytes(url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a killed ingest never leaves half an image in cache
    return target


def _fetch_bytes(source: str) -> bytes:
    """Bytes of a local file or a URL (http, https, file), with a timeout.

    Raises:
        OSError: unreachable, HTTP error, or timeout, with the URL in the message.
    """
    if not _is_url(source):
        try:
            return Path(source).read_bytes()
        except OSError as err:
            raise OSError(f"cannot read {source}: {err.strerror or err}") from err
    request = urllib.request.Request(source, headers={"User-Agent": "artminer-hitl"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise OSError(f"unreachable: HTTP {err.code} {err.reason} for {source}") from err
    except urllib.error.URLError as err:
        raise OSError(f"unreachable: {err.reason} for {source}") from err
    except TimeoutError as err:
        raise OSError(f"unreachable: no answer within {FETCH_TIMEOUT_S:.0f} s from "
                      f"{source}") from err


def _is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from err


# ---------------------------------------------------------------------- VIA projects


def _via_entries(doc: Any) -> list[dict] | None:
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
    entries = _via_entries(doc)
    if entries is None:
        raise ValueError(f"{where}: not a VIA project or annotation file")
    found, problems = [], []
    for entry in entries:
        name = entry.get("filename")
        if not name:
            problems.append(f"{where}: an image entry without a filename")
            continue
        regions = entry.get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        for i, region in enumerate(regions):
            try:
                box = _via_box(region.get("shape_attributes") or {})
            except (ValueError, TypeError) as err:
                problems.append(f"{where}: {name} region {i + 1}: {err}")
                continue
            attrs = region.get("region_attributes") or {}
            found.append((_file_name(str(name)), box, _via_label(attrs), attrs))
    return found, problems


def _via_box(shape: dict) -> Box:
    kind = shape.get("name")
    if kind == "rect":
        return Box.from_xywh(shape["x"], shape["y"], shape["width"], shape["height"])
    if kind in ("polygon", "polyline"):
        xs, ys = shape["all_points_x"], shape["all_points_y"]
        return Box(min(xs), min(ys), max(xs), max(ys))
    if kind == "circle":
        cx, cy, r = shape["cx"], shape["cy"], shape["r"]
        return Box(cx - r, cy - r, cx + r, cy + r)
    if kind == "ellipse":
        cx, cy, rx, ry = shape["cx"], shape["cy"], shape["rx"], shape["ry"]
        return Box(cx - rx, cy - ry, cx + rx, cy + ry)
    if kind == "point":
        raise ValueError("a point has no area")
    raise ValueError(f"unknown or missing shape {kind!r}")


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
    path = urllib.parse.urlparse(name).path if _is_url(name) else name
    return re.split(r"[\\/]", path)[-1]


def _ingest_via(store: Store, source: str, tally: _Tally) -> None:
    try:
        regions, problems = via_regions(_load_json(_fetch_bytes(source), source), source)
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


def iter_image_files(folder: str | os.PathLike) -> Iterator[Path]:
    """The image files ingest would read under ``folder`` (recursive, stable order)."""
    yield from _image_files(Path(folder))
