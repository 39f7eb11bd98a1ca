"""What the map page plots: the 2D map's points joined with metadata, clusters and verdicts.

A map (`db.records.MapPoint`) holds images (``item_id`` = image id) or detail regions
(``item_id`` = ``"<link_id>:a"`` / ``"<link_id>:b"``, the two ends of a link, as written
by discovery). Colours are computed here as plain arrays; the page only draws them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from db.records import UNREVIEWED, ImageRecord, Link, MapPoint, StoredCluster
from hitl.plot_text import plot_lines

COLOUR_BY = ("cluster", "group", "artist", "date", "medium", "status")
"""What the points can be coloured by; ``date`` is continuous (the year), the rest categories."""

NO_LINKS = "no links"
NONE_LABEL = "(none)"
OTHER_LABEL = "(other)"
_STATUS_RANK = ("confirm", UNREVIEWED, "unsure", "reject")  # an image shows its most telling link


@dataclass(frozen=True)
class MapTable:
    """Columns of a map, one row per point; ``link_ids`` is -1 for image points."""

    kind: str
    item_ids: tuple[str, ...]
    image_ids: tuple[str, ...]
    link_ids: np.ndarray  # (N,) int64
    x: np.ndarray  # (N,) float64
    y: np.ndarray  # (N,) float64
    group: np.ndarray  # (N,) int64, -1: none

    def __len__(self) -> int:
        return len(self.item_ids)


def map_table(points: Sequence[MapPoint], links: Mapping[int, Link] | None = None) -> MapTable:
    """Columns of ``points``; region points need ``links`` (id -> link) to find their image.

    Raises:
        ValueError: a region id that is not ``<link_id>:a|b``, or mixed kinds.
    """
    kinds = {p.kind for p in points}
    if len(kinds) > 1:
        raise ValueError(f"a map holds one kind of point, got {sorted(kinds)}")
    kind = kinds.pop() if kinds else "image"
    if kind == "image":
        images = tuple(p.item_id for p in points)
        link_ids = np.full(len(points), -1, dtype=np.int64)
    else:
        link_ids = np.array([_region_link(p.item_id) for p in points], dtype=np.int64)
        images = tuple(_region_image(p.item_id, links or {}) for p in points)
    return MapTable(kind, tuple(p.item_id for p in points), images, link_ids,
                    np.array([p.x for p in points], dtype=np.float64),
                    np.array([p.y for p in points], dtype=np.float64),
                    np.array([p.group for p in points], dtype=np.int64))


def image_statuses(links: Iterable[Link]) -> dict[str, str]:
    """Image id -> the most telling status among its links: confirm > unreviewed > unsure > reject."""
    best: dict[str, int] = {}
    for link in links:
        rank = _STATUS_RANK.index(link.status) if link.status in _STATUS_RANK else len(_STATUS_RANK)
        for image in (link.image_a, link.image_b):
            best[image] = min(best.get(image, rank), rank)
    return {image: _STATUS_RANK[r] for image, r in best.items()}


def image_clusters(clusters: Sequence[StoredCluster]) -> dict[str, int]:
    """Image id -> the largest cluster it belongs to (clusters come largest first)."""
    found: dict[str, int] = {}
    for cluster in clusters:
        for image in cluster.images:
            found.setdefault(image, cluster.cluster_id)
    return found


def colour_values(table: MapTable, by: str, images: Mapping[str, ImageRecord],
                  statuses: Mapping[str, str] | None = None,
                  clusters: Mapping[str, int] | None = None,
                  link_status: Mapping[int, str] | None = None) -> np.ndarray:
    """The colour column of every point: strings for categories, float years for ``date``.

    Args:
        statuses: image id -> status (`image_statuses`), for image maps.
        clusters: image id -> cluster id (`image_clusters`).
        link_status: link id -> status, for region maps (a region has its link's status).

    Raises:
        ValueError: ``by`` not in `COLOUR_BY`.
    """
    if by not in COLOUR_BY:
        raise ValueError(f"colour by one of {COLOUR_BY}, not {by!r}")
    recs = [images.get(i) for i in table.image_ids]
    if by == "date":
        return np.array([r.year if r is not None and r.year is not None else np.nan for r in recs],
                        dtype=np.float64)
    if by == "group":
        return np.array([str(g) if g >= 0 else NONE_LABEL for g in table.group], dtype=object)
    if by == "cluster":
        found = clusters or {}
        return np.array([f"#{found[i]}" if i in found else NONE_LABEL for i in table.image_ids],
                        dtype=object)
    if by == "status":
        if table.kind == "region":
            found = link_status or {}
            return np.array([found.get(int(k), UNREVIEWED) for k in table.link_ids], dtype=object)
        found = statuses or {}
        return np.array([found.get(i, NO_LINKS) for i in table.image_ids], dtype=object)
    return np.array([(getattr(r, by) or NONE_LABEL) if r is not None else NONE_LABEL
                     for r in recs], dtype=object)


def categories(values: np.ndarray, max_categories: int = 12) -> list[tuple[str, np.ndarray]]:
    """Point indices per category, most frequent first; the long tail pooled as ``(other)``.

    One plotly trace per category keeps the legend readable and the WebGL draw fast.
    ``(none)`` and ``(other)`` always come last.
    """
    counts = Counter(str(v) for v in values)
    named = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
             if c != NONE_LABEL]
    keep, rest = named[:max_categories], set(named[max_categories:])
    labels = np.array([str(v) for v in values], dtype=object)
    out = [(c, np.flatnonzero(labels == c)) for c in keep]
    if rest:
        out.append((OTHER_LABEL, np.flatnonzero(np.isin(labels, list(rest)))))
    if NONE_LABEL in counts:
        out.append((NONE_LABEL, np.flatnonzero(labels == NONE_LABEL)))
    return out


STATUS_COLOURS = {"confirm": "#2a9d48", "reject": "#e63946", "unsure": "#f4a300",
                  UNREVIEWED: "#1d78e6", NO_LINKS: "#c8c8c8"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39",
           "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")
"""Twenty distinct colours (Tableau 10 and darker companions) for named categories."""
MUTED = {NONE_LABEL: "#d9d9d9", OTHER_LABEL: "#a6a6a6"}


def category_colours(names: Sequence[str], by: str) -> dict[str, str]:
    """A fixed colour per category: meaningful ones for review status, grey for none/other.

    Raises:
        ValueError: more named categories than `PALETTE` holds.
    """
    named = [n for n in names if n not in MUTED]
    if by == "status":
        return {n: STATUS_COLOURS.get(n, MUTED.get(n, "#000000")) for n in names}
    if len(named) > len(PALETTE):
        raise ValueError(f"{len(named)} categories, but only {len(PALETTE)} colours: "
                         f"pool the rest with categories(max_categories=...)")
    colours = dict(zip(named, PALETTE))
    return {n: colours.get(n) or MUTED[n] for n in names}


def hover_texts(table: MapTable, images: Mapping[str, ImageRecord]) -> list[str]:
    """Escaped hover text per point: title, artist, date (plotly renders some HTML)."""
    out = []
    for image_id in table.image_ids:
        rec = images.get(image_id)
        parts = ([rec.title or rec.path.rsplit("/", 1)[-1], rec.artist, rec.date]
                 if rec is not None else [image_id])
        out.append(plot_lines(parts))
    return out


def _region_link(item_id: str) -> int:
    link, _, side = item_id.partition(":")
    if side not in ("a", "b") or not link.isdigit():
        raise ValueError(f"region map point {item_id!r} is not '<link_id>:a' or '<link_id>:b'")
    return int(link)


def _region_image(item_id: str, links: Mapping[int, Link]) -> str:
    link = links.get(_region_link(item_id))
    if link is None:
        return ""
    return link.image_a if item_id.endswith(":a") else link.image_b


def kept_selection(previous: Sequence[int], previous_view: tuple[str, str] | None,
                   found: Sequence[int], view: tuple[str, str]) -> list[int]:
    """The map's chosen points after a rerun (indices into the `MapTable`).

    ``view`` is ``(kind, colour_by)``. Recolouring redraws the chart, which clears the
    chart's own selection, but the rows of the table stay the same, so the previous
    choice is kept; a new kind of point (images / regions) is a new table and starts
    empty. Otherwise what the chart reports now is the choice.
    """
    if found or previous_view is None:
        return sorted(set(found))
    if previous_view[0] != view[0]:
        return []
    if previous_view[1] != view[1]:
        return list(previous)
    return []


def links_among(links: Iterable[Link], image_ids: Iterable[str]) -> list[Link]:
    """The links with both ends among the chosen images (a lasso's batch), by link id."""
    chosen = set(image_ids)
    return sorted((lk for lk in links if lk.image_a in chosen and lk.image_b in chosen),
                  key=lambda lk: lk.link_id)


def judge_unreviewed(store, links: Iterable[Link], verdict: str, annotator: str) -> list[int]:
    """One verdict per still-unreviewed link of a batch (others' judgements stand); their ids."""
    return [store.add_verdict(lk.link_id, verdict, annotator, note="map selection")
            for lk in links if lk.status == UNREVIEWED]
