"""Precision of training positives against ground-truth copies."""

from __future__ import annotations

import torch

from engine.detect import FeatureBank
from engine.features import FeaturePyramid
from engine.mining import PairBatch
from engine.types import Box
from hitl.positive_precision import Copy, cell_centres, precision_by_source, right_pairs

# Two 100x100 images, one 10x10-cell level: a cell is 10 px.
BANK = FeatureBank.build(["a", "b"], [FeaturePyramid((torch.zeros(2, 10, 10),), (100, 100))] * 2)
TRUTH = {"a": [Copy("a", "cat", Box(0, 0, 30, 30)), Copy("a", "cup", Box(60, 60, 100, 100))],
         "b": [Copy("b", "cat", Box(50, 50, 80, 80))]}


def _batch(pairs, sources, mask=None) -> PairBatch:
    anchor = torch.tensor([p[0] for p in pairs])
    positive = torch.tensor([p[1] for p in pairs])
    n = len(pairs)
    mask = torch.tensor(mask) if mask is not None else torch.ones(n, dtype=torch.bool)
    return PairBatch(anchor, positive, positive[:, None].expand(-1, 2, -1).clone(), mask, torch.tensor(sources))


def test_cell_centres_in_pixels():
    assert cell_centres(BANK, torch.tensor([[0, 0, 0, 0], [1, 0, 2, 7]])).tolist() == [[5.0, 5.0], [75.0, 25.0]]


def test_a_pair_is_right_only_between_copies_of_one_motif():
    batch = _batch([
        ([0, 0, 1, 1], [1, 0, 6, 6]),  # cat (15, 15) -> cat (65, 65): right
        ([0, 0, 7, 7], [1, 0, 6, 6]),  # cup -> cat: wrong
        ([0, 0, 1, 1], [1, 0, 1, 1]),  # cat -> scenery: wrong
        ([0, 0, 1, 1], [-1, -1, -1, -1]),  # negatives only: never counted
    ], [PairBatch.MINED, PairBatch.MINED, PairBatch.EXPERT, PairBatch.EXPERT], [True, True, True, False])
    assert right_pairs(batch, BANK, TRUTH).tolist() == [True, False, False, False]
    assert precision_by_source(batch, BANK, TRUTH) == {"mined": {"pairs": 2, "precision": 0.5},
                                                       "expert": {"pairs": 1, "precision": 0.0}}
    assert right_pairs(batch, BANK, {}).tolist() == [False] * 4
    assert precision_by_source(PairBatch.empty(2), BANK, TRUTH) == {}
