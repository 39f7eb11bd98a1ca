"""Known-answer tests of the review queue's three orders."""

from __future__ import annotations

import pytest

from db.records import ImageRecord, Link
from db.store import Store
from engine.types import IDENTITY_AFFINE, Box, Cluster, ModelRef, PairMatch, Region
from hitl.queue import (
    STRATEGIES,
    crosses_sources,
    link_clusters,
    next_links,
    order_links,
    source_summary,
)

BOX = Box(0, 0, 10, 10)


def _match(a: str, b: str, score: float, y: float = 0.0) -> PairMatch:
    box = Box(0, y, 10, y + 10)
    return PairMatch(a, b, box, box, IDENTITY_AFFINE, score, 5)


@pytest.fixture
def store() -> Store:
    """Six links; scores chosen so each strategy gives a different order.

    link 1: a-b 0.9 (cluster X)    link 4: d-e 0.5 (cluster Y)
    link 2: a-c 0.8 (cluster X)    link 5: e-f 0.3 (no cluster)
    link 3: b-c 0.8 (cluster X)    link 6: a-f 0.45 (cluster Y)
    """
    s = Store(":memory:")
    s.add_images([ImageRecord(i, i * 4, f"/x/{i}.jpg", 100, 100) for i in "abcdef"])
    s.add_model(ModelRef("m", "m"))
    run = s.start_run("m", {})
    matches = [_match("a", "b", 0.9), _match("a", "c", 0.8), _match("b", "c", 0.8),
               _match("d", "e", 0.5), _match("e", "f", 0.3), _match("a", "f", 0.45, y=50)]
    ids = s.add_links(run, matches)
    assert ids == [1, 2, 3, 4, 5, 6]
    x = Cluster(0, (Region("a", BOX), Region("b", BOX), Region("c", BOX)))
    y = Cluster(1, (Region("d", BOX), Region("e", BOX), Region("f", Box(0, 50, 10, 60))))
    region_links = {Region("a", BOX): 1, Region("b", BOX): 3, Region("c", BOX): 2,
                    Region("d", BOX): 4, Region("f", Box(0, 50, 10, 60)): 6}
    s.add_clusters(run, [x, y], region_links)
    return s


def _ids(links) -> list[int]:
    return [lk.link_id for lk in links]


def test_score_order_breaks_ties_by_link_id(store):
    assert _ids(next_links(store, "score", limit=10)) == [1, 2, 3, 4, 6, 5]


def test_uncertainty_order_is_nearest_threshold_first(store):
    # distances to 0.5: 4:0, 6:0.05, 5:0.2, 2/3:0.3, 1:0.4
    assert _ids(next_links(store, "uncertainty", threshold=0.5, limit=10)) == [4, 6, 5, 2, 3, 1]


def test_coverage_takes_one_per_cluster_before_a_second(store):
    # cluster X (links 1,2,3, best 0.9) and Y (links 4,6, best 0.5) alternate; link 5 last
    assert _ids(next_links(store, "coverage", limit=10)) == [1, 4, 2, 6, 3, 5]


def test_reviewed_links_and_clusters_leave_the_queue(store):
    store.add_verdict(1, "confirm", "mk")
    cluster_y = next(c for c in store.list_clusters() if c.number == 1)
    store.add_verdict(cluster_y.cluster_id, "reject", "mk", target_kind="cluster")
    # link 1 is reviewed; Y's links lose their cluster turn and join the loose tail
    assert _ids(next_links(store, "coverage", limit=10)) == [2, 3, 4, 6, 5]
    assert _ids(next_links(store, "score", limit=10)) == [2, 3, 4, 6, 5]


def test_limit_and_exclude(store):
    assert _ids(next_links(store, "score", limit=2, exclude={1, 3})) == [2, 4]
    assert _ids(next_links(store, "uncertainty", threshold=0.5, limit=1, exclude={4})) == [6]
    assert next_links(store, "score", limit=0) == []


def test_model_filter(store):
    assert next_links(store, "score", model_id="other") == []


def test_order_links_is_pure_and_empty_safe():
    assert order_links([], "coverage") == []
    assert link_clusters([]) == {}


@pytest.mark.parametrize("bad", ["random", "", "Score"])
def test_unknown_strategy_is_refused(store, bad):
    with pytest.raises(ValueError, match="strategy must be one of"):
        next_links(store, bad)


def test_negative_limit_is_refused(store):
    with pytest.raises(ValueError, match="limit"):
        next_links(store, "score", limit=-1)


def test_strategies_listed():
    assert STRATEGIES == ("score", "uncertainty", "coverage", "cross-source")


def _sources(s: Store, f_source: str | None) -> None:
    """a, b, c in manuscript M; d, e in album A; f in ``f_source``."""
    s.update_image_metadata([ImageRecord(image, image * 4, f"/x/{image}.jpg", 100, 100, collection=source)
                             for image, source in zip("abcdef", ["M", "M", "M", "A", "A", f_source])])


def test_cross_source_order_puts_links_between_sources_first(store):
    _sources(store, None)
    # f's source is unknown, so a-f does not count as crossing; no other link crosses:
    # the order is score order...
    assert [lk.link_id for lk in next_links(store, "cross-source")] == [1, 2, 3, 4, 6, 5]
    _sources(store, "A")
    # ...until f joins album A: a-f (0.45) crosses M-A and comes first; e-f stays within A.
    assert [lk.link_id for lk in next_links(store, "cross-source")] == [6, 1, 2, 3, 4, 5]


def test_crosses_sources_and_summary():
    links = [Link(i, 1, "m", _match(a, b, 0.5), status) for i, (a, b, status) in
             enumerate([("a", "b", "unreviewed"), ("a", "d", "confirm"), ("d", "a", "reject"), ("d", "x", "unreviewed")])]
    source_of = {"a": "M", "b": "M", "d": "A"}
    assert [crosses_sources(lk, source_of) for lk in links] == [False, True, True, False]
    rows = source_summary(links, source_of)
    assert rows[0] == {"sources": ("A", "M"), "links": 2, "confirm": 1, "reject": 1}
    assert {"sources": ("M", "M"), "links": 1, "unreviewed": 1} in rows
    assert {"sources": ("(none)", "A"), "links": 1, "unreviewed": 1} in rows
