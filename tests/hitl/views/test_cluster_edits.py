"""Cluster verdicts, member verdicts and splits in the verdict log."""

from __future__ import annotations

import pytest

from db.records import ImageRecord, RegionRecord, StoredCluster
from db.store import Store
from engine.types import IDENTITY_AFFINE, Box, Cluster, ModelRef, PairMatch, Region
from hitl.queue import next_links
from hitl.views.cluster_edits import (
    SPLIT_RUN_KIND,
    boxes_per_image,
    current_clusters,
    filter_clusters,
    judge_cluster,
    judge_members,
    split_cluster,
    split_of,
    strict_parts,
    too_large,
    undo_last_cluster_action,
)

BOX = Box(0, 0, 10, 10)


@pytest.fixture
def store() -> Store:
    """One cluster over images a-d: links a-b (1), b-c (2), c-d (3)."""
    s = Store(":memory:")
    s.add_images([ImageRecord(i, i * 4, f"/x/{i}.jpg", 100, 100) for i in "abcd"])
    s.add_model(ModelRef("m", "m"))
    run = s.start_run("m", {})
    s.add_links(run, [PairMatch(a, b, BOX, BOX, IDENTITY_AFFINE, 0.5, 4)
                      for a, b in ("ab", "bc", "cd")])
    regions = {Region(i, BOX): link for i, link in zip("abcd", (1, 2, 3, 3))}
    s.add_clusters(run, [Cluster(0, tuple(regions))], regions)
    s.finish_run(run)
    return s


def test_judge_cluster_and_members(store):
    cluster = store.list_clusters()[0]
    judge_cluster(store, cluster.cluster_id, "confirm", "mk", note="same dog")
    assert store.cluster_status(cluster.cluster_id) == "confirm"
    c, d = (r.region_id for r in cluster.regions[2:])
    ids = judge_members(store, cluster, [c, d], "reject", "mk")
    assert len(ids) == 1  # c and d came from the same link: one verdict
    assert store.link_status(3) == "reject" and store.link_status(1) == "confirm"
    with pytest.raises(ValueError, match="not members"):
        judge_members(store, cluster, [999], "reject", "mk")


def test_split_makes_real_clusters_and_rejects_the_grouping(store):
    cluster = store.list_clusters()[0]
    a, b, c, d = (r.region_id for r in cluster.regions)
    new = split_cluster(store, cluster, [[a, b]], "mk", note="two motifs")
    assert len(new) == 2
    parts = {cid: store.get_cluster(cid) for cid in new}
    assert parts[new[0]].images == ("a", "b") and parts[new[1]].images == ("c", "d")
    assert parts[new[0]].link_ids == (1, 2) and parts[new[1]].link_ids == (3,)
    verdict = store.history("cluster", cluster.cluster_id)[-1]
    assert (verdict.verdict, verdict.annotator) == ("reject", "mk")
    assert verdict.geometry == {"split_into": new, "groups": [[a, b], [c, d]]}
    assert "two motifs" in verdict.note
    assert split_of(store, cluster.cluster_id) == new
    assert split_of(store, new[0]) is None
    assert store.list_runs(kind=SPLIT_RUN_KIND)[0].params["split_of"] == cluster.cluster_id
    # the page shows the latest discovery run's clusters and the splits since
    shown = current_clusters(store, "m")
    assert {c.cluster_id for c in shown} == {cluster.cluster_id, *new}


@pytest.mark.parametrize("groups, message", [
    ([[999]], "not members"),
    ([[1, 2], [2]], "one part"),
    ([[1, 2, 3, 4]], "two non-empty parts"),
    ([[]], "two non-empty parts"),
])
def test_bad_splits_are_refused(store, groups, message):
    cluster = store.list_clusters()[0]
    with pytest.raises(ValueError, match=message):
        split_cluster(store, cluster, groups, "mk")
    assert store.cluster_status(cluster.cluster_id) == "unreviewed"


def test_filter_clusters(store):
    clusters = store.list_clusters()
    assert filter_clusters(clusters, ["unreviewed"], 4, 4) == clusters
    assert filter_clusters(clusters, ["confirm"]) == []
    assert filter_clusters(clusters, None, 5) == []
    assert current_clusters(Store(":memory:"), "m") == []


def test_cluster_verdict_is_a_verdict_on_its_unreviewed_member_links(store):
    cluster = store.list_clusters()[0]
    own = store.add_verdict(2, "reject", "ana")  # judged one by one before: kept
    head, derived = judge_cluster(store, cluster.cluster_id, "confirm", "mk")
    assert [store.get_verdict(v).target_id for v in derived] == [1, 3]
    for vid in derived:
        verdict = store.get_verdict(vid)
        assert (verdict.verdict, verdict.origin_verdict, verdict.annotator) == ("confirm", head, "mk")
        assert verdict.note == f"cluster #{cluster.cluster_id}"
        assert verdict.geometry["box_a"] == [0, 0, 10, 10]
    assert [store.link_status(i) for i in (1, 2, 3)] == ["confirm", "reject", "confirm"]
    assert next_links(store) == []  # the links left the queue
    assert store.status_counts("m") == {"confirm": 2, "reject": 1, "unsure": 0, "unreviewed": 0,
                                        "disputed": 0}
    assert store.get_verdict(own).revoked_by is None


def test_undoing_a_cluster_verdict_returns_its_links_to_the_queue(store):
    cluster = store.list_clusters()[0]
    store.add_verdict(2, "reject", "ana")
    head, derived = judge_cluster(store, cluster.cluster_id, "confirm", "mk")
    assert store.last_verdict_by("mk").verdict_id == head  # derived link verdicts are not "last"
    undone = undo_last_cluster_action(store, "mk")
    assert undone.verdict_id == head
    assert store.cluster_status(cluster.cluster_id) == "unreviewed"
    assert [store.link_status(i) for i in (1, 2, 3)] == ["unreviewed", "reject", "unreviewed"]
    assert [lk.link_id for lk in next_links(store)] == [1, 3]
    assert all(store.get_verdict(v).revoked_by is not None for v in derived)  # appended, kept
    assert undo_last_cluster_action(store, "mk") is None


def test_undoing_a_split_brings_the_original_back(store):
    cluster = store.list_clusters()[0]
    a, b, _, _ = (r.region_id for r in cluster.regions)
    new = split_cluster(store, cluster, [[a, b]], "mk")
    assert [store.link_status(i) for i in (1, 2, 3)] == ["unreviewed"] * 3  # a split judges no link
    assert undo_last_cluster_action(store, "mk").verdict == "reject"
    assert split_of(store, cluster.cluster_id) is None
    assert [c.cluster_id for c in current_clusters(store, "m")] == [cluster.cluster_id]
    assert store.get_cluster(new[0]) is not None  # the parts stay in the file, out of view


def test_status_counts_since_counts_only_newer_verdicts(store):
    store.add_verdict(1, "confirm", "mk")
    mark = store.get_verdict(store.add_verdict(2, "reject", "mk")).created
    assert store.status_counts("m", since=mark) == {"confirm": 0, "reject": 1, "unsure": 0,
                                                    "unreviewed": 1, "disputed": 0}
    with pytest.raises(ValueError, match="verdict"):
        store.add_cluster_verdict(store.list_clusters()[0].cluster_id, "maybe", "mk")
    with pytest.raises(ValueError, match="cluster"):
        store.add_cluster_verdict(999, "confirm", "mk")


def test_one_tile_per_image_with_all_its_boxes():
    other = Box(20, 20, 30, 30)
    cluster = StoredCluster(1, 1, "m", 0, tuple(
        RegionRecord(i, Region(image, box)) for i, (image, box) in
        enumerate([("a", BOX), ("b", BOX), ("a", other), ("a", BOX)])))
    assert boxes_per_image(cluster) == {"a": (BOX, other), "b": (BOX,)}


def test_strict_parts_cut_a_chain_grown_through_weak_links():
    """a-b and c-d strong, b-c weak: strict mode with a 2-image cap cuts b-c."""
    from engine.graph import GraphConfig

    s = Store(":memory:")
    s.add_images([ImageRecord(i, i * 4, f"/x/{i}.jpg", 100, 100) for i in "abcd"])
    s.add_model(ModelRef("m", "m"))
    run = s.start_run("m", {})
    boxes = {i: Box(10 * k, 0, 10 * k + 10, 10) for k, i in enumerate("abcd")}
    pairs = (("a", "b", 0.9), ("b", "c", 0.05), ("c", "d", 0.8))
    ids = s.add_links(run, [PairMatch(a, b, boxes[a], boxes[b], IDENTITY_AFFINE, sc, 9) for a, b, sc in pairs])
    regions = {Region(i, boxes[i]): link for i, link in zip("abcd", (ids[0], ids[0], ids[2], ids[2]))}
    s.add_clusters(run, [Cluster(0, tuple(regions))], regions)
    cluster = s.list_clusters()[0]
    config = GraphConfig(mode="strict", strict_min_score=0.0, max_component_images=2)
    assert too_large(cluster, config) and not too_large(cluster)
    by_id = {r.region_id: r.region.image_id for r in cluster.regions}
    parts = strict_parts(s, cluster, config)
    assert sorted([by_id[r] for r in part] for part in parts) == [["a", "b"], ["c", "d"]]
    new = split_cluster(s, cluster, parts, "mk", note="strict re-cluster")
    assert sorted(s.get_cluster(c).images for c in new) == [("a", "b"), ("c", "d")]
