"""Export just the links of one view (a cluster's timeline, a detail's spread).

`hitl.export.export_links` writes a whole project's confirmed links to a file; the app
needs the bytes of a chosen subset for a download button. When ``export_links`` takes
``link_ids`` it filters itself; otherwise the whole export is filtered here: CSV rows by
their ``link_id`` column, W3C items by position (``export_links`` writes the confirmed
links in ``link_id`` order).
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import tempfile
from collections.abc import Collection
from pathlib import Path

from db.store import Store
from hitl.export import export_links
from hitl.formats.csv_safe import safe_writer

VIEW_FORMATS = ("csv", "w3c")


def export_view(store: Store, fmt: str, link_ids: Collection[int]) -> bytes:
    """The confirmed links among ``link_ids`` in ``fmt`` (``csv`` or ``w3c``), as bytes.

    Raises:
        ValueError: a format other than `VIEW_FORMATS`.
    """
    if fmt not in VIEW_FORMATS:
        raise ValueError(f"view export format must be one of {VIEW_FORMATS}, not {fmt!r}")
    wanted = {int(i) for i in link_ids}
    filters_itself = "link_ids" in inspect.signature(export_links).parameters
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"links.{fmt}"
        if filters_itself:
            export_links(store, fmt, out, link_ids=sorted(wanted))
            return out.read_bytes()
        export_links(store, fmt, out)
        text = out.read_text(encoding="utf-8")
    if fmt == "csv":
        return _filter_csv(text, wanted).encode("utf-8")
    order = [lk.link_id for lk in store.list_links(status="confirm", order="link_id")]
    return _filter_w3c(text, order, wanted).encode("utf-8")


def _filter_csv(text: str, wanted: set[int]) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return text
    column = rows[0].index("link_id")
    keep = [rows[0]] + [r for r in rows[1:] if int(r[column]) in wanted]
    out = io.StringIO()
    safe_writer(out, lineterminator="\n").writerows(keep)  # the export neutralised; stay so
    return out.getvalue()


def _filter_w3c(text: str, order: list[int], wanted: set[int]) -> str:
    page = json.loads(text)
    items = page.get("items", [])
    if len(items) != len(order):  # not the layout we rely on: give everything, not a wrong subset
        return text
    page["items"] = [item for item, link_id in zip(items, order) if link_id in wanted]
    return json.dumps(page, indent=1, ensure_ascii=False) + "\n"
