"""Mirror-aware verification and detection: a synthetic pair with a known flip."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.detect import DetectConfig, FeatureBank, detect
from engine.features import FeatureCache, FeatureConfig, FeaturePyramid, extract_pyramid
from engine.mirror import (
    cache_mirrored_features,
    detect_mirrored,
    flip_pyramid,
    merge_mirrored,
    mirror_box,
    mirror_hash,
    unmirror_affine,
    unmirror_match,
    verify_pairs_mirrored,
)
from engine.types import Box, PairMatch
from engine.verify import verify_pair
from tests.conftest import textured
from tests.engine.test_verify import SIZE_A, _corners, _mapped_box, _random_pyramid, _with_copies

SIZE_B = (540, 405)
COPY_BOX = (160, 96, 480, 352)
# A mirrored copy at scale 0.8: x -> 500 - 0.8 x, y -> 0.8 y + 40 (negative determinant).
MIRRORED = np.array([[-0.8, 0.0, 500.0], [0.0, 0.8, 40.0]])


@pytest.fixture(scope="module")
def pyramids() -> dict[str, FeaturePyramid]:
    a = _random_pyramid(1, SIZE_A)
    return {"a": a, "b": _with_copies(a, SIZE_B, [(MIRRORED, COPY_BOX)], seed=2)}


def test_mirror_box_is_an_involution():
    box = Box(10, 20, 50, 60)
    assert mirror_box(box, 100) == Box(50, 20, 90, 60)
    assert mirror_box(mirror_box(box, 100), 100) == box


def test_unmirror_affine_composes_the_flip():
    to_flipped = ((0.8, 0.0, 40.0), (0.0, 0.8, 40.0))  # A -> mirror(B), width 540
    affine = np.array(unmirror_affine(to_flipped, 540.0))
    assert np.linalg.det(affine[:, :2]) < 0
    point = np.array([100.0, 50.0, 1.0])
    flipped_x = np.array(to_flipped) @ point
    assert np.allclose(affine @ point, [540.0 - flipped_x[0], flipped_x[1]])


def test_unmirrored_match_flips_its_points_into_b_s_frame():
    found = PairMatch("a", "mirror:b", Box(0, 0, 10, 10), Box(10, 0, 20, 10), ((1.0, 0.0, 10.0), (0.0, 1.0, 0.0)),
                      0.5, 2, inliers=((1.0, 2.0, 11.0, 2.0), (5.0, 6.0, 15.0, 6.0)))
    match = unmirror_match(found, "b", 100.0)
    assert match.image_b == "b" and match.mirrored
    assert match.inliers == ((1.0, 2.0, 89.0, 2.0), (5.0, 6.0, 85.0, 6.0))
    affine = np.array(match.affine)  # the points still follow the (unmirrored) affine
    assert np.allclose(np.c_[np.array(match.inliers)[:, :2], np.ones(2)] @ affine.T, np.array(match.inliers)[:, 2:])


def test_direct_verification_misses_a_mirrored_copy(pyramids):
    found = verify_pair(pyramids["a"], pyramids["b"], "a", "b")
    assert not any(m.box_a.iou(Box(*COPY_BOX)) > 0.5 and m.score > 0.1 for m in found)


def test_mirrored_verification_recovers_the_flip(pyramids):
    (pair, found), = verify_pairs_mirrored([("a", "b")], pyramids.__getitem__,
                                           lambda n: flip_pyramid(pyramids[n]))
    assert pair == ("a", "b") and found
    best = found[0]
    assert best.mirrored and (best.image_a, best.image_b) == ("a", "b")
    affine = np.array(best.affine)
    assert np.linalg.det(affine[:, :2]) < 0
    error = np.abs(_corners(COPY_BOX) @ affine.T - _corners(COPY_BOX) @ MIRRORED.T).max()
    assert error < 6.0  # pixels; B's cells are 13.5 px
    assert best.box_a.iou(Box(*COPY_BOX)) > 0.8
    assert best.box_b.iou(_mapped_box(MIRRORED, COPY_BOX)) > 0.7
    points = np.array(best.inliers)  # in B's own frame, as the boxes and the affine
    assert len(points) > 10
    mapped = np.c_[points[:, :2], np.ones(len(points))] @ MIRRORED.T
    assert np.abs(mapped - points[:, 2:]).max() < 13.5  # B's cells are 13.5 px


def test_a_direct_copy_stays_direct(pyramids):
    """No mirror twin displaces a direct copy, and the direct affine is kept."""
    direct = np.array([[0.8, 0.0, 40.0], [0.0, 0.8, 40.0]])
    pyr_c = _with_copies(pyramids["a"], SIZE_B, [(direct, COPY_BOX)], seed=3)
    get = {"a": pyramids["a"], "c": pyr_c}.__getitem__
    (_, found), = verify_pairs_mirrored([("a", "c")], get, lambda n: flip_pyramid(get(n)))
    assert found and not found[0].mirrored
    assert np.linalg.det(np.array(found[0].affine)[:, :2]) > 0


def _match(box_a, box_b, score, mirrored=False):
    return PairMatch("a", "b", Box(*box_a), Box(*box_b), ((1, 0, 0), (0, 1, 0)), score, 10, mirrored)


def test_merge_keeps_the_better_twin_and_distinct_regions():
    direct = [_match((0, 0, 10, 10), (0, 0, 10, 10), 0.2)]
    twin = _match((1, 0, 10, 10), (0, 0, 10, 10), 0.3, mirrored=True)
    other = _match((50, 50, 60, 60), (0, 0, 10, 10), 0.1, mirrored=True)
    assert merge_mirrored(direct, [twin, other]) == [twin, other]
    assert merge_mirrored(direct, []) == direct


def _map(seed, c, h, w):
    return F.normalize(torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed)), dim=0)


def test_detect_mirrored_finds_the_flipped_copy():
    query = _map(0, 16, 4, 6)
    level = _map(1, 16, 20, 20)
    level[:, 5:9, 8:14] = torch.flip(query, dims=(2,))  # a mirror copy at rows 5-8, cols 8-13
    bank = FeatureBank.build(["x"], [FeaturePyramid((level,), (320, 320))])
    config = DetectConfig(top_k=5)
    plain = detect(query, bank, config)
    both = detect_mirrored(query, torch.flip(query, dims=(2,)), bank, config)
    truth = Box(8 * 16, 5 * 16, 14 * 16, 9 * 16)
    assert both[0].mirrored and both[0].box.iou(truth) > 0.95 and both[0].score == pytest.approx(1.0, abs=1e-5)
    assert plain[0].score < 0.5  # the direct query does not see it
    assert [d.score for d in both] == sorted((d.score for d in both), reverse=True)


def test_cached_mirror_features_are_the_flipped_images(tmp_path, random_effnet):
    rgb = textured(7, 64, 96)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    config = FeatureConfig(max_side=4, n_scales=2)
    failed = cache_mirrored_features(random_effnet, [("x", path), ("bad", tmp_path / "no.png")],
                                     {"x": "h1", "bad": "h2"}, config, tmp_path / "cache")
    assert len(failed) == 1
    cached = FeatureCache(tmp_path / "cache", random_effnet.model_id, config).get(mirror_hash("h1"))
    expected = extract_pyramid(random_effnet, np.ascontiguousarray(rgb[:, ::-1]), config)
    assert cached.image_size == (96, 64)
    for got, want in zip(cached.levels, expected.levels):
        assert torch.allclose(got.float(), want, atol=2e-3)
