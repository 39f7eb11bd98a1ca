import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.features import FeatureConfig, FeaturePyramid, level_shape
from engine.types import Box
from engine.verify import (
    VerifyConfig,
    affine_from_triplets,
    both_ways,
    candidate_groups,
    column_max,
    dense_matches,
    detail_labels,
    discovery_score,
    hough_candidates,
    keep_best,
    large_components,
    mutual_nearest,
    mutual_nearest_levels,
    plausible,
    ransac,
    stack_pairs,
    surviving_inliers,
    verify_pair,
    verify_pairs,
)

C = 32
SIZE_A = (640, 480)  # 40 x 30 cells of 16 px at the reference level


def _unit(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(C, *shape, generator=gen), dim=0)


def _random_pyramid(seed: int, size: tuple[int, int]) -> FeaturePyramid:
    gen = torch.Generator().manual_seed(seed)
    return FeaturePyramid(tuple(_unit(gen, *level_shape(size, s)) for s in FeatureConfig().sides()), size)


def _affine(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(math.radians(degrees)), scale * math.sin(math.radians(degrees))
    return np.array([[c, -s, tx], [s, c, ty]])


def _with_copies(a: FeaturePyramid, size_b, copies, seed: int, noise: float = 0.3, sub: int = 4) -> FeaturePyramid:
    """B's pyramid: random features, plus each (affine, box of A) copy of A's reference cells.

    Each B cell averages the A features its footprint covers (sub x sub samples mapped back
    through the affine), so a level whose cells match the copy's scale holds near-exact
    copies and other levels hold blends, as a real pyramid would."""
    gen = torch.Generator().manual_seed(seed)
    ref = a.levels[0]
    _, ha, wa = ref.shape
    cax, cay = a.cell_size(0)
    levels = []
    for side in FeatureConfig().sides():
        h, w = level_shape(size_b, side)
        offsets = (np.arange(sub) + 0.5) / sub
        xs, ys = np.meshgrid(((np.arange(w)[:, None] + offsets) * size_b[0] / w).ravel(),
                             ((np.arange(h)[:, None] + offsets) * size_b[1] / h).ravel())
        total, covered = torch.zeros(C, h * sub, w * sub), np.zeros(xs.shape, dtype=bool)
        for affine, box in copies:
            inv = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))
            ax, ay = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2], inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
            inside = (ax >= box[0]) & (ax < box[2]) & (ay >= box[1]) & (ay < box[3]) & ~covered
            rows = torch.from_numpy(np.clip(ay / cay, 0, ha - 1).astype(int))
            cols = torch.from_numpy(np.clip(ax / cax, 0, wa - 1).astype(int))
            total += ref[:, rows, cols] * torch.from_numpy(inside).float()
            covered |= inside
        fraction = F.avg_pool2d(torch.from_numpy(covered).float()[None, None], sub)[0, 0]
        feats = F.avg_pool2d(total[None], sub)[0] + (1 - fraction) * _unit(gen, h, w)
        feats = feats + noise * torch.randn(C, h, w, generator=gen) / math.sqrt(C)
        levels.append(F.normalize(feats, dim=0))
    return FeaturePyramid(tuple(levels), size_b)


def _corners(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x0, y1, 1.0], [x1, y1, 1.0]])


def _mapped_box(affine: np.ndarray, box) -> Box:
    pts = _corners(box) @ np.asarray(affine).T
    return Box(*pts.min(0), *pts.max(0))


@pytest.fixture(scope="module")
def pyr_a() -> FeaturePyramid:
    return _random_pyramid(1, SIZE_A)


# ---------------------------------------------------------------- small pieces


def test_affine_from_triplets_known_answer():
    truth = torch.tensor([[0.8, -0.1, 5.0], [0.2, 1.1, -3.0]])
    src = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    dst = src @ truth[:, :2].T + truth[:, 2]
    affine, ok = affine_from_triplets(src, dst)
    assert ok.tolist() == [True, False]  # the second triplet is collinear
    assert torch.allclose(affine[0], truth, atol=1e-5)


def test_mutual_nearest_known_answer():
    a = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]), dim=2)  # (1, 3, 2)
    b = F.normalize(torch.tensor([[[0.1, 1.0], [1.0, 0.05], [0.0, 0.0]]]), dim=2)  # last row: padding
    index, sim, mutual = mutual_nearest(a, b, chunk_elements=1 << 10)
    assert index[0, :2].tolist() == [1, 0] and mutual[0].tolist() == [True, True, False]
    assert sim[0, 0].item() == pytest.approx(1.0 / math.hypot(1.0, 0.05))


def test_plausible_rejects_mirrors_and_stretches():
    affines = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]], [[-1.0, 0, 0], [0, 1.0, 0]], [[5.0, 0, 0], [0, 1.0, 0]]])
    assert plausible(affines, 3.0).tolist() == [True, False, False]


def test_keep_best_one_winner_per_key():
    key = torch.tensor([[0, 1, 0, 2, 1]])
    weight = torch.tensor([[0.5, 0.9, 0.7, 0.1, 0.9]])
    mask = torch.tensor([[True, True, True, False, True]])
    assert keep_best(key, weight, mask, 3).tolist() == [[False, True, True, False, False]]


def test_large_components_are_4_connected_per_grid():
    grids = np.zeros((2, 5, 5), dtype=bool)
    grids[0, 0, 0:3] = True  # 3 cells in a row
    grids[0, 2, 2] = grids[0, 3, 3] = True  # diagonal neighbours: not 4-connected
    grids[1, 0, 0] = True  # touches grid 0's component across grids only
    kept = large_components(grids, 3)
    assert kept.sum() == 3 and kept[0, 0, 0:3].all()


def test_large_components_8_connected_joins_diagonals():
    grids = np.zeros((1, 5, 5), dtype=bool)
    grids[0, 1, 1] = grids[0, 2, 2] = grids[0, 3, 3] = True  # a diagonal line of 3
    assert large_components(grids, 3, connectivity=8).sum() == 3
    assert large_components(grids, 3, connectivity=4).sum() == 0


def test_surviving_inliers_need_large_components_on_both_grids_until_stable():
    # Region 0: four inliers in a row on A. On B, the first three sit together and the
    # fourth lands far away: it goes; with it gone, A's row is 3 long and stays.
    # Region 1: three inliers together on A but scattered on B: all go, and the A cells
    # they free then leave nothing behind.
    a = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [1, 2, 0], [1, 2, 1], [1, 2, 2]])
    b = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 4, 4], [1, 0, 0], [1, 2, 2], [1, 4, 4]])
    alive = surviving_inliers(a, b, (5, 5), (5, 5), min_size=3, connectivity=8, both=True)
    assert alive.tolist() == [True, True, True, False, False, False, False]
    only_a = surviving_inliers(a, b, (5, 5), (5, 5), min_size=3, connectivity=8, both=False)
    assert only_a.all()
    # A removal that cascades: on A, inliers 0-2 form a component only through 1, which
    # B drops (0 and 2 sit in a large component of B); then 0 and 2 are isolated on A and
    # go in the next pass; the other three hold on both grids.
    a2 = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 3, 3], [0, 3, 4], [0, 4, 3]])
    b2 = np.array([[0, 2, 1], [0, 4, 4], [0, 1, 1], [0, 2, 2], [0, 2, 3], [0, 3, 2]])
    assert surviving_inliers(a2, b2, (5, 5), (5, 5), 3, 8, True).tolist() == [False] * 3 + [True] * 3


def test_authors_score_is_similarity_over_inner_cells(pyr_a):
    """The authors' score: the inliers' similarities summed, over A's cells less a 3-cell
    border; the first version's Gaussian reading is lower on the same copy."""
    copy_box = (160, 96, 480, 352)
    pyr_b = _with_copies(pyr_a, (540, 405), [(_affine(0.8, 5.0, 60.0, 40.0), copy_box)], seed=2)
    plain = VerifyConfig(texture_weight=False)
    best = verify_pair(pyr_a, pyr_b, "a", "b", plain)[0]
    inner = (30 - 2 * 3) * (40 - 2 * 3)
    assert best.score <= best.n_inliers / inner + 1e-6  # each similarity is at most 1
    assert best.score > 0.6 * best.n_inliers / inner  # near copies: similarities well above 0.6
    gaussian = verify_pair(pyr_a, pyr_b, "a", "b", replace(plain, score="gaussian", margin=0))[0]
    assert gaussian.score < best.score
    assert gaussian.score <= gaussian.n_inliers / (30 * 40) + 1e-6


def test_margin_cells_take_no_part(pyr_a):
    """A copy of A's border strip only is not found with the authors' 3-cell margin."""
    strip = (0, 0, 640, 32)  # A's two top rows of cells
    pyr_b = _with_copies(pyr_a, (640, 480), [(_affine(1.0, 0.0, 0.0, 200.0), strip)], seed=4)
    plain = VerifyConfig(texture_weight=False, min_inliers=6)
    assert verify_pair(pyr_a, pyr_b, "a", "b", replace(plain, margin=0))
    assert not verify_pair(pyr_a, pyr_b, "a", "b", plain)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ransac_iterations"):
        VerifyConfig(ransac_iterations=0)
    with pytest.raises(ValueError, match="inlier_threshold"):
        VerifyConfig(inlier_threshold=0)
    with pytest.raises(ValueError, match="connectivity"):
        VerifyConfig(connectivity=6)
    with pytest.raises(ValueError, match="score"):
        VerifyConfig(score="median")
    with pytest.raises(ValueError, match="margin"):
        VerifyConfig(margin=-1)
    with pytest.raises(ValueError, match="precision"):
        VerifyConfig(precision="fp16")


# ---------------------------------------------------------------- known answers


def test_recovers_known_affine(pyr_a):
    truth = _affine(0.8, 5.0, 60.0, 40.0)
    copy_box = (160, 96, 480, 352)  # A cells 10..30 x 6..22
    pyr_b = _with_copies(pyr_a, (540, 405), [(truth, copy_box)], seed=2)
    found = verify_pair(pyr_a, pyr_b, "a", "b")
    assert found, "a copied region must verify"
    best = found[0]
    assert (best.image_a, best.image_b) == ("a", "b")
    error = np.abs(_corners(copy_box) @ np.array(best.affine).T - _corners(copy_box) @ truth.T).max()
    assert error < 6.0  # pixels; B's cells are 13.5 px
    assert best.box_a.iou(Box(*copy_box)) > 0.8
    assert best.box_b.iou(_mapped_box(truth, copy_box)) > 0.7
    assert best.n_inliers > 150 and 0.1 < best.score <= 1.0


def test_inlier_points_follow_the_known_affine(pyr_a):
    """The stored points are real correspondences: each A point lies in the region and maps
    through the true affine onto its B point (within a B cell), heaviest first, capped."""
    truth = _affine(0.8, 5.0, 60.0, 40.0)
    copy_box = (160, 96, 480, 352)
    pyr_b = _with_copies(pyr_a, (540, 405), [(truth, copy_box)], seed=2)
    best = verify_pair(pyr_a, pyr_b, "a", "b")[0]
    points = np.array(best.inliers)  # (K, 4)
    assert points.shape == (VerifyConfig().max_points, 4) and best.n_inliers > VerifyConfig().max_points
    xa, ya, xb, yb = points.T
    assert ((xa >= best.box_a.x0) & (xa <= best.box_a.x1) & (ya >= best.box_a.y0) & (ya <= best.box_a.y1)).all()
    mapped = np.stack([xa, ya, np.ones_like(xa)], 1) @ truth.T
    assert np.abs(mapped - points[:, 2:]).max() < 13.5  # B's cells are 13.5 px
    assert len({(x, y) for x, y in points[:, :2].tolist()}) == len(points)  # one-to-one
    few = verify_pair(pyr_a, pyr_b, "a", "b", VerifyConfig(max_points=5))[0]
    assert few.inliers == best.inliers[:5]  # the same heaviest points, fewer of them
    with pytest.raises(ValueError, match="max_points"):
        VerifyConfig(max_points=0)


def test_unrelated_pyramids_do_not_verify(pyr_a):
    copy = _with_copies(pyr_a, (540, 405), [(_affine(0.8, 5.0, 60.0, 40.0), (160, 96, 480, 352))], seed=2)
    reference = verify_pair(pyr_a, copy, "a", "b")[0].score
    found = verify_pair(pyr_a, _random_pyramid(3, (540, 405)), "a", "c")
    assert max((m.score for m in found), default=0.0) < 0.05 * reference


def test_two_copies_give_two_regions(pyr_a):
    box_1, box_2 = (32, 32, 256, 224), (384, 256, 608, 448)
    shift_1, shift_2 = _affine(1.0, 0.0, 300.0, 200.0), _affine(1.0, 0.0, -340.0, -210.0)
    pyr_b = _with_copies(pyr_a, SIZE_A, [(shift_1, box_1), (shift_2, box_2)], seed=4)
    found = verify_pair(pyr_a, pyr_b, "a", "b")
    assert len(found) == 2
    for truth, box in ((shift_1, box_1), (shift_2, box_2)):
        match = max(found, key=lambda m: m.box_a.iou(Box(*box)))
        assert match.box_a.iou(Box(*box)) > 0.7
        assert np.abs(np.array(match.affine)[:, :2] - truth[:, :2]).max() < 0.05
        error = np.abs(_corners(box) @ np.array(match.affine).T - _corners(box) @ truth.T).max()
        assert error < 8.0  # pixels, half a cell


def test_detail_labels_split_a_region_at_gaps():
    # region 0: cells 0-1, then 1 empty cell, cell 3, then 3 empty cells, cell 7; region 1: a diagonal.
    cells = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 3], [0, 0, 7], [1, 2, 2], [1, 3, 3]])
    assert detail_labels(cells, (2, 5, 9), gap=0).tolist() == [0, 0, 1, 2, 3, 3]
    assert detail_labels(cells, (2, 5, 9), gap=1).tolist() == [0, 0, 0, 1, 2, 2]
    assert detail_labels(cells, (2, 5, 9), gap=2).tolist() == [0, 0, 0, 0, 1, 1]  # never across regions
    assert detail_labels(np.zeros((0, 3), dtype=np.int64), (0, 5, 9), gap=1).shape == (0,)


def test_details_moved_together_are_separate_regions(pyr_a):
    """Two details that one affine maps (a figure and, far from it, a piece of scenery) are
    two tight regions, each with its own share of the score; -1 keeps one box round both."""
    shift = _affine(1.0, 0.0, 16.0, 32.0)
    box_1, box_2 = (32, 32, 192, 160), (400, 256, 592, 416)
    pyr_b = _with_copies(pyr_a, SIZE_A, [(shift, box_1), (shift, box_2)], seed=6)
    found = verify_pair(pyr_a, pyr_b, "a", "b")
    assert len(found) == 2
    for box in (box_1, box_2):
        match = max(found, key=lambda m: m.box_a.iou(Box(*box)))
        assert match.box_a.iou(Box(*box)) > 0.7
        assert np.abs(np.array(match.affine) - shift).max() < 4.0
    merged = verify_pair(pyr_a, pyr_b, "a", "b", VerifyConfig(split_gap=-1))
    assert merged[0].box_a.iou(Box(*box_1)) < 0.4 and merged[0].box_a.iou(Box(*box_2)) < 0.4
    assert merged[0].score == pytest.approx(sum(m.score for m in found), rel=0.02)


def test_degenerate_inputs_give_nothing(pyr_a):
    gen = torch.Generator().manual_seed(5)
    tiny = FeaturePyramid(tuple(_unit(gen, 1, 1) for _ in range(7)), (16, 16))
    assert verify_pair(tiny, tiny, "t", "t") == []
    assert verify_pair(tiny, pyr_a, "t", "a") == []
    assert verify_pair(pyr_a, tiny, "a", "t") == []
    one_level = FeaturePyramid((_unit(gen, 2, 3),), (48, 32))  # 6 cells: below min_inliers' reach
    assert verify_pair(one_level, FeaturePyramid((_unit(gen, 2, 3),), (48, 32)), "o", "p") == []
    assert verify_pair(one_level, one_level, "o", "o", VerifyConfig(min_inliers=7)) == []


def test_bad_inputs_name_the_image(pyr_a):
    other = FeaturePyramid((torch.zeros(C + 1, 4, 4),), (64, 64))
    with pytest.raises(ValueError, match="'b'"):
        verify_pair(pyr_a, other, "a", "b")
    with pytest.raises(ValueError, match="'e'"):
        verify_pair(pyr_a, FeaturePyramid((), (64, 64)), "a", "e")
    with pytest.raises(ValueError, match="batch_size"):
        list(verify_pairs([("a", "a")], lambda name: pyr_a, batch_size=0))


def test_batched_equals_one_by_one(pyr_a):
    pyramids = {
        "a": pyr_a,
        "copy": _with_copies(pyr_a, (540, 405), [(_affine(0.8, 5.0, 60.0, 40.0), (160, 96, 480, 352))], seed=2),
        "wide": _with_copies(pyr_a, (800, 400), [(_affine(1.25, -3.0, 100.0, 10.0), (64, 48, 320, 256))], seed=6),
        "noise": _random_pyramid(7, (400, 600)),
    }
    pairs = [("a", "copy"), ("a", "noise"), ("copy", "a"), ("a", "wide"), ("noise", "copy"), ("wide", "a")]
    config = VerifyConfig(ransac_iterations=300, precision="fp32")  # the exact switch: bit for bit
    batched = list(verify_pairs(pairs, pyramids.__getitem__, config, batch_size=4))
    assert [pair for pair, _ in batched] == pairs
    assert sum(len(found) for _, found in batched) >= 3
    for (a, b), found in batched:
        alone = verify_pair(pyramids[a], pyramids[b], a, b, config)
        assert len(found) == len(alone)
        for x, y in zip(found, alone):
            assert x.n_inliers == y.n_inliers and x.score == pytest.approx(y.score, abs=1e-5)
            assert np.allclose(x.box_a.as_list(), y.box_a.as_list()) and np.allclose(x.affine, y.affine, atol=1e-3)
            assert x.inliers == y.inliers


def _uniform_pyramid(sign: float, size: tuple[int, int]) -> FeaturePyramid:
    """Every cell the same unit vector (times ``sign``): all similarities to its opposite are -1."""
    v = F.normalize(torch.arange(1.0, C + 1.0), dim=0)
    return FeaturePyramid(tuple(sign * v[:, None, None].expand(C, *level_shape(size, s)).clone()
                                for s in FeatureConfig().sides()), size)


@pytest.fixture(scope="module")
def mixed(pyr_a) -> dict[str, FeaturePyramid]:
    """Pyramids of different shapes (so a batch pads), a copy, noise, and two opposite
    uniform images whose every similarity is negative (a padding column wins there)."""
    return {
        "a": pyr_a,
        "copy": _with_copies(pyr_a, (540, 405), [(_affine(0.8, 5.0, 60.0, 40.0), (160, 96, 480, 352))], seed=2),
        "noise": _random_pyramid(7, (400, 600)),
        "flat": _uniform_pyramid(1.0, (320, 240)),
        "anti": _uniform_pyramid(-1.0, (400, 200)),  # fewer cells than the others: padded
    }


def test_mutual_nearest_levels_equals_padded(mixed):
    pairs = [("a", "copy"), ("copy", "a"), ("noise", "a"), ("flat", "anti"), ("a", "noise"), ("anti", "flat")]
    batch = stack_pairs([(mixed[a], mixed[b], None) for a, b in pairs], pairs, torch.device("cpu"), margin=3)
    t_index, t_sim, t_mutual = mutual_nearest_levels(batch)  # (P, L, NA)
    for k in range(len(batch.feats_b)):
        index, sim, mutual = mutual_nearest(batch.feats_a, batch.feats_b[k], chunk_elements=1 << 30)
        assert torch.equal(t_index[:, k], index) and torch.equal(t_sim[:, k], sim)
        positive = sim > 0  # where the caller keeps a match; zero padding rows decide nothing there
        assert torch.equal(t_mutual[:, k][positive], mutual[positive])
        if k == 0:  # "flat" vs "anti": inner rows point past B's cells, at a padding column
            inner = batch.a_valid[3]
            assert (t_index[3, 0][inner] == batch.b_grid[3, 0].prod()).all() and (t_sim[3, 0] == 0).all()


def test_both_ways_equals_the_padded_path(mixed):
    pairs = [("a", "copy"), ("noise", "a"), ("flat", "anti"), ("copy", "noise")]
    assert both_ways(pairs[:2]) == [("a", "copy"), ("copy", "a"), ("noise", "a"), ("a", "noise")]
    config = VerifyConfig(ransac_iterations=300, precision="fp32")  # the exact switch
    padded = dict(verify_pairs(pairs + [(b, a) for a, b in pairs], mixed.__getitem__, config, batch_size=4,
                               reference=True))
    fast = list(verify_pairs(both_ways(pairs), mixed.__getitem__, config, batch_size=4))
    assert [pair for pair, _ in fast] == both_ways(pairs)
    assert sum(len(found) for found in padded.values()) >= 2  # the copy, found both ways
    for pair, found in fast:
        assert found == padded[pair]  # the same regions, bit for bit


def test_ransac_skipping_small_groups_changes_nothing(mixed):
    pairs = [("a", "copy"), ("noise", "a"), ("flat", "anti"), ("copy", "noise")]
    config = VerifyConfig(ransac_iterations=200)
    batch = stack_pairs([(mixed[a], mixed[b], None) for a, b in pairs], pairs, torch.device("cpu"))
    m = dense_matches(batch, chunk_elements=1 << 21, trimmed=True)
    group, in_group = candidate_groups(m, hough_candidates(m, batch, config), config)
    count = in_group.sum(-1)
    assert (count < 3).any() and (count >= 3).any()  # both kinds of group are there
    uniform = torch.rand(config.n_candidates, config.ransac_iterations, 3, generator=torch.Generator().manual_seed(0))
    skipped = ransac(m, group, in_group, config, uniform, skip_small=True)
    scored = ransac(m, group, in_group, config, uniform, skip_small=False)
    live = count >= 3  # a small group has no hypothesis: its affine is never read (its score is -1)
    assert torch.equal(skipped[0][live], scored[0][live]) and torch.equal(skipped[1], scored[1])
    assert (skipped[1][count < 3] == -1).all()


def test_discovery_score_of_a_region(pyr_a):
    copy_box = (160, 96, 480, 352)
    pyr_b = _with_copies(pyr_a, (540, 405), [(_affine(0.8, 5.0, 60.0, 40.0), copy_box)], seed=2)
    whole = verify_pair(pyr_a, pyr_b, "a", "b")[0].score
    inside, match = discovery_score(pyr_a, pyr_b, Box(208, 144, 432, 304))
    assert match is not None and inside > 2 * whole  # N counts only the query's cells
    assert match.box_a.x0 >= 208 - 16 and match.box_a.x1 <= 432 + 16
    outside, _ = discovery_score(pyr_a, pyr_b, Box(0, 368, 160, 480))
    assert outside < 0.2 * inside
    assert discovery_score(pyr_a, pyr_b, Box(1, 1, 6, 6)) == (0.0, None)  # no cell centre inside


# ---------------------------------------------------------------- real features


def test_real_image_copy_with_effnet(effnet):
    """The cat's head of skimage's chelsea, pasted 1.2x larger into a 480x360 noise image."""
    skimage_data = pytest.importorskip("skimage.data")
    from engine.features import extract_pyramid

    source = skimage_data.chelsea()  # 451 x 300
    crop = (120, 20, 330, 230)  # the cat's head, in source pixels
    scale, x, y = 1.2, 170, 80
    patch = torch.from_numpy(source[crop[1] : crop[3], crop[0] : crop[2]]).permute(2, 0, 1)[None].float()
    size = (round((crop[2] - crop[0]) * scale), round((crop[3] - crop[1]) * scale))
    patch = F.interpolate(patch, size=(size[1], size[0]), mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    target = np.random.default_rng(0).integers(0, 256, (360, 480, 3)).astype(np.uint8)
    target[y : y + size[1], x : x + size[0]] = patch.round().clamp(0, 255).byte().numpy()
    pyr_a = extract_pyramid(effnet, source, FeatureConfig(n_scales=1))  # A is matched at level 0 only
    pyr_b = extract_pyramid(effnet, target)
    found = verify_pair(pyr_a, pyr_b, "chelsea", "pasted")
    assert found
    truth = Box(x, y, x + size[0], y + size[1])
    assert found[0].box_b.iou(truth) > 0.5
    assert found[0].box_a.iou(Box(*crop)) > 0.4
    affine = np.array(found[0].affine)
    assert np.allclose(affine[:, :2], scale * np.eye(2), atol=0.15)  # the paste's scale, no rotation


# ---------------------------------------------------------------- fast reductions, bf16 similarities


@pytest.mark.parametrize("widths", [(5,), (64, 64), (130, 1, 70), (0, 200, 3)])
def test_grouped_maxima_equal_torch_max(widths):
    """Per level (whole groups of columns, padding -inf), the first maximum, as torch.max."""
    from engine.verify import _ARGMAX_GROUP, _level_argmax

    gen = torch.Generator().manual_seed(sum(widths))
    padded = [-(-w // _ARGMAX_GROUP) * _ARGMAX_GROUP for w in widths]
    level = torch.repeat_interleave(torch.arange(len(widths)), torch.tensor(padded) // _ARGMAX_GROUP)
    for values in (torch.randn(37, sum(padded), generator=gen), torch.randint(0, 3, (37, sum(padded)), generator=gen).float()):
        start = 0
        for w, width in zip(widths, padded):  # the coarse values tie everywhere: the first wins
            values[:, start + w : start + width] = -math.inf
            start += width
        best, index = _level_argmax(values, level, len(widths))
        start = 0
        for k, (w, width) in enumerate(zip(widths, padded)):
            if w:
                expected = values[:, start : start + w].max(dim=1)
                assert torch.equal(best[:, k], expected.values) and torch.equal(index[:, k] - start, expected.indices)
            else:
                assert (best[:, k] == -math.inf).all()
            start += width


@pytest.mark.parametrize("shape", [(5, 7), (31, 9), (32, 9), (301, 1027)])
def test_folded_column_max_equals_amax(shape):
    values = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(column_max(values), values.amax(dim=0))
    assert column_max(torch.zeros(100, 0)).shape == (0,)


def test_product_dtype_follows_the_cpu():
    from engine.features import cpu_has_native_bf16

    assert VerifyConfig(precision="fp32").product_dtype() is None
    assert VerifyConfig(precision="bf16").product_dtype() == torch.bfloat16
    assert VerifyConfig().product_dtype() == (torch.bfloat16 if cpu_has_native_bf16() else None)


def test_bf16_similarities_keep_the_matches(mixed):
    """bf16 products only rank: nearly every mutual match is the float32 one, and every
    kept similarity is float32-exact (recomputed), so scores barely move."""
    pairs = [("a", "copy"), ("copy", "a"), ("noise", "a"), ("flat", "anti"), ("a", "noise"), ("anti", "flat")]
    batch = stack_pairs([(mixed[a], mixed[b], None) for a, b in pairs], pairs, torch.device("cpu"), margin=3)
    index, sim, mutual = mutual_nearest_levels(batch)
    l_index, l_sim, l_mutual = mutual_nearest_levels(batch, torch.bfloat16)
    valid = batch.a_valid[:, None]
    kept, l_kept = mutual & (sim > 0) & valid, l_mutual & (l_sim > 0) & valid
    both = kept & l_kept & (index == l_index)
    same, total = int(both.sum()), int((kept | l_kept).sum())
    assert torch.allclose(l_sim[both], sim[both], atol=1e-5)  # recomputed in float32
    assert total > 500 and same / total > 0.95  # measured 0.967 (random features: many near-ties)
    exact = verify_pair(mixed["a"], mixed["copy"], "a", "copy", VerifyConfig(precision="fp32"))[0]
    fast = verify_pair(mixed["a"], mixed["copy"], "a", "copy", VerifyConfig(precision="bf16"))[0]
    assert fast.box_a.iou(exact.box_a) > 0.9 and fast.score == pytest.approx(exact.score, rel=0.02)


def test_window_max_equals_max_pool():
    from engine.verify import _window_max

    gen = torch.Generator().manual_seed(3)
    for shape, radius in (((4, 9, 11), 2), ((2, 3, 2), 2), ((1, 6, 6), 1)):
        x = torch.randn(*shape, generator=gen)
        k = 2 * radius + 1
        pooled = F.max_pool2d(x[:, None], k, stride=1, padding=radius)[:, 0] if min(shape[1:]) > radius else None
        if pooled is not None:
            assert torch.equal(_window_max(x, radius), pooled)
    x = torch.zeros(1, 7, 7)
    x[0, 3, 3] = 1.0
    assert _window_max(x, 2)[0, 1:6, 1:6].eq(1).all() and _window_max(x, 2).sum() == 25


def test_separable_smoothing_equals_the_2d_kernel():
    from engine.verify import _smooth_separable, _vote_kernel

    gen = torch.Generator().manual_seed(4)
    votes = (torch.rand(3, 12, 15, generator=gen) > 0.8).float() * torch.rand(3, 12, 15, generator=gen)
    for tolerance in (2.0, 1.5):
        kernel = _vote_kernel(tolerance, votes.device)
        conv = F.conv2d(votes[:, None], kernel, padding=kernel.shape[-1] // 2)[:, 0]
        assert torch.allclose(_smooth_separable(votes, tolerance), conv, atol=1e-5)
    one = torch.zeros(1, 5, 5)
    one[0, 2, 2] = 1.0
    assert torch.allclose(_smooth_separable(one, 2.0)[0], _vote_kernel(2.0, one.device)[0, 0])  # the kernel itself
