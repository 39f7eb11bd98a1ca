"""Propagation timeline: positions, rows, edges, components."""

from __future__ import annotations

import pytest

from db.records import ImageRecord, Link
from engine.types import IDENTITY_AFFINE, Box, PairMatch
from hitl.views.timeline import (
    UNKNOWN_ROW,
    date_span,
    detail_boxes,
    linked_component,
    links_within,
    timeline_layout,
)

BOX = Box(0, 0, 10, 10)


def _image(image_id: str, year: int | None, artist: str | None) -> ImageRecord:
    return ImageRecord(image_id, image_id, f"/x/{image_id}.jpg", 10, 10, artist=artist, year=year)


def _link(link_id: int, a: str, b: str) -> Link:
    return Link(link_id, 1, "m", PairMatch(a, b, BOX, BOX, IDENTITY_AFFINE, 0.5, 3), "confirm")


def test_layout_rows_by_first_year_and_edges():
    images = [_image("a", 1600, "Rubens"), _image("b", 1560, "Bruegel"), _image("c", 1610, "Rubens"),
              _image("d", None, "Anon"), _image("e", 1590, None)]
    links = [_link(1, "a", "b"), _link(2, "b", "c"), _link(3, "a", "d")]
    layout = timeline_layout(images, links, "artist")
    assert layout.image_ids == ("b", "e", "a", "c")
    assert layout.rows == ("Bruegel", UNKNOWN_ROW, "Rubens")
    assert layout.x.tolist() == [1560, 1590, 1600, 1610]
    assert layout.y.tolist() == [0, 1, 2, 2]
    assert layout.undated == ("d",)
    assert layout.edge_links == (1, 2)  # the link to undated d is not drawn
    assert layout.edge_x == (1600.0, 1560.0, None, 1560.0, 1610.0, None)
    assert layout.edge_y == (2.0, 0.0, None, 0.0, 2.0, None)


def test_same_row_and_year_are_spread_apart():
    images = [_image(i, 1600, "Rubens") for i in "abc"]
    layout = timeline_layout(images, [], "artist", spread=0.3)
    assert sorted(layout.y.tolist()) == pytest.approx([-0.3, 0.0, 0.3])


def test_rows_by_collection_and_bad_row():
    images = [ImageRecord("a", "a", "/a", 1, 1, year=1500, collection="Louvre")]
    assert timeline_layout(images, [], "collection").rows == ("Louvre",)
    with pytest.raises(ValueError, match="rows by"):
        timeline_layout(images, [], "medium")


def test_linked_component_and_links_within():
    links = [_link(1, "a", "b"), _link(2, "b", "c"), _link(3, "x", "y")]
    assert linked_component(links, ["a"]) == {"a", "b", "c"}
    assert linked_component(links, ["q"]) == {"q"}
    assert [lk.link_id for lk in links_within(links, {"a", "b", "x"})] == [1]



@pytest.mark.parametrize("date, span", [
    ("1623", (1623, 1623)), ("c. 1610", (1605, 1615)), ("ca 1610", (1605, 1615)),
    ("1605-1610", (1605, 1610)), ("1605–10", (1605, 1610)), ("c. 1605-1610", (1600, 1615)),
    ("1620s", (1620, 1629)), ("17th century", (1600, 1699)), ("undated", None), (None, None),
])
def test_date_span(date, span):
    assert date_span(date) == span


def test_arrows_follow_the_expert_else_time_and_spans_are_drawn():
    images = [ImageRecord("a", "a", "/a", 1, 1, year=1600, date="c. 1600", artist="X"),
              ImageRecord("b", "b", "/b", 1, 1, year=1620, date="1620", artist="Y"),
              ImageRecord("c", "c", "/c", 1, 1, year=1620, date="1620s", artist="Z")]
    links = [_link(1, "a", "b"), _link(2, "b", "c"), _link(3, "a", "c"), _link(4, "c", "b")]
    layout = timeline_layout(images, links, "artist",
                             directions={1: "a_copies_b", 3: "common_model", 4: "unknown"})
    order = layout.image_ids  # a, b, c
    named = [(order[m], order[c]) for m, c in layout.arrows]
    # link 1: the expert says A (a) copies B (b); 2: same year, no arrow; 3: common model; 4: none
    assert named == [("b", "a")]
    assert layout.span_low.tolist() == [1595, 1620, 1620]
    assert layout.span_high.tolist() == [1605, 1620, 1629]
    later = timeline_layout(images[:2], [_link(5, "b", "a")], "artist")
    assert [(later.image_ids[m], later.image_ids[c]) for m, c in later.arrows] == [("a", "b")]


def test_detail_boxes_per_image():
    other = Box(5, 5, 20, 20)
    links = [_link(2, "a", "c"), _link(1, "a", "b"),
             Link(3, 1, "m", PairMatch("c", "a", other, BOX, IDENTITY_AFFINE, 0.5, 3), "confirm")]
    assert detail_boxes(links) == {"a": (BOX,), "b": (BOX,), "c": (BOX, other)}
