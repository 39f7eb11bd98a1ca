import numpy as np
import pytest

from engine.discovery_metrics import (
    cluster_purity,
    ground_truth_pairs,
    located_recall,
    matched_pairs,
    pair_precision_recall,
    region_labels,
    shortlist_recall,
)
from engine.evaluate import Instance, Query
from engine.types import IDENTITY_AFFINE, Box, Cluster, PairMatch, Region

DOG_BOX = Box(0, 0, 10, 10)
MILL_BOX = Box(50, 50, 70, 70)


def annotations() -> list[Query]:
    """dog in p1, p2, p3 (two queries of the class); windmill in p3 and p4."""
    dogs = [Instance(f"p{i}.jpg", DOG_BOX) for i in (1, 2, 3)]
    mill = [Instance("p3.jpg", MILL_BOX), Instance("p4.jpg", MILL_BOX)]
    return [
        Query("dog", dogs[0], tuple(dogs[1:])),
        Query("dog", dogs[1], (dogs[0], dogs[2])),
        Query("windmill", mill[0], (mill[1],)),
    ]


def fs(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


def test_ground_truth_pairs_known_answer():
    assert ground_truth_pairs(annotations()) == {
        fs("p1.jpg", "p2.jpg"), fs("p1.jpg", "p3.jpg"), fs("p2.jpg", "p3.jpg"), fs("p3.jpg", "p4.jpg"),
    }
    assert ground_truth_pairs([]) == set()


def test_pair_precision_recall_known_answer():
    truth = ground_truth_pairs(annotations())
    predicted = [("p2.jpg", "p1.jpg"), ("p1.jpg", "p4.jpg"), ("p3.jpg", "p4.jpg"), ("p5.jpg", "p5.jpg")]
    precision, recall = pair_precision_recall(predicted, truth)
    assert precision == pytest.approx(2 / 3)  # the self-pair is not an image pair
    assert recall == pytest.approx(2 / 4)
    assert pair_precision_recall([], truth) == (0.0, 0.0)
    assert pair_precision_recall(predicted, set()) == (0.0, 0.0)


def test_shortlist_recall_and_matched_pairs():
    truth = ground_truth_pairs(annotations())
    assert shortlist_recall([("p1.jpg", "p2.jpg"), ("p2.jpg", "p1.jpg")], truth) == pytest.approx(1 / 4)
    matches = [
        PairMatch("id1", "id2", DOG_BOX, DOG_BOX, IDENTITY_AFFINE, 0.1, 10),
        PairMatch("id2", "id1", MILL_BOX, MILL_BOX, IDENTITY_AFFINE, 0.1, 10),
        PairMatch("id3", "id3", DOG_BOX, MILL_BOX, IDENTITY_AFFINE, 0.1, 10),
    ]
    names = {"id1": "p1.jpg", "id2": "p2.jpg", "id3": "p3.jpg"}
    assert matched_pairs(matches, names) == {fs("p1.jpg", "p2.jpg")}


def test_region_labels_use_best_overlap_above_threshold():
    regions = [
        Region("p1.jpg", Box(1, 1, 11, 11)),  # IoU ~0.68 with the dog
        Region("p3.jpg", Box(52, 50, 72, 70)),  # windmill, not the dog in the same image
        Region("p2.jpg", Box(5, 0, 15, 10)),  # IoU 1/3 > 0.3: still the dog
        Region("p2.jpg", Box(6, 0, 16, 10)),  # IoU 0.25: none
        Region("p9.jpg", DOG_BOX),  # image without annotations
    ]
    labels = region_labels(regions, annotations())
    assert [labels[r] for r in regions] == ["dog", "windmill", "dog", "none", "none"]
    renamed = region_labels([Region("id1", DOG_BOX)], annotations(), image_names={"id1": "p1.jpg"})
    assert renamed == {Region("id1", DOG_BOX): "dog"}


def test_cluster_purity_known_answer():
    r = {name: Region(name, DOG_BOX) for name in "abcdefg"}
    labels = {r["a"]: "dog", r["b"]: "dog", r["c"]: "mill", r["d"]: "mill", r["e"]: "mill",
              r["f"]: "none", r["g"]: "none"}
    clusters = [
        Cluster(0, (r["a"], r["b"], r["c"])),  # majority dog: 2 of 3
        Cluster(1, (r["d"], r["e"])),  # pure: 2 of 2
        Cluster(2, (r["f"], r["g"])),  # unannotated: 0 of 2 by default
    ]
    assert cluster_purity(clusters, labels) == pytest.approx(4 / 7)
    assert cluster_purity(clusters, labels, count_none=True) == pytest.approx(6 / 7)
    assert cluster_purity([], labels) == 0.0
    assert cluster_purity(clusters[:1], {}) == 0.0  # unlabelled regions count as none


def test_link_quality_counts_copies_template_and_unannotated_repeats():
    from engine.discovery_metrics import link_quality

    gt = [Query("cat", Instance("a", Box(0, 0, 10, 10)), (Instance("b", Box(50, 50, 60, 60)),)),
          Query("cat", Instance("b", Box(50, 50, 60, 60)), (Instance("a", Box(0, 0, 10, 10)),))]
    helmet = [Query("helmet", Instance("a", Box(80, 80, 90, 90)), (Instance("c", Box(0, 0, 10, 10)),))]
    templates = {"a": [Box(0, 20, 100, 40)], "c": [Box(0, 20, 100, 40)]}
    links = [
        PairMatch("a", "b", Box(0, 0, 10, 10), Box(50, 50, 60, 60), IDENTITY_AFFINE, 0.1, 9),  # the copy
        PairMatch("a", "c", Box(0, 20, 50, 40), Box(10, 20, 60, 40), IDENTITY_AFFINE, 0.1, 9),  # script
        PairMatch("a", "c", Box(80, 80, 90, 90), Box(0, 0, 10, 10), IDENTITY_AFFINE, 0.1, 9),  # helmet twice
    ]
    q = link_quality(links, gt, templates, {"all": {frozenset("ab")}}, unannotated=helmet)
    assert (q.n_links, q.n_true, q.n_repeat, q.n_template) == (3, 1, 1, 1)
    assert q.link_precision == pytest.approx(1 / 3) and q.repeat_precision == pytest.approx(2 / 3)
    assert q.pair_precision == pytest.approx(1 / 2)  # (a, c) is linked, but by no copy
    assert q.repeat_pair_precision == 1.0  # ... by the helmet pasted in both
    no_helmet = link_quality(links[:2], gt, templates, unannotated=helmet)
    assert no_helmet.repeat_pair_precision == pytest.approx(1 / 2)  # (a, c) linked by its script only
    assert q.pair_recall == 1.0 and q.recall_by == {"all": 1.0}
    empty = link_quality([], gt, {})
    assert empty.n_links == 0 and empty.link_precision == 0.0 and empty.pair_recall == 0.0


def test_a_page_matched_to_a_page_counts_as_layout():
    from engine.discovery_metrics import link_quality

    page = PairMatch("a", "b", Box(0, 0, 90, 90), Box(0, 0, 95, 95), IDENTITY_AFFINE, 0.1, 50)
    q = link_quality([page], [], {}, image_sizes={"a": (100, 100), "b": (100, 100)})
    assert q.n_template == 1 and q.template_share == 1.0
    assert link_quality([page], [], {}).n_template == 0


def _cell_bests() -> np.ndarray:
    """Four images of two cells each (rows 2i, 2i+1); image 0's cell 0 and image 2's cell 4
    are a shared copy. Image 1 is near to every cell (a hub): it ranks first for both."""
    inf = -np.inf
    return np.array([
        [inf, .9, .5, .1], [inf, .9, .1, .1],  # image 0: copy cell, other cell
        [.2, inf, .2, .2], [.2, inf, .2, .2],  # image 1
        [.3, .8, inf, .2], [.1, .9, inf, .1],  # image 2: copy cell, other cell
        [.1, .9, .1, inf], [.1, .9, .1, inf],  # image 3
    ])


def test_located_recall_known_answers():
    copy = [(0, 2, np.array([0]), np.array([4]))]
    assert located_recall(_cell_bests(), copy, k=1) == 0.0  # the hub ranks first both ways
    assert located_recall(_cell_bests(), copy, k=2) == 1.0
    # Hubness removed: image 1's column mean (~0.48 above the cells' own means) drops it
    # below the copy's partner in both directions.
    assert located_recall(_cell_bests(), copy, k=1, hubness=True) == 1.0
    # Either direction suffices: image 2's copy cell alone still ranks image 0 second.
    one_way = [(0, 2, np.array([], dtype=int), np.array([4]))]
    assert located_recall(_cell_bests(), one_way, k=2) == 1.0
    assert located_recall(_cell_bests(), one_way, k=1) == 0.0
    assert located_recall(_cell_bests(), [], k=5) == 0.0
