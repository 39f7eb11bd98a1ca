"""How good is a discovery run: pairs, shortlist and clusters against annotated motifs.

Ground truth comes from the one-shot annotations (:mod:`engine.evaluate`): every
instance of a motif class (the queries and their targets) is one occurrence of that
motif. Two different images *share a motif* when both hold an instance of the same
class. Images are named as in the annotation file; callers map their image ids to those
names (``image_names``). Empty denominators give 0.0 (scikit-learn's ``zero_division=0``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from engine.evaluate import Instance, Query
from engine.graph import iou_matrix, region_box_array
from engine.types import Box, Cluster, PairMatch, Region

NONE = "none"  # label of a region that overlaps no annotated instance
ImagePair = frozenset[str]


def ground_truth_instances(queries: Sequence[Query]) -> list[tuple[str, Instance]]:
    """Every annotated ``(motif, instance)`` once, queries and targets alike."""
    seen: dict[tuple[str, Instance], None] = {}
    for q in queries:
        for inst in (q.query, *q.targets):
            seen.setdefault((q.motif, inst), None)
    return list(seen)


def ground_truth_pairs(queries: Sequence[Query]) -> set[ImagePair]:
    """Pairs of different images that share at least one motif class."""
    images_of: dict[str, set[str]] = {}
    for motif, inst in ground_truth_instances(queries):
        images_of.setdefault(motif, set()).add(inst.image)
    return {frozenset(p) for images in images_of.values() for p in combinations(sorted(images), 2)}


def _name(image_id: str, image_names: Mapping[str, str] | None) -> str:
    return image_names.get(image_id, image_id) if image_names else image_id


def matched_pairs(matches: Iterable[PairMatch], image_names: Mapping[str, str] | None = None) -> set[ImagePair]:
    """Image pairs linked by at least one match (self-matches left out), by annotation name."""
    pairs = {frozenset((_name(m.image_a, image_names), _name(m.image_b, image_names))) for m in matches}
    return {p for p in pairs if len(p) == 2}


def _as_pairs(pairs: Iterable[Iterable[str]]) -> set[ImagePair]:
    # Pairs of one image (a detail repeated within an image) are not image pairs.
    return {p for p in map(frozenset, pairs) if len(p) == 2}


def pair_precision_recall(predicted: Iterable[Iterable[str]], truth: set[ImagePair]) -> tuple[float, float]:
    """Precision and recall of discovered image pairs against pairs sharing a motif.

    Args:
        predicted: image pairs (any two-element iterables, order ignored).
        truth: from :func:`ground_truth_pairs`.
    """
    predicted = _as_pairs(predicted)
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    return precision, recall


def shortlist_recall(candidate_pairs: Iterable[Iterable[str]], truth: set[ImagePair]) -> float:
    """Share of ground-truth pairs that the shortlist hands to verification."""
    return pair_precision_recall(candidate_pairs, truth)[1]


def located_recall(best: np.ndarray, copies: Sequence[tuple[int, int, np.ndarray, np.ndarray]], k: int,
                   hubness: bool = False) -> float:
    """Shortlist recall at ``k`` of an oracle that knows where each copy is.

    A reference for a shortlist that scores image pairs from feature cells: image a
    describes itself by its copy's cells alone, ranks the other images by the mean of
    those cells' best cosine in each (``best``), and the pair is found when b ranks
    among a's first ``k`` or a among b's. A shortlist that does not know where the copies
    are seldom beats it: it shows roughly how far better scoring of the same cells can go
    (a reference, not a strict bound).

    Args:
        best: (M, N) each cell's best cosine in each image (:func:`engine.shortlist.cell_image_best`),
            -inf for its own image.
        copies: per ground-truth pair ``(a, b, cells_a, cells_b)``: image indices and the
            rows of ``best`` that are a's and b's cells of the copy they share.
        k: neighbours per image.
        hubness: subtract each cell's mean over its 10 best images, then each image's mean
            over all cells (CSLS-style), so images near to everything rank lower.

    Returns:
        Share of ``copies`` found (0.0 when empty).
    """
    best = np.asarray(best, dtype=np.float64)
    if hubness:
        finite = np.where(np.isfinite(best), best, np.nan)
        top = -np.sort(-np.nan_to_num(finite, nan=-np.inf), axis=1)[:, : min(10, best.shape[1])]
        finite = finite - np.nanmean(np.where(np.isfinite(top), top, np.nan), axis=1, keepdims=True)
        finite = finite - np.nanmean(finite, axis=0, keepdims=True)
        best = np.where(np.isnan(finite), -np.inf, finite)
    found = 0
    for a, b, cells_a, cells_b in copies:
        hit = False
        for x, y, cells in ((a, b, cells_a), (b, a, cells_b)):
            if len(cells) == 0:
                continue
            score = best[cells].mean(axis=0)
            score[x] = -np.inf
            hit |= int((score > score[y]).sum()) < k
        found += hit
    return found / len(copies) if copies else 0.0


def region_labels(regions: Iterable[Region], queries: Sequence[Query], iou: float = 0.3,
                  image_names: Mapping[str, str] | None = None) -> dict[Region, str]:
    """Motif of the annotated instance each region overlaps best with IoU > ``iou``, else ``"none"``.

    IoU 0.3 is the paper's detection criterion (§5.2).
    """
    truth_by_image: dict[str, list[tuple[str, Instance]]] = {}
    for motif, inst in ground_truth_instances(queries):
        truth_by_image.setdefault(inst.image, []).append((motif, inst))
    regions_by_image: dict[str, list[Region]] = {}
    for r in set(regions):
        regions_by_image.setdefault(_name(r.image_id, image_names), []).append(r)
    labels: dict[Region, str] = {}
    for image, group in regions_by_image.items():  # one IoU matrix per image
        truth = truth_by_image.get(image, [])
        if not truth:
            labels.update(dict.fromkeys(group, NONE))
            continue
        overlap = iou_matrix(region_box_array([r.box for r in group]),
                             region_box_array([inst.box for _, inst in truth]))  # (regions, instances)
        best = overlap.argmax(axis=1)
        hit = overlap[np.arange(len(group)), best] > iou
        labels.update({r: truth[b][0] if h else NONE for r, b, h in zip(group, best.tolist(), hit.tolist())})
    return labels


def cluster_purity(clusters: Sequence[Cluster], labels: Mapping[Region, str], count_none: bool = False) -> float:
    """Share of clustered regions that carry their cluster's majority motif.

    purity = sum over clusters of (count of the cluster's most frequent label) / (all
    regions of all clusters). By default ``"none"`` never counts as a majority: a cluster
    of unannotated regions (a repeated frame, background) is wholly impure. With
    ``count_none`` it is a label like any other. Regions missing from ``labels`` are ``"none"``.
    """
    total = majority = 0
    for cluster in clusters:
        counts = Counter(labels.get(r, NONE) for r in cluster.regions)
        total += len(cluster.regions)
        if not count_none:
            counts.pop(NONE, None)
        majority += max(counts.values(), default=0)
    return majority / total if total else 0.0


TEMPLATE = "template"  # label of a region lying mostly on a source's template (script, ornament)


@dataclass(frozen=True)
class LinkQuality:
    """Links judged against motif instances *and* template regions (script, borders, bars).

    A link is true when both its regions overlap (IoU > 0.3) instances of the same motif;
    it lies on template when either region lies mostly (by area) on template regions, or
    (given the image sizes) covers most of its page: a page matched to a page by layout.
    Pair precision counts a linked image pair as right only if one of its links is true,
    so a pair of images that share a motif but are linked by their script is wrong.
    ``recall_by`` gives pair recall over named subsets of the ground-truth pairs.
    ``n_repeat`` counts links joining two copies of one *unannotated* element (a demo's
    distractor pasted twice): right as discovery, absent from the ground truth.
    """

    n_links: int
    n_true: int
    n_repeat: int
    n_template: int
    link_precision: float
    repeat_precision: float  # (true + repeat) / links
    template_share: float
    pair_precision: float
    pair_recall: float
    recall_by: dict[str, float]
    # Pairs right if one of their links is true or joins one unannotated element's copies:
    # a pair of images holding the same pasted crop does share a detail.
    repeat_pair_precision: float = 0.0


def template_labels(regions: Iterable[Region], templates: Mapping[str, Sequence[Box]],
                    share: float = 0.5, image_names: Mapping[str, str] | None = None) -> dict[Region, bool]:
    """Whether each region has at least ``share`` of its area on its image's template boxes."""
    out = {}
    for r in set(regions):
        boxes = templates.get(_name(r.image_id, image_names), ())
        if not boxes or r.box.area <= 0:
            out[r] = False
            continue
        x0, y0, x1, y1 = (int(np.floor(r.box.x0)), int(np.floor(r.box.y0)), int(np.ceil(r.box.x1)),
                          int(np.ceil(r.box.y1)))
        covered = np.zeros((max(1, y1 - y0), max(1, x1 - x0)), dtype=bool)  # union, not sum, of overlaps
        for b in boxes:
            covered[max(0, int(b.y0) - y0): max(0, int(np.ceil(b.y1)) - y0),
                    max(0, int(b.x0) - x0): max(0, int(np.ceil(b.x1)) - x0)] = True
        out[r] = covered.mean() >= share
    return out


def link_quality(matches: Sequence[PairMatch], queries: Sequence[Query], templates: Mapping[str, Sequence[Box]],
                 subsets: Mapping[str, set[ImagePair]] | None = None,
                 image_names: Mapping[str, str] | None = None, iou: float = 0.3,
                 unannotated: Sequence[Query] = (),
                 image_sizes: Mapping[str, tuple[float, float]] | None = None) -> LinkQuality:
    """Precision and recall of links that land on the copies, and the share landing on template.

    Args:
        matches: the links.
        queries: annotations (motif instances).
        templates: per image name, the boxes of its template (script, ornament...).
        subsets: named sets of ground-truth pairs (e.g. within / across sources) to give
            recall over.
        unannotated: instances of repeated elements outside the ground truth, as queries
            of their own classes (e.g. a demo's distractors).
        image_sizes: (width, height) per image name: a region over half its image's area
            counts as layout (template).
    """
    regions = [r for m in matches for r in (Region(m.image_a, m.box_a), Region(m.image_b, m.box_b))]
    motif = region_labels(regions, [*queries, *unannotated], iou, image_names)
    annotated = {q.motif for q in queries}
    on_template = template_labels(regions, templates, image_names=image_names)
    for r in on_template:
        size = (image_sizes or {}).get(_name(r.image_id, image_names))
        if size and r.box.area >= 0.5 * size[0] * size[1]:
            on_template[r] = True
    true_pairs: set[ImagePair] = set()
    repeat_pairs: set[ImagePair] = set()
    n_true = n_repeat = n_template = 0
    for m in matches:
        ra, rb = Region(m.image_a, m.box_a), Region(m.image_b, m.box_b)
        if motif[ra] != NONE and motif[ra] == motif[rb]:
            if motif[ra] in annotated:
                n_true += 1
                true_pairs.add(frozenset((_name(m.image_a, image_names), _name(m.image_b, image_names))))
            else:
                n_repeat += 1
                repeat_pairs.add(frozenset((_name(m.image_a, image_names), _name(m.image_b, image_names))))
        n_template += bool(on_template[ra] or on_template[rb])
    linked = matched_pairs(matches, image_names)
    truth = ground_truth_pairs(queries)
    found = true_pairs & truth
    n = len(matches)
    recall_by = {name: len(found & pairs) / len(pairs) if pairs else 0.0 for name, pairs in (subsets or {}).items()}
    return LinkQuality(n, n_true, n_repeat, n_template, n_true / n if n else 0.0,
                       (n_true + n_repeat) / n if n else 0.0, n_template / n if n else 0.0,
                       len(true_pairs & linked) / len(linked) if linked else 0.0,
                       len(found) / len(truth) if truth else 0.0, recall_by,
                       len((true_pairs | repeat_pairs) & linked) / len(linked) if linked else 0.0)
