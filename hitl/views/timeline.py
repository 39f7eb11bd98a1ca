"""How a detail travelled: artworks on a timeline, confirmed links as edges.

The propagation view places every artwork that carries a detail at x = its year and
y = its artist (or collection), and joins confirmed links with lines, so a motif's
path from workshop to workshop reads left to right. Artworks of one row and year are
spread a little apart vertically so none hides another.

Uncertain dates are spans (`date_span`: "c. 1610" is 1605-1615, "1620s" is 1620-1629),
drawn as a bar around the point. An edge is an arrow from model to copy: the direction
the expert stored with the verdict ("A copies B", "B copies A"), else from the earlier
work to the later one; "both from a common model" and equal dates draw no arrowhead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from db.records import ImageRecord, Link, parse_year
from engine.types import Box

ROW_BY = ("artist", "collection")
UNKNOWN_ROW = "(unknown)"
CIRCA_YEARS = 5  # "c. 1610": ±5 years, the usual catalogue reading of circa for a single year

_CIRCA = re.compile(r"\b(c\.|ca\.?|circa|about|around)\s*", re.IGNORECASE)
_RANGE = re.compile(r"(?<!\d)(\d{3,4})\s*[-–—/]\s*(\d{2,4})(?!\d)")
_DECADE = re.compile(r"(?<!\d)(\d{3})0s\b")
_CENTURY = re.compile(r"(\d{1,2})(?:st|nd|rd|th)\s+century", re.IGNORECASE)


def date_span(date: str | None) -> tuple[int, int] | None:
    """The years a free-text date may mean, ``(first, last)``; None when it names no year.

    ``"1623"`` -> (1623, 1623); ``"c. 1610"`` -> (1605, 1615); ``"1605-1610"`` or
    ``"1605-10"`` -> (1605, 1610); ``"1620s"`` -> (1620, 1629); ``"17th century"`` ->
    (1600, 1699); "c." before a range widens it by `CIRCA_YEARS` on both sides.
    """
    if not date:
        return None
    text = str(date)
    circa = CIRCA_YEARS if _CIRCA.search(text) else 0
    if found := _RANGE.search(text):
        first, last = int(found[1]), found[2]
        last = int(found[1][: len(found[1]) - len(last)] + last) if len(last) < len(found[1]) else int(last)
        span = (min(first, last), max(first, last))
    elif found := _DECADE.search(text):
        span = (int(found[1]) * 10, int(found[1]) * 10 + 9)
    elif found := _CENTURY.search(text):
        span = ((int(found[1]) - 1) * 100, (int(found[1]) - 1) * 100 + 99)
    elif (year := parse_year(text)) is not None:
        span = (year, year)
    else:
        return None
    return span[0] - circa, span[1] + circa


@dataclass(frozen=True)
class TimelineLayout:
    """Node positions and edge segments of a propagation timeline.

    ``edge_x``/``edge_y`` hold one segment per edge, separated by None, which is how a
    single plotly line trace draws many disjoint segments.
    """

    image_ids: tuple[str, ...]  # placed artworks (those with a year), by year then row
    x: np.ndarray  # (N,) year
    y: np.ndarray  # (N,) row index plus a small spread
    rows: tuple[str, ...]  # row labels, ordered by each row's earliest year
    edge_x: tuple[float | None, ...]
    edge_y: tuple[float | None, ...]
    edge_links: tuple[int, ...]  # link id of each drawn edge
    undated: tuple[str, ...]  # artworks without a year: listed, not placed
    span_low: np.ndarray | None = None  # (N,) first year the date may mean (= x when exact)
    span_high: np.ndarray | None = None  # (N,) last year
    arrows: tuple[tuple[int, int], ...] = ()  # per drawn edge with a direction: (model, copy) indices


def linked_component(links: Iterable[Link], seeds: Iterable[str]) -> set[str]:
    """Images reachable from ``seeds`` through ``links`` (pass only confirmed ones)."""
    neighbours: dict[str, set[str]] = {}
    for link in links:
        neighbours.setdefault(link.image_a, set()).add(link.image_b)
        neighbours.setdefault(link.image_b, set()).add(link.image_a)
    found, todo = set(), list(seeds)
    while todo:
        image = todo.pop()
        if image not in found:
            found.add(image)
            todo.extend(neighbours.get(image, ()))
    return found


def links_within(links: Iterable[Link], images: set[str]) -> list[Link]:
    """The links with both ends among ``images``."""
    return [lk for lk in links if lk.image_a in images and lk.image_b in images]


def detail_boxes(links: Iterable[Link]) -> dict[str, tuple[Box, ...]]:
    """Image id -> the boxes of the shared detail in it, from the links (each box once)."""
    found: dict[str, list[Box]] = {}
    for link in sorted(links, key=lambda lk: lk.link_id):
        for image, box in ((link.image_a, link.box_a), (link.image_b, link.box_b)):
            boxes = found.setdefault(image, [])
            if box not in boxes:
                boxes.append(box)
    return {image: tuple(boxes) for image, boxes in found.items()}


def timeline_layout(images: Sequence[ImageRecord], links: Sequence[Link], row_by: str = "artist",
                    spread: float = 0.25, directions: Mapping[int, str] | None = None,
                    ) -> TimelineLayout:
    """Positions of ``images`` on the timeline and the segments of ``links`` among them.

    Args:
        row_by: ``artist`` or ``collection``.
        spread: how far apart (in rows) artworks of one row and year are drawn.
        directions: link id -> the direction stored with its verdict (`db.records.DIRECTIONS`).

    Raises:
        ValueError: unknown ``row_by``.
    """
    if row_by not in ROW_BY:
        raise ValueError(f"timeline rows by one of {ROW_BY}, not {row_by!r}")
    dated = sorted((im for im in images if im.year is not None),
                   key=lambda im: (im.year, _row(im, row_by), im.image_id))
    undated = tuple(sorted(im.image_id for im in images if im.year is None))
    rows: list[str] = []
    for im in dated:  # first appearance in time order = the row's earliest year
        if _row(im, row_by) not in rows:
            rows.append(_row(im, row_by))
    x = np.array([im.year for im in dated], dtype=np.float64)
    y = np.array([rows.index(_row(im, row_by)) for im in dated], dtype=np.float64)
    y += _offsets([(im.year, _row(im, row_by)) for im in dated], spread)
    where = {im.image_id: i for i, im in enumerate(dated)}
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    drawn: list[int] = []
    arrows: list[tuple[int, int]] = []
    for link in sorted(links, key=lambda lk: lk.link_id):
        ia, ib = where.get(link.image_a), where.get(link.image_b)
        if ia is None or ib is None:
            continue
        edge_x += [float(x[ia]), float(x[ib]), None]
        edge_y += [float(y[ia]), float(y[ib]), None]
        drawn.append(link.link_id)
        arrow = _arrow(ia, ib, x, (directions or {}).get(link.link_id))
        if arrow is not None:
            arrows.append(arrow)
    spans = [date_span(im.date) or (im.year, im.year) for im in dated]
    low = np.array([min(lo, im.year) for (lo, _), im in zip(spans, dated)], dtype=np.float64)
    high = np.array([max(hi, im.year) for (_, hi), im in zip(spans, dated)], dtype=np.float64)
    return TimelineLayout(tuple(im.image_id for im in dated), x, y, tuple(rows),
                          tuple(edge_x), tuple(edge_y), tuple(drawn), undated, low, high,
                          tuple(arrows))


def _arrow(ia: int, ib: int, x: np.ndarray, direction: str | None) -> tuple[int, int] | None:
    """(model, copy) of an edge: the expert's direction, else earlier -> later; None for none."""
    if direction == "a_copies_b":
        return ib, ia
    if direction == "b_copies_a":
        return ia, ib
    if direction == "common_model" or x[ia] == x[ib]:
        return None
    return (ia, ib) if x[ia] < x[ib] else (ib, ia)


def _row(image: ImageRecord, row_by: str) -> str:
    return getattr(image, row_by) or UNKNOWN_ROW


def _offsets(keys: Sequence[tuple[int, str]], spread: float) -> np.ndarray:
    """Symmetric offsets within each group of equal keys: 0; -s/2, +s/2; -s, 0, +s; ..."""
    out = np.zeros(len(keys))
    groups: dict[tuple[int, str], list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        n = len(members)
        out[members] = (np.arange(n) - (n - 1) / 2) * spread / max(1, n - 1) * min(n - 1, 2)
    return out
