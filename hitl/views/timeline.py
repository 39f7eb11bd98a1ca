"""How a detail travelled: artworks on a timeline, confirmed links as edges.

The propagation view places every artwork that carries a detail at x = its year and
y = its artist (or collection), and joins confirmed links with lines, so a motif's
path from workshop to workshop reads left to right. Artworks of one row and year are
spread a little apart vertically so none hides another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from db.records import ImageRecord, Link

ROW_BY = ("artist", "collection")
UNKNOWN_ROW = "(unknown)"


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


def timeline_layout(images: Sequence[ImageRecord], links: Sequence[Link], row_by: str = "artist",
                    spread: float = 0.25) -> TimelineLayout:
    """Positions of ``images`` on the timeline and the segments of ``links`` among them.

    Args:
        row_by: ``artist`` or ``collection``.
        spread: how far apart (in rows) artworks of one row and year are drawn.

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
    for link in sorted(links, key=lambda lk: lk.link_id):
        ia, ib = where.get(link.image_a), where.get(link.image_b)
        if ia is None or ib is None:
            continue
        edge_x += [float(x[ia]), float(x[ib]), None]
        edge_y += [float(y[ia]), float(y[ib]), None]
        drawn.append(link.link_id)
    return TimelineLayout(tuple(im.image_id for im in dated), x, y, tuple(rows),
                          tuple(edge_x), tuple(edge_y), tuple(drawn), undated)


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
