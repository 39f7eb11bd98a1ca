"""CSV export: one row per link (header in `CSV_HEADER`, documented in `hitl.export`).

Text cells that a spreadsheet would run as a formula are neutralised (`csv_safe`).
"""

from __future__ import annotations

import io

from hitl.formats.csv_safe import safe_writer
from hitl.formats.link_rows import Row, iso

CSV_HEADER = (
    "link_id", "image_a", "image_b", "path_a", "path_b", "title_a", "title_b",
    "box_a_x0", "box_a_y0", "box_a_x1", "box_a_y1", "box_b_x0", "box_b_y0", "box_b_x1", "box_b_y1",
    "score", "n_inliers", "status", "annotator", "verdict_at", "note",
)


def csv_text(rows: list[Row]) -> str:
    buffer = io.StringIO()
    writer = safe_writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        v, lk = row.verdict, row.link
        writer.writerow([
            lk.link_id, lk.image_a, lk.image_b, row.image_a.path, row.image_b.path,
            row.image_a.title or "", row.image_b.title or "",
            *(_num(x) for x in lk.box_a.as_list()), *(_num(x) for x in lk.box_b.as_list()),
            f"{lk.score:.6g}", lk.match.n_inliers, lk.status,
            v.annotator if v else "", iso(v.created) if v else "", (v.note or "") if v else "",
        ])
    return buffer.getvalue()


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


