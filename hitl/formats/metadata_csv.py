"""Metadata tables (CSV/TSV) joined to images by file name; the header decides the mapping."""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from db import ImageRecord, Store, parse_year
from hitl.formats.report import Tally

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
TEXT_FIELDS = ("title", "artist", "date", "medium", "collection")


@dataclass(frozen=True)
class MetadataTable:
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
        return with_fields(record, row) if row else record


def read_metadata(path: str | os.PathLike) -> MetadataTable:
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
    # newline="": the csv module's own line handling (a lone CR ends a row, as in a file)
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    try:
        return _table(path, reader)
    except csv.Error as err:
        raise ValueError(f"{path}: not a readable CSV/TSV table ({err})") from err


def _table(path: str | os.PathLike, reader: csv.DictReader) -> MetadataTable:
    headers = [h for h in (reader.fieldnames or []) if h is not None]
    mapping = map_headers(headers)
    if "file" not in mapping.values():
        raise ValueError(f"{path}: no file-name column; the header needs one of "
                         f"{', '.join(FIELD_SYNONYMS['file'][:4])} (found {headers})")
    by_name: dict[str, dict[str, Any]] = {}
    for row in reader:
        fields = row_fields(row, mapping)
        name = fields.pop("file", None)
        if not name:
            continue
        key = re.split(r"[\\/]", name)[-1]
        fields["_key"] = key
        by_name[key.lower()] = fields
    by_stem = {Path(k).stem.lower(): v for k, v in by_name.items()}
    return MetadataTable(str(path), by_name, by_stem)


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


def map_headers(headers: list[str]) -> dict[str, str]:
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


def row_fields(row: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
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


def with_fields(record: ImageRecord, fields: dict[str, Any]) -> ImageRecord:
    """``record`` with metadata fields (title, artist, date, ...) and extra merged in."""
    values = {k: fields[k] for k in TEXT_FIELDS if fields.get(k)}
    if "date" in values:
        values["year"] = parse_year(values["date"])
    extra = {**record.extra, **fields.get("extra", {})}
    return replace(record, extra=extra, **values)


def apply_metadata_to_existing(store: Store, metadata: MetadataTable, tally: Tally) -> None:
    """Join the table onto images ingested before (or found as duplicates now)."""
    fresh = set(tally.added)
    updates = []
    for image in store.list_images():
        if image.image_id in fresh:
            continue
        row = metadata.lookup(Path(image.path).name)
        if row is not None:
            updated = with_fields(image, row)
            if updated != image:  # re-running the same table rewrites nothing
                updates.append(updated)
    if updates:
        tally.metadata_updated += store.update_image_metadata(updates)
    unmatched = sorted({row["_key"] for row in metadata.by_name.values()} - metadata.used)
    if unmatched:
        tally.notes.append(f"{metadata.source}: {len(unmatched)} rows match no image "
                           f"(e.g. {', '.join(unmatched[:3])})")

