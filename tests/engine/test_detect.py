import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.detect import (
    DetectConfig,
    FeatureBank,
    detect,
    level_peaks,
    query_features,
    query_shape,
    window_scores,
)
from engine.features import FeaturePyramid
from engine.types import Box


def _rand_map(seed, c, h, w):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(c, h, w, generator=g), dim=0)


def test_query_shape_longer_side_is_8():
    assert query_shape(Box(0, 0, 200, 100), 8) == (4, 8)
    assert query_shape(Box(0, 0, 30, 300), 8) == (8, 1)


def test_window_score_is_one_where_query_was_cut():
    level = _rand_map(0, 16, 10, 12)
    query = level[:, 3:6, 4:8].clone()
    scores = window_scores(level[None], torch.tensor([[10, 12]]), query)
    assert scores.shape == (1, 8, 9)
    assert scores[0, 3, 4] == pytest.approx(1.0, abs=1e-5)
    assert scores[0].flatten().argmax().item() == 3 * 9 + 4


def test_window_scores_mask_padding():
    level = torch.zeros(1, 4, 6, 6)
    level[0, :, :3, :4] = F.normalize(torch.ones(4, 3, 4), dim=0)
    scores = window_scores(level, torch.tensor([[3, 4]]), F.normalize(torch.ones(4, 2, 2), dim=0))
    assert torch.isfinite(scores[0, :2, :3]).all()
    assert torch.isinf(scores[0, 2:, :]).all() and torch.isinf(scores[0, :, 3:]).all()


def test_level_peaks_are_local_maxima():
    s = torch.full((1, 5, 5), -1.0)
    s[0, 1, 1], s[0, 1, 2], s[0, 3, 3] = 0.9, 0.8, 0.7  # (1,2) is not a local max
    top, rows, cols = level_peaks(s, 2)
    assert top[0].tolist() == pytest.approx([0.9, 0.7])
    assert rows[0].tolist() == [1, 3] and cols[0].tolist() == [1, 3]


def _bank_with_copy():
    """Image 'b' holds image 'a's cells 2..6 x 3..8 at rows 4.., cols 1.."""
    a, b, c = _rand_map(1, 16, 10, 12), _rand_map(2, 16, 10, 12), _rand_map(3, 16, 10, 12)
    b[:, 4:8, 1:7] = a[:, 2:6, 3:9]
    pyrs = [FeaturePyramid((m,), (120, 100)) for m in (a, b, c)]
    return a, FeatureBank.build(["a", "b", "c"], pyrs)


def test_detect_finds_the_copy_in_original_pixels():
    a, bank = _bank_with_copy()
    dets = detect(a[:, 2:6, 3:9], bank, DetectConfig(top_k=3), exclude=("a", Box(30, 20, 90, 60)))
    assert dets[0].image_id == "b"
    assert dets[0].box.as_list() == pytest.approx([10.0, 40.0, 70.0, 80.0])
    assert dets[0].score == pytest.approx(1.0, abs=1e-3)
    assert all(not (d.image_id == "a" and d.box.iou(Box(30, 20, 90, 60)) > 0.3) for d in dets)


def test_detect_without_exclusion_returns_the_query_itself_first():
    a, bank = _bank_with_copy()
    dets = detect(a[:, 2:6, 3:9], bank, DetectConfig(top_k=2))
    assert {d.image_id for d in dets} == {"a", "b"}


def test_query_too_big_for_every_level_gives_nothing():
    _, bank = _bank_with_copy()
    assert detect(_rand_map(5, 16, 11, 2), bank) == []


def test_query_box_outside_image_is_refused(random_effnet):
    with pytest.raises(ValueError, match="outside"):
        query_features(random_effnet, np.zeros((50, 60, 3), np.uint8), Box(10, 10, 70, 40))


def test_empty_collection_is_refused():
    with pytest.raises(ValueError, match="no readable images"):
        FeatureBank.build([], [])


def test_real_backbone_finds_pasted_motif(effnet, image_folder):
    from engine.features import FeatureConfig, collection_features
    from hitl.oneshot import list_images

    items = list_images(image_folder)
    feats = collection_features(effnet, items, FeatureConfig(max_side=16, n_scales=4), None, progress=False)
    bank = FeatureBank.build(feats.image_ids, feats.pyramids)
    from engine.images import load_rgb

    q = query_features(effnet, load_rgb(image_folder / "img1.jpg"), Box(30, 20, 94, 68))
    dets = detect(q, bank, DetectConfig(top_k=5), exclude=("img1.jpg", Box(30, 20, 94, 68)))
    assert dets[0].image_id == "img4.jpg"
    assert dets[0].box.iou(Box(80, 50, 144, 98)) > 0.3


def _texture(seed: int = 0, height: int = 128, width: int = 192) -> np.ndarray:
    small = torch.rand(1, 3, height // 16 + 1, width // 16 + 1, generator=torch.Generator().manual_seed(seed))
    big = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return (big[0].permute(1, 2, 0) * 255).round().byte().numpy()


def test_query_context_is_cut_away_and_limited_by_the_image(effnet):
    rgb = _texture()
    middle = Box(64, 32, 128, 96)  # 8x8 cells of 8 px; context: 5 cells left and right, 4 above and below
    bare = query_features(effnet, rgb, middle, 8, context=0)
    framed = query_features(effnet, rgb, middle, 8, context=5)
    assert framed.shape == bare.shape == (effnet.channels, 8, 8)
    assert torch.allclose(framed.norm(dim=0), torch.ones(8, 8), atol=1e-4)
    # The border cells see real surroundings now, the centre barely changes.
    border = (bare[:, 0] * framed[:, 0]).sum(0).mean()
    centre = (bare[:, 3:5, 3:5] * framed[:, 3:5, 3:5]).sum(0).mean()
    assert centre > border and border < 0.99
    # A box filling the image has no room for context: the same crop as without.
    whole = Box(0, 0, 192, 128)
    assert torch.allclose(query_features(effnet, rgb, whole, 8, context=5), query_features(effnet, rgb, whole, 8), atol=1e-5)


def test_window_score_keeps_the_cells_directions_and_one_norm(effnet):
    rgb, box = _texture(1), Box(40, 24, 136, 104)
    cells = query_features(effnet, rgb, box, 8, context=5)
    window = query_features(effnet, rgb, box, 8, context=5, score="window")
    qh, qw = cells.shape[1:]
    assert window.norm().item() == pytest.approx((qh * qw) ** 0.5, rel=1e-4)
    assert torch.allclose(F.normalize(window, dim=0), cells, atol=1e-4)
    assert window.norm(dim=0).std() > 0  # raw magnitudes: cells weigh differently
    with pytest.raises(ValueError, match="score"):
        DetectConfig(score="max")
    with pytest.raises(ValueError, match="query_context"):
        DetectConfig(query_context=-1)


def test_bank_holds_each_pyramid_zero_padded_channels_last():
    """Images of different shapes (portrait, landscape), float16 in, float32 out: each level
    is the image's cells in its corner, zeros elsewhere, laid out channels-last."""
    pyramids = [FeaturePyramid((_rand_map(s, 6, h, w).half(), _rand_map(s + 9, 6, h // 2, w // 2).half()), (16 * w, 16 * h))
                for s, (h, w) in enumerate([(4, 6), (6, 4), (4, 6)])]
    bank = FeatureBank.build(["a", "b", "c"], pyramids, dtype=torch.float32)
    assert [tuple(level.shape) for level in bank.levels] == [(3, 6, 6, 6), (3, 6, 3, 3)]
    assert all(level.dtype == torch.float32 and level.is_contiguous(memory_format=torch.channels_last)
               for level in bank.levels)
    assert bank.valid[0].tolist() == [[4, 6], [6, 4], [4, 6]] and bank.valid[1].tolist() == [[2, 3], [3, 2], [2, 3]]
    for i, p in enumerate(pyramids):
        for k, level in enumerate(p.levels):
            h, w = level.shape[1:]
            assert torch.equal(bank.levels[k][i, :, :h, :w], level.float())
            padded = bank.levels[k][i].clone()
            padded[:, :h, :w] = 0
            assert not padded.any()
        assert torch.equal(bank.pyramid(i).levels[0], p.levels[0].float())
    assert bank.compute_levels()[0].data_ptr() == bank.levels[0].data_ptr()  # no conversion per query
