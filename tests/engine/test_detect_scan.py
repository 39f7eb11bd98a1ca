"""The dense scan's window scores (matmul + strided window sums) equal a convolution."""

import pytest
import torch
import torch.nn.functional as F

from engine.detect import FeatureBank, window_scores
from engine.features import FeaturePyramid


@pytest.mark.parametrize("channels_last", [False, True])
def test_window_scores_equal_a_convolution(channels_last):
    g = torch.Generator().manual_seed(0)
    level = F.normalize(torch.randn(3, 16, 9, 11, generator=g), dim=1)
    query = F.normalize(torch.randn(16, 4, 3, generator=g), dim=0)
    if channels_last:
        level = level.contiguous(memory_format=torch.channels_last)
    valid = torch.tensor([[9, 11], [9, 11], [9, 11]])
    expected = F.conv2d(level.contiguous(), query[None])[:, 0] / 12
    got = window_scores(level, valid, query)
    assert got.shape == (3, 6, 9)
    assert torch.allclose(got, expected, atol=1e-6)


def test_bank_levels_become_float32_channels_last_once():
    g = torch.Generator().manual_seed(1)
    pyramids = [FeaturePyramid((F.normalize(torch.randn(8, 5, 6, generator=g), dim=0),), (96, 80)) for _ in range(2)]
    bank = FeatureBank.build(["a", "b"], pyramids, dtype=torch.float16)
    (level,) = bank.compute_levels()
    assert level.dtype == torch.float32 and level.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(bank.pyramid(1).levels[0], pyramids[1].levels[0], atol=1e-3)  # values unchanged
