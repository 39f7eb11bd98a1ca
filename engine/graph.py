"""The correspondence graph (paper §4.3): verified matches become repeated details.

Nodes are matched regions: every :class:`PairMatch` gives two, ``box_a`` in image A and
``box_b`` in image B, joined by a *match edge*. Regions of one image that overlap with
IoU above ``overlap_iou`` (0.5 in the paper) are joined by an *overlap edge*. Each
connected component is one detail repeated across the images it touches.

Two modes:

``paper``
    Exactly the above, after dropping matches below ``min_score``. Faithful, and right
    for small collections or a high score threshold.
``strict``
    Guards against the known failure of one giant component grown through weak links.
    Matches below ``strict_min_score`` (or ``min_score`` if higher) are dropped; then a component touching more than
    ``max_component_images`` images is split like a single-linkage dendrogram cut
    top-down: its match edges are removed weakest first until it falls apart, and each
    piece still too large is split again the same way. Overlap edges are never cut: two
    boxes on the same spot of one image are one detail (and since they join regions of
    one image only, every piece can still be brought under the cap). Only pieces that
    still hold at least one match (both of its regions) are clusters; a region whose
    every match was cut belongs to none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from engine.types import Box, Cluster, PairMatch, Region

MODES = ("paper", "strict")


@dataclass(frozen=True)
class GraphConfig:
    mode: str = "paper"  # "paper" (§4.3 as published) or "strict" (no giant components)
    overlap_iou: float = 0.5  # paper §4.3: same-image regions with IoU above this are one node group
    min_score: float = 0.0  # paper mode: matches scoring below this are ignored
    strict_min_score: float = 0.03  # strict mode: the authors' stricter LTLL clustering threshold
    max_component_images: int = 50  # strict mode: larger components are split at their weakest matches

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"graph mode must be one of {MODES}, got {self.mode!r}")
        if not 0.0 <= self.overlap_iou < 1.0:
            raise ValueError(f"overlap_iou must be in [0, 1), got {self.overlap_iou}")
        if self.max_component_images < 2:
            raise ValueError(f"max_component_images must be >= 2, got {self.max_component_images}")

    @property
    def score_threshold(self) -> float:
        return max(self.min_score, self.strict_min_score) if self.mode == "strict" else self.min_score


@dataclass(frozen=True)
class ClusterResult:
    """Clusters, largest first, and where each input match went.

    Attributes:
        clusters: ``cluster_id`` = position, ordered by images, then regions, descending.
        match_cluster: per input match, the id of the cluster holding both its regions, or
            -1 when the match was dropped (score) or cut (strict mode).
    """

    clusters: tuple[Cluster, ...]
    match_cluster: tuple[int, ...]


def iou_matrix(boxes: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """Pairwise IoU of boxes.

    Args:
        boxes: (n, 4) ``x0, y0, x1, y1``; others: (m, 4), default ``boxes``.

    Returns:
        (n, m) IoU (1 on the diagonal when ``others`` is omitted).
    """
    others = boxes if others is None else others
    a, b = boxes[:, None, :], others[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_b = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area_a[:, None] + area_b[None] - inter
    return inter / np.maximum(union, 1e-12)


def overlap_edges(image_index: np.ndarray, boxes: np.ndarray, threshold: float,
                  chunk: int = 2048) -> np.ndarray:
    """Edges between regions of the same image whose IoU exceeds ``threshold``.

    Args:
        image_index: (n,) integer image of each region; boxes: (n, 4).
        chunk: rows per IoU block, so an image matched thousands of times stays in memory.

    Returns:
        (E, 2) node index pairs, i < j within each image's order.
    """
    order = np.argsort(image_index, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(image_index[order]) != 0])
    edges = [np.zeros((0, 2), dtype=np.int64)]
    for members in np.split(order, starts[1:]):  # one IoU matrix per image
        for r0 in range(0, len(members) - 1, chunk):
            rows = members[r0 : r0 + chunk]
            iou = iou_matrix(boxes[rows], boxes[members])  # (rows, members)
            i, j = np.nonzero(iou > threshold)
            upper = j > i + r0
            edges.append(np.stack([rows[i[upper]], members[j[upper]]], axis=1))
    return np.concatenate(edges)


def _components(n_nodes: int, edges: np.ndarray) -> np.ndarray:
    """(n,) component label of every node, from (E, 2) undirected edges."""
    adjacency = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    return connected_components(adjacency, directed=False)[1]


def build_clusters(matches: Sequence[PairMatch], config: GraphConfig = GraphConfig()) -> ClusterResult:
    """Repeated details from verified matches (paper §4.3, see the module doc for modes).

    Node ``2m`` is ``box_a`` of match ``m`` and node ``2m + 1`` its ``box_b``.
    """
    n_matches = len(matches)
    kept = np.array([m.score >= config.score_threshold for m in matches], dtype=bool)  # NaN: dropped
    if not kept.any():
        return ClusterResult((), (-1,) * n_matches)
    regions = [r for m in matches for r in (Region(m.image_a, m.box_a), Region(m.image_b, m.box_b))]
    image_index = np.unique([r.image_id for r in regions], return_inverse=True)[1].reshape(-1)
    boxes = region_box_array([r.box for r in regions])
    alive = np.repeat(kept, 2)  # nodes of dropped matches take no part
    nodes = np.flatnonzero(alive)
    overlaps = nodes[overlap_edges(image_index[nodes], boxes[nodes], config.overlap_iou)]
    match_nodes = np.flatnonzero(kept)
    match_edges = np.stack([2 * match_nodes, 2 * match_nodes + 1], axis=1)
    if config.mode == "paper":
        labels = _components(len(regions), np.concatenate([overlaps, match_edges]))
    else:
        scores = np.array([matches[m].score for m in match_nodes], dtype=np.float64)
        labels = _split_components(len(regions), overlaps, match_edges, scores, image_index,
                                   config.max_component_images)
    return _collect(regions, labels, alive, n_matches)


def _collect(regions: list[Region], labels: np.ndarray, alive: np.ndarray, n_matches: int) -> ClusterResult:
    """Clusters from node labels: components holding both ends of some live match."""
    ends = labels.reshape(n_matches, 2)
    whole = alive[::2] & (ends[:, 0] == ends[:, 1])
    members: dict[int, set[Region]] = {}
    for node in np.flatnonzero(alive & np.isin(labels, ends[whole, 0])):
        members.setdefault(int(labels[node]), set()).add(regions[node])

    def rank(label: int) -> tuple:
        group = members[label]
        first = min((r.image_id, *r.box.as_list()) for r in group)
        return (-len({r.image_id for r in group}), -len(group), first)

    order = sorted(members, key=rank)
    new_id = {label: cid for cid, label in enumerate(order)}
    clusters = tuple(
        Cluster(cid, tuple(sorted(members[label], key=lambda r: (r.image_id, *r.box.as_list()))))
        for cid, label in enumerate(order)
    )
    match_cluster = tuple(new_id[int(ends[m, 0])] if whole[m] else -1 for m in range(n_matches))
    return ClusterResult(clusters, match_cluster)


def _split_components(n_nodes: int, overlaps: np.ndarray, match_edges: np.ndarray, scores: np.ndarray,
                      image_index: np.ndarray, max_images: int) -> np.ndarray:
    """Node labels after the strict split (module doc): a top-down single-linkage cut.

    Leaves are the groups joined by overlap edges (one image each). Walking the
    dendrogram from each root, a node is kept when it touches at most ``max_images``
    images (or is a leaf), else its two children are visited.
    """
    leaf_of = _components(n_nodes, overlaps)
    leaf_images: list[set[int]] = [set() for _ in range(int(leaf_of.max()) + 1)]
    for leaf, image in zip(leaf_of.tolist(), image_index.tolist()):
        leaf_images[leaf].add(image)
    leaf_edges = leaf_of[match_edges]  # (E, 2) match edges between leaves
    children, n_images, roots = _dendrogram(leaf_images, leaf_edges, scores)
    kept_of_leaf = np.empty(len(leaf_images), dtype=np.int64)
    stack = list(roots)
    while stack:
        node = stack.pop()
        left, right = children[node]
        if left >= 0 and n_images[node] > max_images:
            stack += [left, right]
        else:
            kept_of_leaf[_leaves_under(node, children)] = node
    return kept_of_leaf[leaf_of]


def _dendrogram(leaf_images: list[set[int]], edges: np.ndarray, scores: np.ndarray
                ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Single-linkage dendrogram over leaves by Kruskal, strongest edge first.

    Its merges are exactly the splits met when removing edges weakest first, so cutting
    it top-down is the iterative weakest-edge removal, without recomputing components.

    Returns:
        children (-1, -1 for leaves) and image count per dendrogram node, and the roots.
    """
    n_leaves = len(leaf_images)
    parent = list(range(n_leaves))  # union-find over leaves
    head = list(range(n_leaves))  # dendrogram node heading each union-find root
    images = list(leaf_images)  # image set per union-find root, merged small into large
    children: list[tuple[int, int]] = [(-1, -1)] * n_leaves
    n_images = [len(s) for s in leaf_images]

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e in np.lexsort((np.arange(len(scores)), -scores)).tolist():  # ties by input order
        a, b = find(int(edges[e, 0])), find(int(edges[e, 1]))
        if a == b:
            continue
        if len(images[a]) < len(images[b]):
            a, b = b, a
        images[a] |= images[b]
        parent[b] = a
        children.append((head[a], head[b]))
        n_images.append(len(images[a]))
        head[a] = len(children) - 1
    roots = [head[r] for r in range(n_leaves) if find(r) == r]
    return children, n_images, roots


def _leaves_under(node: int, children: list[tuple[int, int]]) -> list[int]:
    leaves, stack = [], [node]
    while stack:
        x = stack.pop()
        if children[x][0] < 0:
            leaves.append(x)
        else:
            stack += list(children[x])
    return leaves


def region_box_array(boxes: Sequence[Box]) -> np.ndarray:
    """(n, 4) float64 array of boxes, for :func:`iou_matrix`."""
    return np.array([b.as_list() for b in boxes], dtype=np.float64).reshape(-1, 4)


def two_hop_pairs(matches: Sequence[PairMatch], overlap_iou: float = 0.5,
                  per_image: int = 10) -> list[tuple[str, str, float]]:
    """Image pairs two match edges apart in the correspondence graph, to verify next.

    A detail copied into several images is found as a chain: A's region matches B's, and
    a region of B on the same spot (an overlap edge, IoU above ``overlap_iou``) matches
    C's; the pair (A, C) is then worth verifying even when the shortlist missed it, which
    happens across sources, where a strong change of medium pushes the partner far down
    an image's neighbours. Each candidate's strength is its weaker link's score; every
    image keeps its ``per_image`` strongest candidates (a pair stays when either image
    keeps it), so the extra verification is at most ``per_image`` pairs per image.

    Returns:
        ``(image_a, image_b, strength)``, ``image_a < image_b``, strongest first; pairs
        already joined by one of ``matches`` are left out.
    """
    if len(matches) < 2 or per_image < 1:
        return []
    regions = [r for m in matches for r in (Region(m.image_a, m.box_a), Region(m.image_b, m.box_b))]
    names, image_index = np.unique([r.image_id for r in regions], return_inverse=True)
    image_index = image_index.reshape(-1)
    boxes = region_box_array([r.box for r in regions])
    edges = overlap_edges(image_index, boxes, overlap_iou)
    if not len(edges):
        return []
    other = image_index[np.arange(len(regions)) ^ 1]  # the far end of each node's match: 2m <-> 2m + 1
    a, b = other[edges[:, 0]], other[edges[:, 1]]
    scores = np.array([m.score for m in matches], dtype=np.float64)
    strength = np.minimum(scores[edges[:, 0] // 2], scores[edges[:, 1] // 2])
    keep = a != b
    lo, hi, strength = np.minimum(a, b)[keep], np.maximum(a, b)[keep], strength[keep]
    linked = np.unique(np.sort(image_index.reshape(-1, 2), axis=1) @ np.array([len(names), 1]))
    code = lo * len(names) + hi
    fresh = ~np.isin(code, linked)
    code, strength = code[fresh], strength[fresh]
    if not len(code):
        return []
    # One entry per pair, at its strongest chain.
    order = np.lexsort((-strength, code))
    first = np.r_[True, np.diff(code[order]) != 0]
    code, strength = code[order][first], strength[order][first]
    lo, hi = code // len(names), code % len(names)
    keep = _top_per_image(lo, hi, strength, len(names), per_image)
    order = np.flatnonzero(keep)[np.argsort(-strength[keep], kind="stable")]
    return [(str(names[lo[i]]), str(names[hi[i]]), float(strength[i])) for i in order]


def _top_per_image(lo: np.ndarray, hi: np.ndarray, strength: np.ndarray, n_images: int, k: int) -> np.ndarray:
    """(P,) whether each pair is among the ``k`` strongest pairs of either of its images."""
    ends = np.concatenate([lo, hi])
    pair = np.tile(np.arange(len(lo)), 2)
    order = np.lexsort((-np.tile(strength, 2), ends))  # by image, strongest first
    starts = np.searchsorted(ends[order], np.arange(n_images))
    rank = np.arange(len(order)) - starts[ends[order]]
    keep = np.zeros(len(lo), dtype=bool)
    keep[pair[order][rank < k]] = True
    return keep
