"""Cluster verdicts, member verdicts and splits in the verdict log."""

from __future__ import annotations

import pytest

from db.records import ImageRecord
from db.store import Store
from engine.types import IDENTITY_AFFINE, Box, Cluster, ModelRef, PairMatch, Region
from hitl.views.cluster_edits import (
    SPLIT_RUN_KIND,
    current_clusters,
    filter_clusters,
    judge_cluster,
    judge_members,
    split_cluster,
    split_of,
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
    assert store.link_status(3) == "reject" and store.link_status(1) == "unreviewed"
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
