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

The formats themselves live in `hitl.formats` (one module each); this module chains them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from db import Store
from db.records import IMAGE_SUFFIXES
from hitl.formats.fetch import FETCH_TIMEOUT_S, FetchLimits, fetch_json, is_url
from hitl.formats.iiif_manifest import (
    CanvasImage,
    Manifest,
    cache_dir_for,
    ingest_manifest,
    is_manifest,
    parse_manifest,
)
from hitl.formats.image_files import (
    BadImage,
    image_files,
    iter_image_files,
    probe_image,
    progress_bar,
    project_max_pixels,
    store_images,
)
from hitl.formats.metadata_csv import (
    FIELD_SYNONYMS,
    MetadataTable,
    apply_metadata_to_existing,
    read_metadata,
)
from hitl.formats.report import IngestReport, Skipped, Tally
from hitl.formats.via import ingest_via, via_entries, via_regions

__all__ = ["FETCH_TIMEOUT_S", "FIELD_SYNONYMS", "BadImage", "CanvasImage", "FetchLimits", "IngestReport",
           "Manifest", "Skipped", "ingest_paths", "iter_image_files", "parse_manifest",
           "probe_image", "read_metadata", "via_regions"]


def ingest_paths(store: Store, paths: Sequence[str | os.PathLike],
                 metadata_csv: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 progress: bool = True,
                 limits: FetchLimits = FetchLimits()) -> IngestReport:
    """Ingest folders, image files, IIIF manifests (files or URLs) and VIA files.

    Args:
        store: the project.
        paths: folders, files or URLs, in any mix.
        metadata_csv: a CSV/TSV joined to images by file name (see `read_metadata`);
            also updates images ingested earlier.
        cache_dir: where IIIF images are cached; default ``artminer-data/iiif-cache``
            beside the project file.
        progress: show a progress bar on stderr.
        limits: download deadline, size caps and timeouts (`FetchLimits`). Images over
            the project's pixel limit (`project_max_pixels`) are skipped.

    Where sources may come from (the rules live in `hitl.formats.fetch`): a manifest
    fetched over http(s) names http(s) images only; a local manifest names http(s)
    images or files inside its own folder.

    Raises:
        ValueError: the metadata file is unreadable or has no file-name column (nothing
            is ingested then). Bad images, manifests and VIA files are reported instead.
    """
    metadata = read_metadata(metadata_csv) if metadata_csv is not None else None
    tally = Tally()
    max_pixels = project_max_pixels(store)
    files, manifests, via_files = _classify(paths, tally, limits)
    _ingest_files(store, files, metadata, tally, progress, max_pixels)
    for source in manifests:
        ingest_manifest(store, source, cache_dir_for(store, cache_dir), tally, progress, limits,
                        max_pixels)
    for source in via_files:
        ingest_via(store, source, tally, limits)
    if metadata is not None:
        apply_metadata_to_existing(store, metadata, tally)
    return tally.report()


def _classify(paths: Sequence[str | os.PathLike], tally: Tally, limits: FetchLimits,
              ) -> tuple[list[Path], list[str], list[str]]:
    """Split inputs into image files, manifests (paths or URLs) and VIA files."""
    files: list[Path] = []
    manifests: list[str] = []
    via_files: list[str] = []
    for raw in paths:
        text = os.fspath(raw)
        if is_url(text):
            manifests.append(text)
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            files += image_files(path)
        elif not path.exists():
            tally.skipped.append(Skipped(text, "no such file or folder"))
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(path)
        elif path.suffix.lower() == ".json":
            kind = _json_kind(path, tally, limits)
            if kind == "iiif":
                manifests.append(str(path))
            elif kind == "via":
                via_files.append(str(path))
        elif path.suffix.lower() in (".csv", ".tsv"):
            tally.skipped.append(Skipped(text, "a metadata table: pass it with --metadata"))
        else:
            tally.skipped.append(Skipped(text, f"unsupported file type {path.suffix!r}"))
    return files, manifests, via_files


def _json_kind(path: Path, tally: Tally, limits: FetchLimits) -> str | None:
    try:
        doc = fetch_json(str(path), limits)
    except (OSError, ValueError) as err:
        tally.skipped.append(Skipped(str(path), str(err)))
        return None
    if is_manifest(doc):
        return "iiif"
    if via_entries(doc) is not None:
        return "via"
    tally.skipped.append(Skipped(str(path), "JSON file is neither a IIIF manifest nor a VIA "
                                            "project"))
    return None


def _ingest_files(store: Store, files: list[Path], metadata: MetadataTable | None,
                  tally: Tally, progress: bool, max_pixels: int) -> None:
    records = []
    for path in progress_bar(files, progress, "reading images"):
        try:
            record = probe_image(path, max_pixels)
        except BadImage as err:
            tally.skipped.append(Skipped(str(path), str(err)))
            continue
        if metadata is not None:
            record = metadata.apply(record, path.name)
        records.append(record)
    store_images(store, records, tally)


