"""Training-set export: confirmed (label 1) and rejected (label 0) links with their geometry."""

from __future__ import annotations

import json

from hitl.formats.link_rows import Row


def training_text(rows: list[Row]) -> str:
    items = [{
        "link_id": row.link.link_id, "image_a": row.link.image_a, "image_b": row.link.image_b,
        "path_a": row.image_a.path, "path_b": row.image_b.path,
        "box_a": row.link.box_a.as_list(), "box_b": row.link.box_b.as_list(),
        "affine": [list(r) for r in row.link.match.affine], "mirrored": row.link.match.mirrored,
        "label": 1 if row.link.status == "confirm" else 0,
    } for row in rows]
    return json.dumps(items, indent=1) + "\n"

