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
    ArtMiner's own format (``"format": "artminer-links"``): the links (with their inlier
    points ``[x_a, y_a, x_b, y_b]`` when stored), their images and models, and each
    link's full verdict history. `import_links` reads it back.
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

The formats themselves live in `hitl.formats` (one module each); this module chains them.
"""

from __future__ import annotations

import os
from pathlib import Path

from db import VERDICTS, Store
from hitl.formats.csv_export import CSV_HEADER, csv_text
from hitl.formats.iiif_annotations import write_iiif
from hitl.formats.link_rows import link_rows, write_atomic
from hitl.formats.links_json import JSON_FORMAT, JSON_VERSION, ImportResult, import_links, json_text
from hitl.formats.training_json import training_text
from hitl.formats.w3c import w3c_text, xywh

__all__ = ["CSV_HEADER", "FORMATS", "JSON_FORMAT", "JSON_VERSION", "ImportResult", "export_links",
           "import_links", "xywh"]

FORMATS = ("csv", "json", "w3c", "iiif", "training")


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
    rows = link_rows(store, statuses, inliers=fmt == "json")  # only our own format carries points
    out = Path(out_path)
    if fmt == "iiif":
        return write_iiif(rows, out)
    writers = {"csv": csv_text, "json": lambda r: json_text(store, r),
               "w3c": w3c_text, "training": training_text}
    write_atomic(out, writers[fmt](rows))
    return len(rows)

