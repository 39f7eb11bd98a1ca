from dataclasses import replace

import numpy as np
import pytest

import hitl.discover as discover
from engine.features import FeatureConfig
from hitl.discover import DiscoverConfig, run_discovery
from hitl.project import open_project

SMALL_FEATURES = FeatureConfig(max_side=16, n_scales=3)

# Cheap variants of the extra steps: masks from structure alone (the backbone's finer
# features per link would triple the time) and flipped feature maps for mirrors (no
# second feature extraction); the test of a mirrored copy uses the default "image".
CONFIG = DiscoverConfig(pairs="all", features=SMALL_FEATURES, commit_every=4, min_score=0.0, masks="structure",
                        mirror="flip")


def test_discovery_writes_run_links_clusters_and_map(tiny_project):
    store, paths = open_project(tiny_project)
    report = run_discovery(store, paths, CONFIG, progress=False)
    assert report.n_images == 8 and report.n_pairs == 28 and report.n_verified_now == 28
    run = store.get_run(report.run_id)
    assert run.status == "done" and run.params["pairs"] == "all"
    assert store.count_links(run_id=report.run_id) == report.n_links > 0
    assert len(store.load_map(report.model_id, "image")) == 8
    assert len(store.load_style_map(report.model_id)) == 8
    assert len(store.list_clusters(run_id=report.run_id)) == report.n_clusters
    masks = store.link_masks()  # every found link has its shared-detail mask (maybe empty)
    assert set(masks) == {lk.link_id for lk in store.list_links(run_id=report.run_id)}
    assert any(len(m.polygon_a) >= 3 and len(m.polygon_b) == len(m.polygon_a) for m in masks.values())
    for lk in store.list_links(run_id=report.run_id, inliers=True):  # every link keeps its points
        assert len(lk.match.inliers) == min(lk.match.n_inliers, CONFIG.verify.max_points) > 0
        assert -1 <= lk.match.agreement <= 1  # min_score 0: every link was weighed by its aligned agreement
    # a second run with the same model verifies nothing again
    again = run_discovery(store, paths, CONFIG, progress=False)
    assert again.n_verified_now == 0 and again.n_links == report.n_links


def test_killed_run_resumes_without_reverifying(tiny_project, monkeypatch):
    store, paths = open_project(tiny_project)
    seen: list[tuple[str, str]] = []
    real = discover.verify_pairs

    def dying(pairs, *args, **kwargs):
        for pair, found in real(pairs, *args, **kwargs):
            if len(seen) == 20:  # each batch: 4 pairs, verified both ways
                raise KeyboardInterrupt  # the user's Ctrl-C, or a kill between batches
            seen.append(pair)
            yield pair, found

    monkeypatch.setattr(discover, "verify_pairs", dying)
    config = replace(CONFIG, mirror="off")  # one verify_pairs call per batch, as counted above
    with pytest.raises(KeyboardInterrupt):
        run_discovery(store, paths, config, progress=False)
    (failed,) = store.list_runs()
    assert failed.status == "failed"
    committed = store.verified_pairs(failed.model_id)
    assert len(committed) == 8  # two batches of 4 committed; the third was cut

    monkeypatch.setattr(discover, "verify_pairs", real)
    resumed = run_discovery(store, paths, config, progress=False)
    assert resumed.run_id == failed.run_id  # the same run continues
    assert resumed.n_verified_now == 28 - 8
    assert store.get_run(failed.run_id).status == "done"


def test_new_images_only_add_their_pairs(tiny_project, tiny_demo):
    from PIL import Image

    from hitl.ingest import ingest_paths

    store, paths = open_project(tiny_project)
    config = replace(CONFIG, mirror="image")
    run_discovery(store, paths, config, progress=False)
    new = paths.project.parent / "more"
    new.mkdir()
    Image.open(tiny_demo / "images" / sorted((tiny_demo / "images").iterdir())[0].name).transpose(
        Image.Transpose.FLIP_LEFT_RIGHT).save(new / "flipped.png")
    ingest_paths(store, [new], progress=False)
    report = run_discovery(store, paths, config, progress=False)
    assert report.n_verified_now == 8  # the new image against the 8 old ones
    # The new image is the first one mirrored: their best link says so.
    first = next(im.image_id for im in store.list_images() if im.path.endswith(sorted(
        p.name for p in (tiny_demo / "images").iterdir())[0]))
    flipped = next(im.image_id for im in store.list_images() if im.path.endswith("flipped.png"))
    best = next(lk for lk in store.list_links(inliers=True) if {lk.image_a, lk.image_b} == {first, flipped})
    assert best.match.mirrored
    # Its points are in each image's own frame: x in one is the image's width minus x in the other.
    width = store.get_image(best.image_b).width
    points = np.array(best.match.inliers)
    assert len(points) > 5
    assert np.median(np.abs(points[:, 2] - (width - points[:, 0]))) < 15  # a cell is 15 px
    assert np.median(np.abs(points[:, 3] - points[:, 1])) < 15


def test_unknown_mirror_or_mask_mode_is_refused():
    with pytest.raises(ValueError, match="mirror"):
        replace(CONFIG, mirror="both")
    with pytest.raises(ValueError, match="masks"):
        replace(CONFIG, masks="yes")


def test_unknown_pair_mode_is_refused(tiny_project):
    store, paths = open_project(tiny_project)
    with pytest.raises(ValueError, match="--pairs"):
        run_discovery(store, paths, replace(CONFIG, pairs="some"), progress=False)


def test_a_region_found_both_ways_is_kept_once():
    from engine.types import Box, PairMatch
    from hitl.discover import merge_directions

    eye = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    # each match keeps its points in its own (image_a, image_b) frame: the kept twin's points
    ab = PairMatch("a", "b", Box(0, 0, 10, 10), Box(20, 20, 30, 30), eye, 0.03, 9, inliers=((5, 5, 25, 25),))
    ba_same = PairMatch("b", "a", Box(21, 20, 30, 30), Box(0, 0, 10, 10), eye, 0.05, 9, inliers=((25, 25, 5, 5),))
    ba_other = PairMatch("b", "a", Box(50, 50, 60, 60), Box(70, 70, 80, 80), eye, 0.02, 9)
    assert merge_directions([ab], [ba_same, ba_other]) == [ba_same, ba_other]
    assert merge_directions([ab], [ba_same])[0].inliers == ((25, 25, 5, 5),)
    assert merge_directions([ab], []) == [ab]
    # two backward twins of one forward match: the best of the three is kept, once
    ba_best = PairMatch("b", "a", Box(20, 21, 30, 30), Box(0, 0, 10, 10), eye, 0.07, 9)
    assert merge_directions([ab], [ba_same, ba_best]) == [ba_best]


def test_texture_weights_come_from_the_pretrained_root_of_a_fine_tuned_model(tiny_project):
    """A fine-tuned model's discovery weighs texture with its pretrained root's features
    (repetition is a property of the images; the cosine thresholds hold for pretrained
    features), and with its own when the root's are not cached for every image."""
    from engine.features import CachedPyramids, FeatureCache
    from engine.types import ModelRef

    store, paths = open_project(tiny_project)
    report = run_discovery(store, paths, replace(CONFIG, masks="off", style=False), progress=False)
    root = report.model_id
    child = ModelRef(f"{root}@0000aaaa", root, "child.pt", parent=root)
    grandchild = ModelRef(f"{root}@0000bbbb", root, "grandchild.pt", parent=child.model_id)
    store.add_model(child, checkpoint_sha256="0000aaaa" + "0" * 56)
    store.add_model(grandchild, checkpoint_sha256="0000bbbb" + "0" * 56)
    assert discover.lineage_root(store, grandchild.model_id) == root
    assert discover.lineage_root(store, root) == root
    hashes = {img.image_id: img.sha256 for img in store.list_images()}
    own = CachedPyramids(FeatureCache(paths.features, grandchild.model_id, SMALL_FEATURES), hashes)
    chosen = discover.texture_pyramids(store, paths, grandchild.model_id, hashes, SMALL_FEATURES, own)
    assert chosen is not own and chosen.cache.dir == FeatureCache(paths.features, root, SMALL_FEATURES).dir
    assert discover.texture_pyramids(store, paths, root, hashes, SMALL_FEATURES, own) is own
    missing = {**hashes, "extra": "f" * 64}  # an image the root never saw: its own features
    assert discover.texture_pyramids(store, paths, grandchild.model_id, missing, SMALL_FEATURES, own) is own


@pytest.mark.parametrize("expand", [0, 1])
def test_two_hop_candidates_are_verified_after_the_shortlist(tiny_project, monkeypatch, expand):
    from engine.graph import two_hop_pairs

    store, paths = open_project(tiny_project)
    shortlisted: list[tuple[str, str]] = []
    real = discover._shortlist

    def spy(*args, **kwargs):
        pairs = real(*args, **kwargs)
        shortlisted.extend(pairs)
        return pairs

    monkeypatch.setattr(discover, "_shortlist", spy)
    config = replace(CONFIG, pairs="knn", k=1, groups="none", expand=expand)
    report = run_discovery(store, paths, config, progress=False)
    first = {tuple(sorted(p)) for p in shortlisted}
    found = [lk.match for lk in store.list_links(model_id=report.model_id)
             if tuple(sorted((lk.match.image_a, lk.match.image_b))) in first]
    chained = {(a, b) for a, b, _ in two_hop_pairs(found, per_image=config.expand_k)} - first
    assert chained  # the tiny demo's motifs recur in three images or more
    expected = first | chained if expand else first
    assert store.verified_pairs(report.model_id) == expected
    assert report.n_two_hop == len(expected - first) and report.n_pairs == len(expected)


@pytest.mark.parametrize("bad", [{"expand": -1}, {"expand_k": 0}])
def test_bad_two_hop_settings_are_refused(bad):
    with pytest.raises(ValueError, match="expand"):
        DiscoverConfig(**bad)
