"""The project store: images, models, runs, links, regions, clusters, map, rounds."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from db import ImageRecord, Store
from engine.types import Box, Cluster, ModelRef, PairMatch, Region


def _image(i: int, **meta) -> ImageRecord:
    return ImageRecord(f"{i:016x}", f"{i:064x}", f"/c/img{i}.jpg", 100 + i, 80, **meta)


def _match(a: str, b: str, score: float = 0.5, shift: float = 0.0) -> PairMatch:
    affine = ((1.0, 0.0, 2.0 + shift), (0.0, 1.0, 3.0))
    return PairMatch(a, b, Box(0, 0, 10, 12), Box(2 + shift, 3, 12 + shift, 15), affine, score, 9)


@pytest.fixture
def store() -> Store:
    s = Store(":memory:")
    s.add_model(ModelRef("m", "effnet-lite0"))
    return s


def test_images_dedupe_by_content_hash(store: Store) -> None:
    added, dupes = store.add_images([_image(1), _image(2), _image(1)])
    assert added == [f"{1:016x}", f"{2:016x}"] and dupes == [f"{1:016x}"]
    assert store.add_images([_image(2), _image(3)]) == ([f"{3:016x}"], [f"{2:016x}"])
    assert store.count_images() == 3
    got = store.get_image(f"{3:016x}")
    assert (got.path, got.width, got.height, got.source) == ("/c/img3.jpg", 103, 80, "folder")
    assert got.added is not None and got.added.tzinfo is not None
    assert store.get_image("nope") is None


def test_metadata_update_keeps_unset_fields_and_merges_extra(store: Store) -> None:
    store.add_images([_image(1, title="Old", artist="Bruegel", extra={"inv": "12"})])
    n = store.update_image_metadata([_image(1, title="New", date="c. 1605", year=1605,
                                            extra={"room": "4"}), _image(9, title="x")])
    assert n == 1
    got = store.get_image(f"{1:016x}")
    assert (got.title, got.artist, got.year) == ("New", "Bruegel", 1605)
    assert got.extra == {"inv": "12", "room": "4"}


def test_models_lineage_and_active_model(store: Store) -> None:
    child = ModelRef("effnet-lite0@3fa2c1d9", "effnet-lite0", "/ck/r1.pt", parent="m")
    version = store.add_model(child, checkpoint_sha256="3fa2c1d9ff", round=1, config={"lr": 1e-5})
    assert version.ref == child and version.config == {"lr": 1e-5} and version.round == 1
    assert store.add_model(child) == version  # recording again changes nothing
    with pytest.raises(ValueError, match="already recorded"):
        store.add_model(ModelRef("m", "resnet18"))
    with pytest.raises(ValueError, match="parent model 'ghost'"):
        store.add_model(ModelRef("x", "effnet-lite0", parent="ghost"))
    assert [m.model_id for m in store.list_models()] == ["m", child.model_id]
    assert store.active_model() is None
    store.set_active_model(child.model_id)
    assert store.active_model().ref == child
    with pytest.raises(ValueError, match="not in the project"):
        store.set_active_model("nope")


def test_links_and_verified_pairs_commit_together(store: Store) -> None:
    run = store.start_run("m", {"k": 20})
    ids = store.add_links(run, [_match("a", "b", 0.9), _match("c", "a", 0.4)],
                          verified_pairs=[("d", "b")])
    assert ids == sorted(ids) and len(set(ids)) == 2
    assert store.verified_pairs("m") == {("a", "b"), ("a", "c"), ("b", "d")}
    assert store.mark_pairs_verified(run, [("b", "a"), ("e", "f")]) == 1
    link = store.get_link(ids[0])
    assert link.match == _match("a", "b", 0.9) and link.status == "unreviewed"
    assert (link.run_id, link.model_id) == (run, "m")
    assert [lk.link_id for lk in store.list_links()] == ids  # best score first
    assert [lk.link_id for lk in store.list_links(image_id="c")] == [ids[1]]
    assert store.count_links(min_score=0.5) == 1
    assert store.list_links(limit=1, offset=1)[0].link_id == ids[1]
    with pytest.raises(ValueError, match="run 99"):
        store.add_links(99, [_match("a", "b")])


def test_mirrored_links_round_trip(store: Store) -> None:
    run = store.start_run("m", {})
    flipped = replace(_match("a", "b"), affine=((-1.0, 0.0, 12.0), (0.0, 1.0, 3.0)), mirrored=True)
    direct, mirrored = store.add_links(run, [_match("a", "c"), flipped])
    assert store.get_link(mirrored).match == flipped and store.get_link(mirrored).match.mirrored
    assert store.get_link(direct).match.mirrored is False


def test_agreement_round_trips_and_stays_none_when_not_measured(store: Store) -> None:
    run = store.start_run("m", {})
    measured = replace(_match("a", "b"), agreement=0.42)
    with_it, without = store.add_links(run, [measured, _match("a", "c")])
    assert store.get_link(with_it).match == measured
    assert store.get_link(without).match.agreement is None
    assert {lk.match.agreement for lk in store.list_links(run_id=run)} == {0.42, None}


def test_inlier_points_round_trip_with_their_link(store: Store) -> None:
    run = store.start_run("m", {})
    points = ((1.5, 2.5, 3.5, 5.5), (8.5, 10.5, 10.5, 13.5))  # exact in float32
    with_points = replace(_match("a", "b", 0.9), inliers=points)
    with_id, without = store.add_links(run, [with_points, _match("a", "c", 0.4)])
    assert store.get_link(with_id).match == with_points  # get_link reads them
    assert store.get_link(without).match.inliers == ()
    listed = {lk.link_id: lk.match.inliers for lk in store.list_links(inliers=True)}
    assert listed == {with_id: points, without: ()}
    assert all(lk.match.inliers == () for lk in store.list_links())  # queues read no points
    assert [lk.link_id for lk in store.list_links(inliers=True, image_id="c")] == [without]


def test_run_lifecycle_and_resume(store: Store) -> None:
    params = {"k": 20, "scales": 7}
    run = store.start_run("m", params)
    assert store.resumable_run("m", {"scales": 7, "k": 20}).run_id == run  # key order free
    assert store.resumable_run("m", {"k": 10}) is None
    store.finish_run(run)
    done = store.get_run(run)
    assert done.status == "done" and done.finished >= done.started
    assert store.resumable_run("m", params) is None
    failed = store.start_run("m", params)
    store.finish_run(failed, "failed", error="out of memory")
    assert store.resumable_run("m", params).error == "out of memory"
    assert [r.run_id for r in store.list_runs(status="done")] == [run]
    with pytest.raises(ValueError, match="model 'ghost'"):
        store.start_run("ghost", {})
    with pytest.raises(ValueError, match="'done' or 'failed'"):
        store.finish_run(run, "paused")


def test_regions_are_stored_once(store: Store) -> None:
    regions = [Region("a", Box(1, 2, 30, 40)), Region("b", Box(0, 0, 5, 5))]
    ids = store.add_regions(regions, source="via", labels=["dog", None],
                            attributes=[{"name": "dog"}, {}])
    assert len(ids) == 2
    assert store.add_regions(regions, source="via", labels=["dog", None]) == []
    assert store.add_regions(regions[:1], source="via", labels=["cat"]) != []
    (dog,) = store.list_regions(label="dog")
    assert dog.region == regions[0] and dog.attributes == {"name": "dog"}
    with pytest.raises(ValueError, match="match regions"):
        store.add_regions(regions, source="via", labels=["x"])


def test_clusters_keep_members_links_and_status(store: Store) -> None:
    run = store.start_run("m", {})
    (link,) = store.add_links(run, [_match("a", "b")])
    ra, rb, rc = (Region("a", Box(0, 0, 10, 12)), Region("b", Box(2, 3, 12, 15)),
                  Region("c", Box(0, 0, 4, 4)))
    ids = store.add_clusters(run, [Cluster(0, (ra,)), Cluster(1, (ra, rb, rc))],
                             region_links={ra: link, rb: link})
    clusters = store.list_clusters(run_id=run)
    assert [c.cluster_id for c in clusters] == [ids[1], ids[0]]  # largest first
    big = clusters[0]
    assert big.number == 1 and big.images == ("a", "b", "c") and big.link_ids == (link,)
    assert [r.region for r in big.regions] == [ra, rb, rc]
    store.add_verdict(ids[1], "confirm", "mk", target_kind="cluster")
    assert store.cluster_status(ids[1]) == "confirm"
    assert [c.cluster_id for c in store.list_clusters(status="unreviewed")] == [ids[0]]
    assert store.get_cluster(ids[1]).status == "confirm"


def test_map_is_replaced_per_model_and_kind(store: Store) -> None:
    xy = np.array([[0.5, 1.0], [2.0, -1.0]], dtype=np.float32)
    assert store.save_map("m", "image", ["a", "b"], xy, np.array([3, -1])) == 2
    points = store.load_map("m", "image")
    assert [(p.item_id, p.x, p.y, p.group) for p in points] == [
        ("a", 0.5, 1.0, 3), ("b", 2.0, -1.0, -1)]
    store.save_map("m", "image", ["c"], [[1, 1]])
    assert [p.item_id for p in store.load_map("m")] == ["c"]
    assert store.load_map("m", "region") == []
    with pytest.raises(ValueError, match="2 items got 1 points"):
        store.save_map("m", "image", ["a", "b"], [[0, 0]])


def test_training_rounds_merge_metrics(store: Store) -> None:
    rid = store.add_round("m", {"steps": 200})
    store.update_round(rid, metrics={"before": {"map": 0.31}}, log_path="/logs/r1.txt")
    store.add_model(ModelRef("m@1", "effnet-lite0", parent="m"))
    store.update_round(rid, status="done", new_model="m@1", metrics={"after": {"map": 0.4}})
    (rnd,) = store.list_rounds()
    assert (rnd.status, rnd.new_model, rnd.log_path) == ("done", "m@1", "/logs/r1.txt")
    assert rnd.metrics == {"before": {"map": 0.31}, "after": {"map": 0.4}}
    assert rnd.finished is not None and rnd.params == {"steps": 200}
    with pytest.raises(ValueError, match="model 'm@9'"):
        store.update_round(rid, new_model="m@9")
    with pytest.raises(ValueError, match="round 42"):
        store.update_round(42, status="done")


def test_holdout_split_is_fixed_once_recorded(store: Store) -> None:
    assert store.record_split({1: "holdout", 2: "train"}) == 2
    assert store.record_split({1: "train", 3: "holdout"}) == 1  # 1 keeps its side
    assert store.link_split() == {1: "holdout", 2: "train", 3: "holdout"}
    assert store.holdout_links() == frozenset({1, 3})
    with pytest.raises(ValueError, match="'train' or 'holdout'"):
        store.record_split({4: "test"})


def test_annotation_files_and_settings(store: Store, tmp_path: Path) -> None:
    store.attach_annotations(tmp_path / "brueghelTest.json", "brueghel", label="test split")
    (ann,) = store.list_annotations()
    assert ann.path == str(tmp_path / "brueghelTest.json") and ann.format == "brueghel"
    store.set_setting("theme", "dark")
    assert store.get_setting("theme") == "dark" and store.get_setting("x", "d") == "d"


def test_file_store_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "artminer.duckdb"
    with Store(path) as first:
        first.add_images([_image(1)])
    assert Store(path).count_images() == 1
    assert Store(str(path)).summary()["images"] == 1


def test_link_masks_round_trip_and_replace(store: Store) -> None:
    from db.records import LinkMaskRecord

    run = store.start_run("m", {})
    first, second = store.add_links(run, [_match("a", "b"), _match("a", "c")])
    square = ((0.0, 0.0), (10.0, 0.0), (10.0, 12.5), (0.0, 12.5))
    masks = [LinkMaskRecord(first, square, square[::-1], True), LinkMaskRecord(second, (), (), False)]
    assert store.save_link_masks(masks) == 2
    assert store.link_masks() == {first: masks[0], second: masks[1]}
    again = LinkMaskRecord(first, square[:3], square[:3], False)
    store.save_link_masks([again])
    assert store.link_masks([first]) == {first: again} and store.link_masks([]) == {}


def test_style_map_round_trip_and_replace(store: Store) -> None:
    assert store.save_style_map("m", ["b", "a"], [(1.0, 2.0), (3.0, 4.0)], [0, -1]) == 2
    points = store.load_style_map("m")
    assert [(p.item_id, p.x, p.y, p.group, p.kind) for p in points] == [
        ("a", 3.0, 4.0, -1, "image"), ("b", 1.0, 2.0, 0, "image")]
    store.save_style_map("m", ["c"], [(0.0, 0.0)], [1])
    assert [p.item_id for p in store.load_style_map("m")] == ["c"] and store.load_style_map("x") == []
    with pytest.raises(ValueError, match="style map"):
        store.save_style_map("m", ["a"], [(0.0, 0.0)], [])
