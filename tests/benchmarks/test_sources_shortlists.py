"""benchmarks/sources.py: the shortlist variants compared for issue 9 item 2, on hand-made scores."""

from __future__ import annotations

import pytest
import torch

from benchmarks.sources import SHORTLISTS, VOTES, common_neighbours, csls, rank_fusion
from engine.shortlist import ShortlistConfig

# Image 0 is a hub (everyone's best, 0.70-0.72); images 1 and 2 share a detail (0.6).
HUB = torch.tensor([[0.0, 0.72, 0.71, 0.70],
                    [0.72, 0.0, 0.60, 0.10],
                    [0.71, 0.60, 0.0, 0.05],
                    [0.70, 0.10, 0.05, 0.0]])


def test_csls_drops_the_hub():
    assert HUB[1].argmax() == 0
    out = csls(HUB, k=3)
    # r = mean of the 3 best: r0 = 0.71, r1 = 1.42 / 3, r2 = 1.36 / 3.
    assert out[1, 2] == pytest.approx(1.2 - 1.42 / 3 - 1.36 / 3)
    assert out[1, 0] == pytest.approx(1.44 - 1.42 / 3 - 0.71)
    assert out[1].argmax() == 2
    assert torch.allclose(out, out.T) and torch.all(out.diagonal() == 0)


def test_rank_fusion_counts_both_sides():
    out = rank_fusion(HUB, c=1.0)
    assert out[1, 0] == pytest.approx(2.0)  # first for each other: 1/1 + 1/1
    assert out[1, 2] == pytest.approx(1.0)  # second for each other
    assert out[1, 3] == pytest.approx(1 / 3 + 1 / 2)  # 1 ranks 3 third, 3 ranks 1 second


def test_common_neighbours_adds_shared_neighbours():
    out = common_neighbours(HUB, t=1, weight=0.5)
    # Top-1 lists: 0 -> 1, and 1, 2, 3 -> 0; neighbours either side: 0 has {1, 2, 3},
    # the others {0}. Images 1 and 2 share 0; 0 and 1 share nothing.
    assert out[1, 2] == pytest.approx(0.6 / 0.72 + 0.5)
    assert out[0, 1] == pytest.approx(1.0)
    assert torch.all(out.diagonal() == 0)


def test_every_variant_names_a_valid_shortlist():
    assert SHORTLISTS["centred, look cap 50 % (default)"].config == VOTES == ShortlistConfig()
    for variant in SHORTLISTS.values():
        assert variant.groups in (None, "look", "collection")
        assert variant.post is None or callable(variant.post)
