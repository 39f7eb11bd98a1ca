import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.features import FeaturePyramid
from engine.shortlist import (
    CellBag,
    ShortlistConfig,
    _capped_topk,
    _image_blocks,
    all_pairs,
    capped_neighbours,
    cell_bag,
    cell_image_best,
    centre_cells,
    distinctive_knn,
    gem_regions,
    global_descriptors,
    knn_graph,
    knn_pairs,
    look_alike_groups,
    region_backgrounds,
    shortlist_pairs,
    vote_scores,
)

R2 = 1 / math.sqrt(2)


def _hand_made() -> torch.Tensor:
    """Four images, two regions each, over the basis e0..e3 of R^4.

    A=[e0, e1], B=[e2, e3], C=[e1, (e2+e3)/√2], D=[(e0+e2)/√2, e3]: A and C share one
    region exactly (1.0), so do B and D; every other pair peaks at 1/√2 or 1/2 or 0.
    """
    e = torch.eye(4)
    return torch.stack([
        torch.stack([e[0], e[1]]),
        torch.stack([e[2], e[3]]),
        torch.stack([e[1], (e[2] + e[3]) * R2]),
        torch.stack([(e[0] + e[2]) * R2, e[3]]),
    ])


def test_knn_known_answer_uses_best_region_pair():
    pairs = knn_pairs(_hand_made(), k=1, device="cpu")
    assert [(i, j) for i, j, _ in pairs] == [(0, 2), (1, 3)]
    assert [s for _, _, s in pairs] == pytest.approx([1.0, 1.0])


def test_k_at_least_n_minus_1_gives_all_pairs_sorted():
    pairs = knn_pairs(_hand_made(), k=10, device="cpu")
    assert [(i, j) for i, j, _ in pairs] == [(0, 2), (1, 3), (0, 3), (1, 2), (2, 3), (0, 1)]
    assert [s for _, _, s in pairs] == pytest.approx([1.0, 1.0, R2, R2, R2, 0.0], abs=1e-6)
    assert {(i, j) for i, j, _ in pairs} == set(all_pairs(4))


def test_blocked_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(53, 3, 8, generator=gen), dim=2)
    # Tiny blocks on both sides: 8 database blocks, one query image per block.
    idx, sim = knn_graph(desc, k=5, device="cpu", block=7, max_block_elems=7 * 9)
    flat = desc.reshape(-1, 8)
    full = (flat @ flat.T).view(53, 3, 53, 3).amax(3).amax(1)
    full.fill_diagonal_(-float("inf"))
    want_sim, want_idx = full.topk(5, dim=1)
    assert torch.equal(idx, want_idx)
    assert torch.allclose(sim, want_sim, atol=1e-6)
    pairs = knn_pairs(desc, k=5, device="cpu", block=7)
    want = {(min(i, int(j)), max(i, int(j))) for i in range(53) for j in want_idx[i]}
    assert {(i, j) for i, j, _ in pairs} == want
    assert len(pairs) == len(want)
    sims = [s for _, _, s in pairs]
    assert sims == sorted(sims, reverse=True)


def test_single_descriptor_per_image_accepted():
    desc = torch.eye(3)
    pairs = knn_pairs(desc, k=1, device="cpu")
    assert len(pairs) in (2, 3) and all(i < j for i, j, _ in pairs)


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_images_give_no_pairs(n):
    assert knn_pairs(torch.zeros(n, 14, 8), k=20, device="cpu") == []
    assert all_pairs(n) == []


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="k must be"):
        knn_pairs(torch.zeros(3, 2, 4), k=0)
    with pytest.raises(ValueError, match="shape"):
        knn_pairs(torch.zeros(3, 2, 4, 1), k=1)
    with pytest.raises(ValueError, match=">= 0"):
        all_pairs(-1)
    with pytest.raises(ValueError, match="grids"):
        ShortlistConfig(grids=(0,))


def test_all_pairs():
    assert all_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert len(all_pairs(10)) == 45


def test_gem_regions_known_answers():
    fmap = torch.zeros(2, 4, 4)
    fmap[0] = 1.0
    fmap[1, :2, :2] = -2.0  # only the top-left 2x2 cell carries channel 1, negative
    desc = gem_regions(fmap, (1, 2), p=1.0)
    assert desc.shape == (5, 2)
    assert torch.allclose(desc.norm(dim=1), torch.ones(5))
    # Top-left cell of the 2x2 grid: (1, -2) normalised; the other cells: (1, 0).
    assert torch.allclose(desc[1], torch.tensor([1.0, -2.0]) / math.sqrt(5))
    assert torch.allclose(desc[2:], torch.tensor([[1.0, 0.0]] * 3))
    # Whole map with p=1 is the plain mean (1, -0.5), normalised; a large p nears the max.
    assert torch.allclose(desc[0], torch.tensor([1.0, -0.5]) / math.sqrt(1.25))
    big_p = gem_regions(fmap, (1,), p=50.0)[0]
    assert big_p[1] / big_p[0] < -1.5


def test_shared_detail_brings_images_together():
    gen = torch.Generator().manual_seed(1)
    maps = torch.nn.functional.normalize(torch.randn(3, 16, 12, 12, generator=gen), dim=1)
    maps[1, :, 8:, 8:] = maps[0, :, :4, :4]  # one ninth of image 0 reappears in image 1
    pyramids = [FeaturePyramid((m.half(), m[:, ::2, ::2].half()), (480, 480)) for m in maps]
    desc = global_descriptors(pyramids, ShortlistConfig(level=0, grids=(1, 2, 3)))
    assert desc.shape == (3, 14, 16) and desc.dtype == torch.float32
    assert torch.allclose(desc.norm(dim=2), torch.ones(3, 14), atol=1e-5)
    best = knn_pairs(desc, k=1, device="cpu")[0]
    assert best[:2] == (0, 1) and best[2] == pytest.approx(1.0, abs=1e-3)
    whole_only = knn_pairs(desc[:, :1], k=2, device="cpu")
    assert max(s for *_, s in whole_only) < 0.9


def test_global_descriptors_checks_levels_and_channels():
    a = FeaturePyramid((torch.ones(4, 3, 3),), (48, 48))
    b = FeaturePyramid((torch.ones(5, 3, 3),), (48, 48))
    with pytest.raises(ValueError, match="image 1"):
        global_descriptors([a, b])
    with pytest.raises(ValueError, match="no pyramid level 2"):
        global_descriptors([a], ShortlistConfig(level=2))
    assert global_descriptors([]).shape[0] == 0


def test_default_pools_the_coarsest_level():
    fine = torch.zeros(2, 4, 4)
    fine[0] = 1.0
    coarse = torch.zeros(2, 2, 2)
    coarse[1] = 1.0
    desc = global_descriptors([FeaturePyramid((fine, coarse), (64, 64))])
    assert desc.shape == (1, 85, 2)  # 1 + 2x2 + 4x4 + 8x8 regions
    assert torch.allclose(desc[0], torch.tensor([0.0, 1.0]).expand(85, 2))


def test_global_descriptors_tiny_map():
    # A 1x2 map still yields 85 regions (finer grids reuse cells).
    pyr = FeaturePyramid((torch.tensor(np.ones((4, 1, 2), dtype=np.float16)),), (32, 16))
    assert global_descriptors([pyr]).shape == (1, 85, 4)


# ------------------------------------------------------------ distinctive shortlist


def _template_collection(n: int = 6, c: int = 64) -> torch.Tensor:
    """(n, 3, c): region 0 is one template element shared by every image (cosine 1);
    region 1 is unique per image; region 2 is a detail copied between images 0 and 3 only,
    redrawn (cosine 0.8), and unique elsewhere."""
    g = torch.Generator().manual_seed(0)
    desc = F.normalize(torch.randn(n, 3, c, generator=g), dim=2)
    template = F.normalize(torch.randn(c, generator=g), dim=0)
    desc[:, 0] = template
    detail, noise = F.normalize(torch.randn(2, c, generator=g), dim=1)
    noise = F.normalize(noise - (noise @ detail) * detail, dim=0)
    desc[0, 2] = detail
    desc[3, 2] = 0.8 * detail + 0.6 * noise
    return desc


def test_region_backgrounds_are_high_for_template_and_low_for_details():
    desc = _template_collection()
    bg = region_backgrounds(desc, k=2)
    assert bg.shape == (6, 3)
    assert torch.allclose(bg[:, 0], torch.ones(6))
    assert bg[0, 2] < 0.6  # its best other image (3) at 0.8, its second at random


def test_distinctive_score_finds_the_copy_that_max_region_misses():
    desc = _template_collection()
    config = ShortlistConfig(k=1, top_regions=1, background_k=2, same_group_share=1.0, scoring="distinctive")
    first, _ = knn_graph(desc, 1)
    assert first[0, 0] != 3  # the template ties every image at cosine 1
    neighbours, score = distinctive_knn(desc, config)
    assert neighbours[0, 0] == 3 and neighbours[3, 0] == 0
    assert score[0, 0] > 0.1


def test_group_cap_keeps_room_for_other_groups():
    desc = _template_collection()
    groups = np.array([0, 0, 0, 0, 1, 1])
    config = ShortlistConfig(k=2, top_regions=1, background_k=2, same_group_share=0.5, scoring="distinctive")
    capped, _ = distinctive_knn(desc, config, groups)
    assert capped[0, 0] == 3  # its best match, from its own group
    assert int(capped[0, 1]) in (4, 5)  # the cap leaves the second place to the other group
    uncapped, _ = distinctive_knn(desc, config, np.full(6, -1))  # -1: in no group, never capped
    assert torch.equal(uncapped, distinctive_knn(desc, config, None)[0])


def test_capped_topk_fills_with_look_alikes_when_nothing_else_is_left():
    scores = torch.tensor([[5.0, 4.0, 3.0, 1.0, -torch.inf]])
    same = torch.tensor([[True, True, True, False, False]])
    idx, val = _capped_topk(scores, same, k=4, k_same=1)
    assert idx.tolist() == [[0, 3, 1, 2]]
    assert val.tolist() == [[5.0, 1.0, 4.0, 3.0]]


def test_look_alike_groups():
    g = torch.Generator().manual_seed(2)
    centres = F.normalize(torch.randn(2, 16, generator=g), dim=1)
    desc = F.normalize(centres.repeat_interleave(12, 0) + 0.05 * torch.randn(24, 16, generator=g), dim=1)
    labels = look_alike_groups(desc, min_group=5)
    assert len(set(labels[:12].tolist())) == 1 and len(set(labels[12:].tolist())) == 1
    assert labels[0] != labels[12] and labels[0] >= 0
    assert (look_alike_groups(desc[:6], min_group=5) == -1).all()


def test_shortlist_pairs_dispatches_and_validates():
    desc = _template_collection()
    assert shortlist_pairs(desc, ShortlistConfig(k=1, scoring="max"))
    pairs = shortlist_pairs(desc, ShortlistConfig(k=1, top_regions=1, background_k=2, scoring="distinctive"))
    assert (0, 3) == pairs[0][:2]
    with pytest.raises(ValueError, match="scoring"):
        ShortlistConfig(scoring="best")
    with pytest.raises(ValueError, match="same_group_share"):
        ShortlistConfig(same_group_share=0)


def test_texture_weighted_regions_ignore_script():
    fmap = torch.zeros(2, 4, 4)
    fmap[0] = 1.0  # script everywhere...
    fmap[1, 2:, 2:] = 1.0  # ...and a picture in one corner
    fmap[0, 2:, 2:] = 0.0
    weights = torch.full((4, 4), 0.1)
    weights[2:, 2:] = 1.0
    desc = gem_regions(fmap, (1, 2), weights=weights, min_mass=0.25)
    assert desc[0, 1] > desc[0, 0]  # the whole image is described by its picture
    assert torch.all(desc[1] == 0)  # a region of script alone describes nothing
    assert torch.allclose(desc[4], torch.tensor([0.0, 1.0]))


# ------------------------------------------------------------ cell votes


def _bags(n: int = 4, cells: int = 12, c: int = 64) -> tuple[CellBag, CellBag]:
    """n images of random cells; a 3-cell detail shared by images 0 and 2 (redrawn: cosine
    ~0.8), and one template cell shared identically by every image."""
    g = torch.Generator().manual_seed(3)
    feats = F.normalize(torch.randn(n, cells, c, generator=g), dim=2)
    detail = F.normalize(torch.randn(3, c, generator=g), dim=1)
    noise = F.normalize(torch.randn(3, c, generator=g), dim=1)
    feats[0, :3] = detail
    feats[2, 5:8] = F.normalize(0.8 * detail + 0.6 * noise, dim=1)
    feats[:, -1] = F.normalize(torch.ones(c), dim=0)
    owner = torch.arange(n).repeat_interleave(cells)
    bag = CellBag(feats.reshape(n * cells, c), torch.ones(n * cells), owner)
    return bag, bag


def test_votes_find_the_shared_detail_and_not_the_template():
    queries, database = _bags()
    score = vote_scores(queries, database, 4, neighbours=2)
    assert score.shape == (4, 4) and torch.equal(score, score.T) and torch.all(score.diagonal() == 0)
    assert score[0].argmax() == 2 and score[2].argmax() == 0
    # Without the detail only chance votes are left (the template cell, equally near to
    # every image, casts nothing).
    no_detail = vote_scores(*_bags_without_detail(), 4, neighbours=2)
    assert float(no_detail[0, 2]) < float(score[0, 2]) / 3


def _bags_without_detail() -> tuple[CellBag, CellBag]:
    queries, _ = _bags()
    feats = queries.features.clone()
    g = torch.Generator().manual_seed(4)
    feats[24 + 5 : 24 + 8] = F.normalize(torch.randn(3, feats.shape[1], generator=g), dim=1)
    bag = CellBag(feats, queries.weights, queries.owner)
    return bag, bag


def test_texture_weights_silence_votes():
    queries, database = _bags()
    quiet = CellBag(queries.features, torch.where(queries.owner == 0, 0.0, 1.0), queries.owner)
    score = vote_scores(quiet, CellBag(database.features, quiet.weights, database.owner), 4, neighbours=2)
    assert torch.all(score[0] == 0)


def test_cell_bag_and_empty_votes():
    fine = F.normalize(torch.randn(4, 4, 6), dim=0)
    coarse = F.normalize(torch.randn(4, 2, 3), dim=0)
    pyr = FeaturePyramid((fine, coarse), (60, 40))
    bag = cell_bag([pyr, pyr], None, lambda n: range(n))
    assert bag.features.shape == (2 * (24 + 6), 4) and bag.owner.tolist().count(1) == 30
    assert torch.all(bag.weights == 1)
    empty = cell_bag([], None, lambda n: range(n))
    assert vote_scores(empty, empty, 0).shape == (0, 0)


def _grid_pyramids(scatter: bool) -> list[FeaturePyramid]:
    """Four 8 x 8 single-level images of random cells. A 2 x 3 detail of image 0 is
    redrawn (cosine ~0.8) in image 1 moved as one piece, and in image 2 with its six
    cells scattered far apart (``scatter``) or moved as one piece too."""
    g = torch.Generator().manual_seed(5)
    c = 64
    maps = F.normalize(torch.randn(4, c, 8, 8, generator=g), dim=1)
    detail = maps[0, :, 1:3, 1:4].clone()  # rows 1-2, cols 1-3

    def redrawn() -> torch.Tensor:
        return F.normalize(0.8 * detail + 0.6 * F.normalize(torch.randn(c, 2, 3, generator=g), dim=0), dim=0)

    maps[1, :, 4:6, 3:6] = redrawn()
    cells = redrawn().flatten(1)
    if scatter:
        for k, (r, col) in enumerate([(0, 0), (7, 7), (0, 7), (7, 0), (3, 7), (7, 3)]):
            maps[2, :, r, col] = cells[:, k]
    else:
        maps[2, :, 5:7, 0:3] = cells.view(c, 2, 3)
    return [FeaturePyramid((m,), (128, 128)) for m in maps]


def test_hough_votes_need_the_detail_to_move_as_one_piece():
    def scores(scatter: bool, bin_cells: float, block: int = 1 << 25) -> torch.Tensor:
        bag = cell_bag(_grid_pyramids(scatter), None, lambda n: range(1))
        return vote_scores(bag, bag, 4, neighbours=2, bin_cells=bin_cells, block_elements=block)

    plain, hough = scores(True, 0.0), scores(True, 3.0)
    assert plain[0, 2] > 0.5 * plain[0, 1]  # summed votes cannot tell scattered cells apart
    assert hough[0, 1] > 2.5 * hough[0, 2]  # one bin holds the moved detail, not the scattered one
    assert hough[0].argmax() == 1 and torch.equal(hough, hough.T)
    together = scores(False, 3.0)
    assert together[0, 2] > 0.6 * together[0, 1]
    # Blocks never split an image's votes: any block size gives the same scores.
    assert torch.allclose(scores(True, 3.0, block=64 * 40), hough)


def test_image_blocks_never_split_an_image():
    owner = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    assert _image_blocks(owner, 4) == [slice(0, 3), slice(3, 5), slice(5, 9)]
    assert _image_blocks(owner, 100) == [slice(0, 9)]
    assert _image_blocks(torch.zeros(0, dtype=torch.long), 4) == []


def test_capped_neighbours_and_votes_shortlist():
    score = torch.tensor([[0, 5, 4, 1], [5, 0, 2, 2], [4, 2, 0, 3], [1, 2, 3, 0.0]])
    idx, val = capped_neighbours(score, 2)
    assert idx[0].tolist() == [1, 2] and val[0].tolist() == [5.0, 4.0]
    idx, _ = capped_neighbours(score, 2, np.array([0, 0, 0, 1]), same_group_share=0.5)
    assert idx[0].tolist() == [1, 3]  # one look-alike at most, then the other group
    pairs = shortlist_pairs(torch.zeros(4, 1, 2), ShortlistConfig(k=1), votes=score)
    assert pairs[0] == (0, 1, 5.0)
    with pytest.raises(ValueError, match="vote scores"):
        shortlist_pairs(torch.zeros(4, 1, 2), ShortlistConfig(k=1))


def test_cell_image_best_matches_a_loop_over_images():
    g = torch.Generator().manual_seed(7)
    feats = F.normalize(torch.randn(23, 5, generator=g), dim=1)
    owner = torch.tensor([0] * 6 + [1] * 9 + [3] * 8)  # image 2 has no cells
    bag = CellBag(feats, torch.ones(23), owner)
    # Blocks of 2 query rows: the running blocks give the same answer as one block.
    for block in (1 << 25, 2 * 23):
        best = cell_image_best(bag, bag, 4, block_elements=block)
        assert best.shape == (23, 4)
        for i in range(23):
            for j in range(4):
                cells = feats[owner == j]
                want = -torch.inf if j == owner[i] or len(cells) == 0 else float((cells @ feats[i]).max())
                assert float(best[i, j]) == pytest.approx(want, abs=1e-6)
    empty = CellBag(torch.zeros(0, 5), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert cell_image_best(empty, bag, 4).shape == (0, 4)
    assert torch.all(cell_image_best(bag, empty, 4) == -torch.inf)


def test_centre_cells_takes_out_each_images_weighted_mean_per_level():
    g = torch.Generator().manual_seed(8)
    feats = torch.randn(10, 6, generator=g)
    owner = torch.tensor([0] * 6 + [1] * 4)
    level = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    weights = torch.tensor([1.0, 1, 0, 1, 1, 1, 1, 1, 1, 1])
    out = centre_cells(CellBag(feats, weights, owner, torch.zeros(10, 2), torch.ones(10), level))
    want0 = F.normalize(feats[:3] - feats[:2].mean(0), dim=1)  # the zero-weight cell is left out of the mean
    assert torch.allclose(out.features[:3], want0, atol=1e-6)
    assert torch.allclose(out.features[3:6], F.normalize(feats[3:6] - feats[3:6].mean(0), dim=1), atol=1e-6)
    assert torch.allclose(out.features.norm(dim=1), torch.ones(10))
    # A component shared by every cell of image 1 (a paper tone) leaves no trace.
    toned = feats.clone()
    toned[6:] += 5 * torch.randn(6, generator=g)
    assert torch.allclose(centre_cells(CellBag(toned, weights, owner, None, None, level)).features, out.features, atol=1e-5)
    assert torch.equal(out.owner, owner) and torch.equal(out.level, level) and torch.equal(out.weights, weights)


def _toned_pyramids(strength: float) -> list[FeaturePyramid]:
    """Six 8 x 8 images; images 1-5 share a house tone of ``strength`` (one source's paper
    and medium), and image 1 holds a 2 x 3 detail of image 0 redrawn in that medium."""
    g = torch.Generator().manual_seed(3)
    c = 64
    maps = torch.randn(6, c, 8, 8, generator=g) / 8  # cells of norm ~1
    tone = F.normalize(torch.randn(c, generator=g), dim=0)[:, None, None]
    maps[1:] += strength * tone
    detail = F.normalize(maps[0, :, 1:3, 1:4], dim=0)
    redrawn = F.normalize(0.8 * detail + 0.6 * F.normalize(torch.randn(c, 2, 3, generator=g), dim=0), dim=0)
    maps[1, :, 4:6, 3:6] = redrawn + strength * tone
    return [FeaturePyramid((F.normalize(m, dim=0),), (128, 128)) for m in maps]


def test_centred_votes_see_a_copy_through_another_medium():
    def copy_score(strength: float, centre: bool) -> float:
        bag = cell_bag(_toned_pyramids(strength), None, lambda n: range(1))
        bag = centre_cells(bag) if centre else bag
        score = vote_scores(bag, bag, 6, neighbours=2, bin_cells=3.0)
        assert score[0].argmax() == 1
        return float(score[0, 1])

    # Measured: uncentred 2.7 -> 1.3 as the tone grows from 0.5 to 2; centred 2.9 at both.
    assert copy_score(2.0, centre=False) < 0.6 * copy_score(0.5, centre=False)
    assert copy_score(2.0, centre=True) == pytest.approx(copy_score(0.5, centre=True), rel=0.05)
    assert copy_score(2.0, centre=True) > 2 * copy_score(2.0, centre=False)
    empty = CellBag(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert centre_cells(empty) is empty
