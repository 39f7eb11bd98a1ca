from dataclasses import replace

import pytest
import torch

from db.records import CONFIRM, REJECT
from engine.features import FeatureCache, FeatureConfig
from engine.train import TrainConfig, TrainResult
from engine.types import Box, ModelRef, PairMatch
from hitl.discover import lineage_root
from hitl.project import open_project
from hitl.rounds import (
    RoundConfig,
    RoundRefused,
    holdout_side,
    reviewed_links,
    run_round,
    validated,
)

AFFINE = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def test_holdout_side_is_stable_and_near_the_fraction():
    sides = [holdout_side(i, 0.2, seed=0) for i in range(2000)]
    assert sides == [holdout_side(i, 0.2, seed=0) for i in range(2000)]
    assert 0.17 < sides.count("holdout") / 2000 < 0.23


def _links(store, n: int) -> list[int]:
    from hitl.project import active_model_id

    images = [img.image_id for img in store.list_images()]
    run = store.start_run(active_model_id(store), {"test": True})
    box = Box(10, 10, 60, 60)
    matches = [PairMatch(images[i % len(images)], images[(i + 1) % len(images)], box, box, AFFINE, 0.1, 10) for i in range(n)]
    return store.add_links(run, matches)


def test_split_is_recorded_once_and_never_moves(tiny_project):
    store, _ = open_project(tiny_project)
    ids = _links(store, 30)
    for i, link_id in enumerate(ids):
        store.add_verdict(link_id, CONFIRM if i % 2 else REJECT, annotator="t")
    train, held = reviewed_links(store, RoundConfig(holdout_fraction=0.5))
    assert len(train) + len(held) == 30 and held
    # a later round with another fraction keeps every recorded side
    train2, held2 = reviewed_links(store, RoundConfig(holdout_fraction=0.0))
    assert {lk.link_id for lk in held2} == {lk.link_id for lk in held}



def test_reviewed_links_carry_their_inlier_points(tiny_project):
    """Expert pairs are anchored on a link's inliers: the round must read them from the store."""
    from hitl.project import active_model_id

    store, _ = open_project(tiny_project)
    a, b = [img.image_id for img in store.list_images()][:2]
    points = ((12.0, 14.0, 30.0, 32.0), (40.0, 18.0, 58.0, 36.0))
    run = store.start_run(active_model_id(store), {"test": True})
    (link_id,) = store.add_links(run, [PairMatch(a, b, Box(10, 10, 60, 60), Box(28, 28, 78, 78), AFFINE, 0.1, 2,
                                                 inliers=points)])
    store.add_verdict(link_id, CONFIRM, annotator="t")
    train, held = reviewed_links(store, RoundConfig(holdout_fraction=0.0))
    assert [lk.match.inliers for lk in train + held] == [points]


def test_expert_only_round_without_verdicts_is_refused(tiny_project):
    store, paths = open_project(tiny_project)
    with pytest.raises(RoundRefused, match="nothing to learn from"):
        run_round(store, paths, RoundConfig(sources=("expert",)))


def _small_train(**kw) -> TrainConfig:
    """Small pyramids (16 cells, 3 levels), few proposals, 2 steps: a whole round, fast on 2 cores."""
    mining = replace(TrainConfig().mining, n_proposals=64, verification_size=6, positive_square=6, min_vote_share=0.3)
    return TrainConfig(**(dict(steps=2, checkpoint_every=1, batch_pairs=64, features=FeatureConfig(max_side=16, n_scales=3),
                               mining=mining) | kw))


def test_first_round_on_a_fresh_project_needs_no_verdicts(tiny_project, tmp_path):
    from db.store import Store
    from hitl.ingest import ingest_paths

    project = tmp_path / "bare.duckdb"
    store = Store(project)
    ingest_paths(store, [tiny_project.parent / "images"], progress=False)  # no annotations, no verdicts
    _, paths = open_project(project)
    lines: list[str] = []
    report = run_round(store, paths, RoundConfig(train=_small_train(), rediscover=False), show_progress=False,
                       log=lines.append)
    (recorded,) = store.list_rounds()
    assert recorded.status == "done" and report.steps == 2
    assert report.positives["mined"]["pairs"] > 0 and "precision" not in report.positives["mined"]
    assert any("positives mined" in line for line in lines)


def test_unknown_source_is_refused(tiny_project):
    store, paths = open_project(tiny_project)
    with pytest.raises(RoundRefused, match="--sources"):
        run_round(store, paths, RoundConfig(sources=("magic",)))


def test_a_short_round_records_a_new_model_with_lineage_and_metrics(tiny_project):
    store, paths = open_project(tiny_project)
    ids = _links(store, 6)
    for i, link_id in enumerate(ids):
        store.add_verdict(link_id, CONFIRM if i % 2 else REJECT, annotator="t")
    # gate off: two steps on a tiny project need not validate; this test is about the record
    report = run_round(store, paths, RoundConfig(train=_small_train(), rediscover=False, gate=False), show_progress=False)
    new = store.get_model(report.new_model)
    assert new.ref.parent == "effnet-lite0" and new.round == report.round_id
    assert store.active_model().model_id == report.new_model
    (recorded,) = store.list_rounds()
    assert recorded.status == "done" and {"before", "after", "positives"} <= set(recorded.metrics)
    assert 0.0 <= recorded.metrics["before"]["oneshot_map"] <= 1.0
    assert recorded.metrics["after"]["model"] == report.new_model
    # Ground truth is attached: every source's positives carry their precision.
    for source in ("mined", "expert"):
        assert 0.0 <= recorded.metrics["positives"][source]["precision"] <= 1.0
    # Rejected links give hard negatives of their own source, which has no precision (not positives)
    assert recorded.metrics["positives"]["rejected"]["pairs"] > 0 and "precision" not in recorded.metrics["positives"]["rejected"]
    # The refresh ran the last stage into the new model's feature cache.
    assert any((paths.features / report.new_model.replace("@", "-")).rglob("*.npz"))
    # Mining's texture counts were kept beside the ImageNet features, for the next round to read
    assert any((paths.features / "effnet-lite0").rglob("collection-counts-*.pt"))
    # The next round starts from the new model: its one-shot figures are not measured twice.
    second = run_round(store, paths, RoundConfig(train=_small_train(), rediscover=False, seed=1, gate=False),
                       show_progress=False)
    assert second.parent == report.new_model
    assert lineage_root(store, second.new_model) == "effnet-lite0"  # both rounds are anchored to ImageNet
    # a fine-tuned parent mines with the root's (ImageNet) features, unless asked for its own
    from engine.trunk_cache import bank_from_inputs, trunk_inputs
    from hitl.project import load_model
    from hitl.rounds import _mining_bank

    tuned = load_model(store, report.new_model, "cpu")
    images = store.list_images()
    hashes = {i.image_id: i.sha256 for i in images}
    features = _small_train().features
    inputs, _ = trunk_inputs(tuned, [(i.image_id, i.path) for i in images], features, progress=False)
    miner = _mining_bank(store, paths, tuned, inputs, hashes, RoundConfig(train=_small_train()), "cpu")
    root = bank_from_inputs(load_model(store, "effnet-lite0", "cpu"), inputs)
    # read from the root's feature cache, as discovery and the first round's measurement stored them
    # (float16; computed by the whole backbone, bf16 where the CPU has it): the root's features
    assert torch.allclose(miner.levels[0], root.levels[0], atol=2e-2)
    first = FeatureCache(paths.features, "effnet-lite0", features).get(hashes[inputs.image_ids[0]]).levels[0]
    tuned_first = FeatureCache(paths.features, tuned.model_id, features).get(hashes[inputs.image_ids[0]]).levels[0]
    h, w = first.shape[1:]
    assert torch.equal(miner.levels[0][0, :, :h, :w], first.float())
    assert not torch.equal(first, tuned_first)  # the tuned model's own cached features differ
    assert _mining_bank(store, paths, tuned, inputs, hashes, RoundConfig(mine_with="parent"), "cpu") is None
    assert second.before["oneshot_map"] == report.after["oneshot_map"]


def _result(best_step):
    return TrainResult(ModelRef("m@1", "effnet-lite0"), 4, 0, (), validation=((0, 0.1),), best_step=best_step)


def test_validated_uses_the_rounds_own_signal_only():
    ok, why = validated(_result(0), {}, {})
    assert not ok and "held-out pairs' loss" in why
    ok, why = validated(_result(2), {"heldout_link_ap": 0.6, "oneshot_map": 0.1}, {"heldout_link_ap": 0.5, "oneshot_map": 0.9})
    assert not ok and "0.600 -> 0.500" in why  # the annotations' mAP does not decide
    ok, _ = validated(_result(2), {"heldout_link_ap": 0.5}, {"heldout_link_ap": 0.5})
    assert ok
    ok, _ = validated(_result(2), {"heldout_link_ap": 0.5}, {"heldout_link_ap": 0.46}, ap_tolerance=0.05)
    assert ok  # within the noise of a few held-out links
    ok, _ = validated(_result(2), {"heldout_link_ap": 0.5}, {"heldout_link_ap": 0.44}, ap_tolerance=0.05)
    assert not ok
    ok, why = validated(_result(None), {}, {})
    assert ok and "no pair held out" in why


def test_a_round_that_does_not_validate_keeps_its_parent_active(tiny_project):
    store, paths = open_project(tiny_project)
    lines: list[str] = []
    frozen = _small_train(lr=0.0, validation_fraction=0.5)  # cannot move: its held-out loss cannot fall
    report = run_round(store, paths, RoundConfig(sources=("mined",), train=frozen, rediscover=False), show_progress=False,
                       log=lines.append)
    assert not report.activated and report.active == report.before
    assert store.active_model().model_id == "effnet-lite0"
    (recorded,) = store.list_rounds()
    assert recorded.status == "done" and recorded.metrics["activated"] is False and recorded.metrics["best_step"] == 0
    assert "held-out pairs' loss" in recorded.metrics["gate"]
    assert any("NOT activated" in line for line in lines)
