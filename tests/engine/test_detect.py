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
