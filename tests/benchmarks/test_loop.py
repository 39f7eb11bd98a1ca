"""benchmarks/loop.py: the simulated expert's judgement, and the loop end to end on a toy demo."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.discovery_rounds import format_rows, measure_models
from benchmarks.loop import (
    Copy,
    LoopConfig,
    format_table,
    is_true_link,
    motifs_at,
    parse_args,
    run_loop,
)
from db.records import Link
from engine.features import FeatureConfig
from engine.mining import MiningConfig
from engine.train import TrainConfig
from engine.types import IDENTITY_AFFINE, Box, PairMatch
from hitl.demo import DemoConfig

CAT_A = Copy("a", "cat", Box(100, 100, 200, 200))
CUP_A = Copy("a", "cup", Box(300, 0, 400, 100))
CAT_B = Copy("b", "cat", Box(0, 0, 50, 50))
TRUTH = {"a": [CAT_A, CUP_A], "b": [CAT_B]}


def _link(box_a: Box, box_b: Box) -> Link:
    return Link(1, 1, "m", PairMatch("a", "b", box_a, box_b, IDENTITY_AFFINE, 0.1, 10))


def test_motifs_at_counts_overlap_or_centre_inside():
    assert motifs_at(Box(110, 110, 210, 210), TRUTH["a"]) == {"cat"}  # IoU 0.68
    assert motifs_at(Box(140, 140, 160, 160), TRUTH["a"]) == {"cat"}  # IoU 0.04, centre inside
    assert motifs_at(Box(0, 300, 50, 350), TRUTH["a"]) == set()  # on neither copy
    assert motifs_at(Box(0, 150, 300, 400), TRUTH["a"]) == set()  # big box: centre on no copy, IoU 0.06


def test_a_link_is_true_only_between_copies_of_one_motif():
    assert is_true_link(_link(Box(100, 100, 200, 200), Box(5, 5, 45, 45)), TRUTH)
    assert not is_true_link(_link(Box(300, 0, 400, 100), Box(5, 5, 45, 45)), TRUTH)  # cup vs cat
    assert not is_true_link(_link(Box(100, 100, 200, 200), Box(60, 60, 90, 90)), TRUTH)  # background in b
    assert not is_true_link(replace(_link(Box(100, 100, 200, 200), Box(5, 5, 45, 45)),
                                    match=PairMatch("a", "c", Box(100, 100, 200, 200), Box(5, 5, 45, 45),
                                                    IDENTITY_AFFINE, 0.1, 10)), TRUTH)  # image without truth


def test_bad_arguments_are_refused():
    for argv in (["--arms", "magic"], ["--rounds", "0"], ["--steps", "0"], ["--minutes", "0"], ["--expert-ratio", "1.5"],
                 ["--expert-levels", "fine"], ["--rejected-positive", "augment"], ["--matched-negatives", "21"],
                 ["--rejected-weight", "-1"]):
        with pytest.raises(SystemExit) as err:
            parse_args(argv)
        assert err.value.code == 2


def test_small_flag_and_overrides_reach_the_round_config():
    _, config = parse_args(["--small", "--steps", "7", "--minutes", "2", "--lr", "0.001", "--seed", "3",
                            "--expert-ratio", "0.75", "--expert-levels", "all", "--expert-inliers", "off"])
    assert config.expert_pairs.inliers == "off"
    assert config.expert_pairs.anchor_levels is None and parse_args(["--expert-levels", "0,2"])[1].expert_pairs.anchor_levels == (0, 2)
    assert config.train.steps == 7 and config.train.minutes == 2 and config.train.lr == 0.001
    assert config.train.expert_ratio == 0.75
    assert config.seed == config.train.seed == 3
    assert config.train.features == config.features and config.features.max_side < FeatureConfig().max_side
    _, hard = parse_args(["--rejected-positive", "none", "--matched-negatives", "4", "--rejected-weight", "2"])
    assert hard.expert_pairs.rejected_positive == "none" and hard.expert_pairs.matched_negatives == 4
    assert hard.weights.rejected == 2.0


def test_two_rounds_of_two_arms_on_a_toy_demo(tmp_path, capsys):
    features = FeatureConfig(max_side=16, n_scales=3)
    train = TrainConfig(steps=2, checkpoint_every=1, batch_pairs=64, features=features,
                        mining=MiningConfig(n_proposals=64, verification_size=6, positive_square=6, min_vote_share=0.3))
    config = LoopConfig(rounds=2, verdicts_per_round=6, images=8, motifs=2, demo=DemoConfig(image_size=(240, 180)),
                        seed=1, features=features, train=train)
    rows = run_loop(tmp_path, config, ["mined+expert", "expert"], device="cpu")
    assert [(r.arm, r.round) for r in rows] == [(arm, i) for arm in ("mined+expert", "expert") for i in range(3)]
    for row in rows:
        assert 0.0 <= row.metrics["oneshot_map"] <= 1.0
    # Both arms start from one discovered base and one seed: the same first verdicts.
    assert rows[0].verdicts == rows[3].verdicts and rows[0].metrics == rows[3].metrics
    assert rows[2].verdicts >= rows[1].verdicts > 0
    table = format_table(rows).splitlines()
    assert table[0].split()[:4] == ["arm", "round", "verdicts", "confirmed"] and len(table) == 2 + len(rows)
    assert "[expert round 2]" in capsys.readouterr().out
    # Every round re-discovered: its model's discovery is judged against the demo's truth
    quality = measure_models(tmp_path / "expert", counts=(5, 10))
    assert [q.label for q in quality] == ["round 0", "round 1", "round 2"]
    assert len({q.model_id for q in quality}) == 3
    for q in quality:
        assert q.top[5].n_links <= 5 and q.top[10].n_links <= 10 and q.reviewed_pairs > 0
        assert 0.0 <= q.at_threshold.pair_precision <= 1.0
    lines = format_rows(quality).splitlines()
    assert lines[1].startswith("round 0") and "N = 10" in lines[5] and len(lines) == 1 + 3 + 2 + 3
