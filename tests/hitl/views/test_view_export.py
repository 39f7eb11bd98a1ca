"""Exporting only the links of one view."""

from __future__ import annotations

import csv
import io
import json

import pytest

from db.records import ImageRecord
from db.store import Store
from engine.types import IDENTITY_AFFINE, Box, ModelRef, PairMatch
from hitl.views.view_export import export_view

BOX = Box(0, 0, 10, 10)


@pytest.fixture
def store() -> Store:
    s = Store(":memory:")
    s.add_images([ImageRecord(i, i * 4, f"/x/{i}.jpg", 100, 100, title=f"T{i}") for i in "abcd"])
    s.add_model(ModelRef("m", "m"))
    run = s.start_run("m", {})
    s.add_links(run, [PairMatch(a, b, BOX, BOX, IDENTITY_AFFINE, 0.5, 4) for a, b in ("ab", "bc", "cd")])
    for link_id in (1, 2, 3):
        s.add_verdict(link_id, "confirm", "mk")
    return s


def test_csv_of_a_view(store):
    rows = list(csv.DictReader(io.StringIO(export_view(store, "csv", [1, 3]).decode())))
    assert [r["link_id"] for r in rows] == ["1", "3"]


def test_w3c_of_a_view(store):
    page = json.loads(export_view(store, "w3c", [2]))
    assert page["type"] == "AnnotationPage" and len(page["items"]) == 1
    targets = [t["source"] for t in page["items"][0]["target"]]
    assert targets[0].endswith("/x/b.jpg") and targets[1].endswith("/x/c.jpg")


def test_unknown_format(store):
    with pytest.raises(ValueError, match="view export format"):
        export_view(store, "iiif", [1])
