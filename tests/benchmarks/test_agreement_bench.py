"""benchmarks.agreement: which links count as true."""

from benchmarks.agreement import true_links
from engine.evaluate import Instance, Query
from engine.types import IDENTITY_AFFINE, Box, PairMatch

CAT = Query("cat", Instance("a", Box(0, 0, 100, 100)), (Instance("b", Box(200, 200, 300, 300)),))
CUP = Query("cup", Instance("a", Box(300, 0, 400, 100)), (Instance("c", Box(0, 0, 50, 50)),))
HELMET = Query("helmet", Instance("b", Box(0, 0, 60, 60)), (Instance("c", Box(100, 100, 160, 160)),))


def _link(a: str, box_a: Box, b: str, box_b: Box) -> PairMatch:
    return PairMatch(a, b, box_a, box_b, IDENTITY_AFFINE, 0.05, 9)


def test_true_only_when_both_boxes_lie_on_copies_of_one_element():
    links = [
        _link("a", Box(5, 5, 95, 95), "b", Box(210, 200, 300, 290)),  # cat - cat
        _link("a", Box(300, 0, 400, 100), "b", Box(210, 200, 300, 290)),  # cup - cat
        _link("a", Box(5, 5, 95, 95), "b", Box(500, 500, 600, 600)),  # cat - background
        _link("b", Box(0, 0, 60, 60), "c", Box(100, 100, 160, 160)),  # a distractor's copies
        _link("a", Box(0, 0, 400, 400), "b", Box(200, 200, 300, 300)),  # A's box far too big
    ]
    assert true_links(links, [CAT, CUP], [HELMET]).tolist() == [True, False, False, True, False]
    assert true_links(links, [CAT, CUP], []).tolist() == [True, False, False, False, False]
