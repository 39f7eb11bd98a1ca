"""The review page's words and filters, on hand-made links with known answers."""

from __future__ import annotations

import math

import pytest

from db.records import ImageRecord, Link
from engine.types import IDENTITY_AFFINE, Box, PairMatch
from hitl.views.review_view import ReviewFilter, describe_affine, filter_links, session_progress


def _affine(scale: float, degrees: float, mirrored: bool = False, sx: float = 1.0):
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    flip = -1.0 if mirrored else 1.0
    # R · diag(scale * sx, scale) · diag(flip, 1)
    a, b = c * scale * sx * flip, -s * scale
    d, e = s * scale * sx * flip, c * scale
    return ((a, b, 5.0), (d, e, 7.0))


@pytest.mark.parametrize("affine, words", [
    (IDENTITY_AFFINE, "same size"),
    (_affine(1.3, 4), "scale ×1.30, rotation +4°"),
    (_affine(0.5, -90), "scale ×0.50, rotation -90°"),
    (_affine(1.0, 0, mirrored=True), "same size, mirrored"),
    (_affine(2.0, 10, mirrored=True), "scale ×2.00, rotation +10°, mirrored"),
    (_affine(1.0, 0, sx=1.5), "scale ×1.22, stretched 1.50:1"),
    (((0.0, 0.0, 1.0), (0.0, 0.0, 1.0)), "degenerate transform"),
])
def test_describe_affine(affine, words):
    assert describe_affine(affine) == words


BOX = Box(0, 0, 10, 10)
IMAGES = {"a": ImageRecord("a", "a", "/a", 10, 10, artist="Rubens", medium="oil", collection="Louvre"),
          "b": ImageRecord("b", "b", "/b", 10, 10, artist="Brueghel", medium="ink", collection="Prado"),
          "c": ImageRecord("c", "c", "/c", 10, 10, artist="Brueghel", medium="oil", collection="Prado")}
LINKS = [Link(1, 1, "m1", PairMatch("a", "b", BOX, BOX, IDENTITY_AFFINE, 0.05, 9)),
         Link(2, 1, "m1", PairMatch("b", "c", BOX, BOX, IDENTITY_AFFINE, 0.02, 9)),
         Link(3, 2, "m2", PairMatch("a", "c", BOX, BOX, IDENTITY_AFFINE, 0.03, 9))]


@pytest.mark.parametrize("flt, ids", [
    (ReviewFilter(), [1, 2, 3]),
    (ReviewFilter(artists=frozenset({"Rubens"})), [1, 3]),
    (ReviewFilter(media=frozenset({"ink"})), [1, 2]),
    (ReviewFilter(collections=frozenset({"Prado"}), min_score=0.025), [1, 3]),
    (ReviewFilter(max_score=0.03), [2, 3]),
    (ReviewFilter(only_links=frozenset({2, 3}), models=frozenset({"m2"})), [3]),
    (ReviewFilter(only_links=frozenset()), []),
])
def test_filter_links(flt, ids):
    assert [lk.link_id for lk in filter_links(LINKS, IMAGES, flt)] == ids
    assert flt.active == (flt != ReviewFilter())


def test_session_progress():
    assert session_progress(3, 9) == (0.25, "3 answered this session, 9 left")
    assert session_progress(0, 0) == (1.0, "0 answered this session, 0 left")
    with pytest.raises(ValueError):
        session_progress(-1, 2)
