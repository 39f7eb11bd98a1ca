import numpy as np
import pytest

from engine.graph import (
    ClusterResult,
    GraphConfig,
    build_clusters,
    iou_matrix,
    overlap_edges,
    two_hop_pairs,
)
from engine.types import IDENTITY_AFFINE, Box, PairMatch, Region

DOG = Box(0, 0, 10, 10)
MILL = Box(50, 50, 70, 70)  # far from DOG in every image


def match(a: str, b: str, score: float = 0.5, box_a: Box = DOG, box_b: Box = DOG) -> PairMatch:
    return PairMatch(a, b, box_a, box_b, IDENTITY_AFFINE, score, n_inliers=20)


def images_of(result: ClusterResult) -> list[tuple[str, ...]]:
    return [c.images for c in result.clusters]


def test_two_separate_motifs_give_two_clusters():
    result = build_clusters([match("a", "b"), match("d", "e"), match("b", "c")])
    assert images_of(result) == [("a", "b", "c"), ("d", "e")]
    assert [c.cluster_id for c in result.clusters] == [0, 1]
    assert result.match_cluster == (0, 1, 0)
    # b's box is shared by two matches: one region, not two.
    assert len(result.clusters[0].regions) == 3


def test_two_details_in_one_image_stay_apart():
    # b holds a dog copied from a and a windmill copied from c, far apart: two details.
    result = build_clusters([match("a", "b"), match("b", "c", box_a=MILL, box_b=MILL)])
    assert images_of(result) == [("a", "b"), ("b", "c")]
    assert Region("b", MILL) in result.clusters[1].regions


@pytest.mark.parametrize(("shift", "threshold", "joined"), [
    (2.5, 0.5, True),  # IoU 0.6 > 0.5
    (5.0, 0.5, False),  # IoU 1/3
    (5.0, 0.3, True),
])
def test_overlap_iou_threshold(shift, threshold, joined):
    moved = Box(shift, 0, 10 + shift, 10)
    matches = [match("a", "b"), match("b", "c", box_a=moved)]
    result = build_clusters(matches, GraphConfig(overlap_iou=threshold))
    assert len(result.clusters) == (1 if joined else 2)


def chain_through_weak_link() -> list[PairMatch]:
    """Two strong triples a1-a2-a3 and b1-b2-b3 joined only by a weak a3-b1 match."""
    return [
        match("a1", "a2", 0.5), match("a2", "a3", 0.6),
        match("b1", "b2", 0.5), match("b2", "b3", 0.4),
        match("a3", "b1", 0.01),
    ]


def test_weak_link_merges_in_paper_mode():
    result = build_clusters(chain_through_weak_link(), GraphConfig(mode="paper"))
    assert images_of(result) == [("a1", "a2", "a3", "b1", "b2", "b3")]
    assert result.match_cluster == (0, 0, 0, 0, 0)


def test_weak_link_dropped_by_strict_score():
    result = build_clusters(chain_through_weak_link(), GraphConfig(mode="strict", strict_min_score=0.03))
    assert images_of(result) == [("a1", "a2", "a3"), ("b1", "b2", "b3")]
    assert result.match_cluster == (0, 0, 1, 1, -1)
    # min_score still applies in strict mode when it is the higher of the two.
    higher = GraphConfig(mode="strict", min_score=0.45, strict_min_score=0.03)
    assert build_clusters(chain_through_weak_link(), higher).match_cluster == (0, 0, 1, -1, -1)


def test_weak_link_cut_by_strict_size():
    config = GraphConfig(mode="strict", strict_min_score=0.0, max_component_images=3)
    result = build_clusters(chain_through_weak_link(), config)
    assert images_of(result) == [("a1", "a2", "a3"), ("b1", "b2", "b3")]
    assert result.match_cluster == (0, 0, 1, 1, -1)


def test_strict_split_recurses_and_drops_orphans():
    # Chain a-b (0.9), b-c (0.1), c-d (0.8), d-e (0.2) with a cap of 2 images: cutting 0.1
    # leaves {a,b} and {c,d,e}; {c,d,e} is cut at 0.2, leaving {c,d} and an orphan e.
    matches = [match("a", "b", 0.9), match("b", "c", 0.1), match("c", "d", 0.8), match("d", "e", 0.2)]
    result = build_clusters(matches, GraphConfig(mode="strict", strict_min_score=0.0, max_component_images=2))
    assert images_of(result) == [("a", "b"), ("c", "d")]
    assert result.match_cluster == (0, -1, 1, -1)
    # The same chain stays whole under a cap it fits in.
    whole = build_clusters(matches, GraphConfig(mode="strict", strict_min_score=0.0, max_component_images=5))
    assert images_of(whole) == [("a", "b", "c", "d", "e")]


def test_strict_never_cuts_overlap_edges():
    # In x, DOG (matched to y, strong) and `near` (IoU 0.6, matched weakly to z) are one
    # spot; z-w is strong. A cap of 2 images cuts the weak match, and `near` stays with DOG.
    near = Box(2.5, 0, 12.5, 10)
    matches = [match("x", "y", 0.9), match("x", "z", 0.1, box_a=near), match("z", "w", 0.8)]
    config = GraphConfig(mode="strict", strict_min_score=0.0, max_component_images=2)
    result = build_clusters(matches, config)
    assert images_of(result) == [("x", "y"), ("w", "z")]
    assert set(result.clusters[0].regions) == {Region("x", DOG), Region("x", near), Region("y", DOG)}
    assert result.match_cluster == (0, -1, 1)


def test_min_score_drops_matches_in_paper_mode():
    result = build_clusters([match("a", "b", 0.5), match("c", "d", 0.01)], GraphConfig(min_score=0.02))
    assert images_of(result) == [("a", "b")]
    assert result.match_cluster == (0, -1)


def test_self_match_is_a_cluster_of_one_image():
    result = build_clusters([match("a", "a", 0.5, DOG, MILL)])
    assert images_of(result) == [("a",)]
    assert set(result.clusters[0].regions) == {Region("a", DOG), Region("a", MILL)}


def test_empty_input():
    result = build_clusters([])
    assert result.clusters == () and result.match_cluster == ()
    only_weak = build_clusters([match("a", "b", 0.001)], GraphConfig(mode="strict"))
    assert only_weak.clusters == () and only_weak.match_cluster == (-1,)


def test_bad_config_raises():
    with pytest.raises(ValueError, match="mode"):
        GraphConfig(mode="loose")
    with pytest.raises(ValueError, match="overlap_iou"):
        GraphConfig(overlap_iou=1.5)
    with pytest.raises(ValueError, match="max_component_images"):
        GraphConfig(max_component_images=1)


def test_iou_matrix_and_overlap_edges_known_answer():
    boxes = np.array([[0, 0, 10, 10], [2.5, 0, 12.5, 10], [5, 0, 15, 10], [0, 0, 10, 10]], dtype=float)
    iou = iou_matrix(boxes)
    assert iou[0, 1] == pytest.approx(0.6)
    assert iou[0, 2] == pytest.approx(1 / 3)
    assert np.allclose(np.diag(iou), 1.0)
    # Boxes 0-2 in image 0, box 3 in image 1: identical to box 0 but another image.
    edges = overlap_edges(np.array([0, 0, 0, 1]), boxes, 0.5)
    assert sorted(map(tuple, edges.tolist())) == [(0, 1), (1, 2)]
    assert overlap_edges(np.zeros(0, dtype=int), np.zeros((0, 4)), 0.5).shape == (0, 2)


def test_overlap_edges_chunked_equals_whole():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(40, 2))
    boxes = np.concatenate([xy, xy + 20], axis=1)
    image = rng.integers(0, 3, size=40)
    whole = {tuple(e) for e in overlap_edges(image, boxes, 0.3).tolist()}
    chunked = {tuple(e) for e in overlap_edges(image, boxes, 0.3, chunk=3).tolist()}
    assert whole == chunked and len(whole) > 0



def test_two_hop_pairs_chain_through_the_shared_region():
    # A-B and B-C on B's same spot: (A, C) is a candidate; B-D lands elsewhere in B.
    found = [match("A", "B", 0.5), match("B", "C", 0.3), match("B", "D", 0.9, box_a=MILL)]
    assert two_hop_pairs(found) == [("A", "C", 0.3)]


def test_two_hop_pairs_leave_out_linked_pairs_and_self_chains():
    found = [match("A", "B"), match("B", "C"), match("A", "C"), match("B", "A")]
    assert two_hop_pairs(found) == []


def test_two_hop_pairs_keep_each_images_strongest():
    # Hub H holds one detail matched in five images: ten candidate pairs among them.
    spokes = [match("H", name, score) for name, score in zip("PQRST", (0.9, 0.8, 0.7, 0.6, 0.5))]
    every = two_hop_pairs(spokes, per_image=10)
    assert len(every) == 10 and [s for *_, s in every] == sorted((s for *_, s in every), reverse=True)
    assert every[0] == ("P", "Q", 0.8)
    kept = two_hop_pairs(spokes, per_image=1)
    # Each image keeps its single strongest pair (a pair stays when either image keeps it).
    assert {(a, b) for a, b, _ in kept} == {("P", "Q"), ("P", "R"), ("P", "S"), ("P", "T")}
    assert two_hop_pairs(spokes, per_image=0) == []


def test_two_hop_pairs_follow_the_overlap_threshold():
    shifted = Box(DOG.x0 + 5, DOG.y0, DOG.x1 + 5, DOG.y1)  # IoU 1/3 with DOG
    found = [match("A", "B", box_b=DOG), match("B", "C", box_a=shifted)]
    assert two_hop_pairs(found, overlap_iou=0.5) == []
    assert [p[:2] for p in two_hop_pairs(found, overlap_iou=0.3)] == [("A", "C")]
