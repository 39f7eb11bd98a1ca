"""Propagation timeline: positions, rows, edges, components."""

from __future__ import annotations

import pytest

from db.records import ImageRecord, Link
from engine.types import IDENTITY_AFFINE, Box, PairMatch
from hitl.views.timeline import UNKNOWN_ROW, linked_component, links_within, timeline_layout

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
