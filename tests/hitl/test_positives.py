import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from db.records import Link
from engine.detect import FeatureBank
from engine.features import FeatureConfig, FeaturePyramid, level_shape
from engine.mining import PairBatch
from engine.types import Box, PairMatch, Region
from hitl.positives import (
    ExpertPairConfig,
    choose_levels,
    cluster_links,
    cluster_matches,
    expert_pairs,
    region_link,
    split_links,
)

CONFIG = FeatureConfig(max_side=12, n_scales=4)  # sides 12, 10, 8, 6
SIZES = {"a": (120, 120), "b": (240, 240), "c": (180, 120)}
# A's pixels land in B at twice the size, shifted: x' = 2x + 20, y' = 2y.
AFFINE = ((2.0, 0.0, 20.0), (0.0, 2.0, 0.0))
LINK = PairMatch("a", "b", Box(10, 10, 50, 50), Box(40, 20, 120, 100), AFFINE, 0.9, 30)


def _bank() -> FeatureBank:
    g = torch.Generator().manual_seed(0)
    pyramids = []
    for size in SIZES.values():
        levels = tuple(F.normalize(torch.randn(16, *level_shape(size, side), generator=g), dim=0) for side in CONFIG.sides())
        pyramids.append(FeaturePyramid(levels, size))
    return FeatureBank.build(list(SIZES), pyramids)


def _cell_box(bank: FeatureBank, ref: list[int]) -> tuple[float, float, float, float]:
    """Pixel extent (x0, y0, x1, y1) of cell [image, level, row, col]."""
    image, level, row, col = ref
    h, w = bank.valid[level][image].tolist()
    width, height = bank.sizes[image].tolist()
    cx, cy = width / w, height / h
    return col * cx, row * cy, (col + 1) * cx, (row + 1) * cy


def test_confirmed_link_pairs_land_where_the_affine_says():
    bank = _bank()
    batch = expert_pairs([LINK], [], bank, ExpertPairConfig(cells_per_link=8, n_negatives=5))
    assert len(batch) == 8
    assert batch.positive_mask.all() and (batch.source == PairBatch.EXPERT).all()
    assert (batch.anchor[:, 0] == 0).all() and (batch.positive[:, 0] == 1).all()
    for anchor, positive in zip(batch.anchor.tolist(), batch.positive.tolist()):
        x0, y0, x1, y1 = _cell_box(bank, anchor)
        assert LINK.box_a.x0 <= (x0 + x1) / 2 < LINK.box_a.x1 and LINK.box_a.y0 <= (y0 + y1) / 2 < LINK.box_a.y1
        xb, yb = 2 * (x0 + x1) / 2 + 20, 2 * (y0 + y1) / 2  # the anchor's centre through the affine
        bx0, by0, bx1, by1 = _cell_box(bank, positive)
        assert bx0 <= xb < bx1 and by0 <= yb < by1
        # Scale-aware: B's cell is (within half a level step) twice A's cell.
        ratio = (bx1 - bx0) / (x1 - x0)
        assert abs(math.log2(ratio / 2.0)) <= 1 / 6 + 1e-6
    gap = (batch.negatives[..., 2:] - batch.positive[:, None, 2:]).abs().amax(dim=-1)
    assert (gap > 1).all() and (batch.negatives[..., :2] == batch.positive[:, None, :2]).all()



def _cell_of(bank: FeatureBank, image: int, level: int, x: float, y: float) -> tuple[int, int]:
    h, w = bank.valid[level][image].tolist()
    width, height = bank.sizes[image].tolist()
    return int(y // (height / h)), int(x // (width / w))


# Inlier points (x_a, y_a, x_b, y_b) that do *not* follow AFFINE: the pairs must follow the
# points, not the affine. The first two share A's level-0 cell (10 px cells): one pair, from
# the first (the heaviest, as discovery stores them).
INLIERS = ((15.0, 15.0, 200.0, 30.0), (18.0, 12.0, 10.0, 10.0), (45.0, 35.0, 100.0, 150.0), (25.0, 45.0, 60.0, 220.0))


def test_confirmed_link_with_inliers_pairs_the_inlier_cells():
    bank = _bank()
    link = replace(LINK, inliers=INLIERS)
    batch = expert_pairs([link], [], bank, ExpertPairConfig(cells_per_link=8, n_negatives=5, anchor_levels=(0,), inliers="exact"))
    assert len(batch) == 3 and batch.positive_mask.all()
    got = {(tuple(a[2:]), tuple(p[2:])) for a, p in zip(batch.anchor.tolist(), batch.positive.tolist())}
    lb = int(batch.positive[0, 1])
    want = {(_cell_of(bank, 0, 0, xa, ya), _cell_of(bank, 1, lb, xb, yb)) for xa, ya, xb, yb in INLIERS[:1] + INLIERS[2:]}
    assert got == want
    # cells_per_link keeps the cells of the heaviest inliers (stored first)
    two = expert_pairs([link], [], bank, ExpertPairConfig(cells_per_link=2, n_negatives=5, anchor_levels=(0,), inliers="exact"))
    assert {tuple(a[2:]) for a in two.anchor.tolist()} == {_cell_of(bank, 0, 0, x, y) for x, y, _, _ in INLIERS[::2][:2]}
    # without the inliers the anchors are sampled in box A and mapped through the affine
    boxed = expert_pairs([link], [], bank, ExpertPairConfig(cells_per_link=8, n_negatives=5, inliers="off"))
    assert len(boxed) == 8



def test_near_inliers_map_the_cells_around_them_through_the_affine():
    bank = _bank()
    link = replace(LINK, inliers=INLIERS)
    at = {_cell_of(bank, 0, 0, x, y) for x, y, _, _ in INLIERS}
    for radius in (0, 1):
        config = ExpertPairConfig(cells_per_link=64, n_negatives=3, anchor_levels=(0,), inliers="near", inlier_radius=radius)
        batch = expert_pairs([link], [], bank, config)
        got = {tuple(a[2:]) for a in batch.anchor.tolist()}
        assert got == {(r + dr, c + dc) for r, c in at for dr in range(-radius, radius + 1) for dc in range(-radius, radius + 1)}
        for anchor, positive in zip(batch.anchor.tolist(), batch.positive.tolist()):  # positives follow AFFINE
            x0, y0, x1, y1 = _cell_box(bank, anchor)
            bx0, by0, bx1, by1 = _cell_box(bank, positive)
            assert bx0 <= (x0 + x1) + 20 < bx1 and by0 <= (y0 + y1) < by1
    with pytest.raises(ValueError, match="inliers must be one of"):
        ExpertPairConfig(inliers="some")


def test_rejected_link_with_inliers_makes_its_matched_cells_hard_negatives():
    """With the switches on, a rejected link's anchors are A's inlier cells; B's cell holding
    each inlier's other end (the match the model made) is a negative of that anchor, the
    other negatives lie in box B; the positive is the anchor's own cell one scale away."""
    bank = _bank()
    link = replace(LINK, inliers=INLIERS)
    config = ExpertPairConfig(cells_per_link=8, n_negatives=4, anchor_levels=(0,), inliers="exact",
                              rejected_positive="view", matched_negatives=1)
    batch = expert_pairs([], [link], bank, config)
    assert len(batch) == 3 and batch.positive_mask.all() and (batch.source == PairBatch.REJECTED).all()
    want = {_cell_of(bank, 0, 0, xa, ya): (xb, yb) for xa, ya, xb, yb in INLIERS[:1] + INLIERS[2:]}
    assert {tuple(a[2:]) for a in batch.anchor.tolist()} == set(want)
    for anchor, positive, negs in zip(batch.anchor.tolist(), batch.positive.tolist(), batch.negatives.tolist()):
        # the positive: image a, level 1, the cell holding the anchor's centre
        x0, y0, x1, y1 = _cell_box(bank, anchor)
        assert positive[:2] == [0, 1] and tuple(positive[2:]) == _cell_of(bank, 0, 1, (x0 + x1) / 2, (y0 + y1) / 2)
        xb, yb = want[tuple(anchor[2:])]
        lb = negs[0][1]
        assert all(ref[:2] == [1, lb] for ref in negs)
        assert tuple(negs[-1][2:]) == _cell_of(bank, 1, lb, xb, yb)  # the matched cell, in its slot
        for ref in negs[:-1]:  # the rest: best matches inside box B, never the matched cell again
            assert tuple(ref[2:]) != tuple(negs[-1][2:])
            x0, y0, x1, y1 = _cell_box(bank, ref)
            assert LINK.box_b.x0 <= (x0 + x1) / 2 < LINK.box_b.x1 and LINK.box_b.y0 <= (y0 + y1) / 2 < LINK.box_b.y1
    # matched_negatives=k gives the matched cell k of the N slots
    three = expert_pairs([], [link], bank, replace(config, matched_negatives=3))
    assert (three.negatives[:, 1:] == three.negatives[:, -1:]).all() and (three.negatives[:, 0] != three.negatives[:, -1]).any()
    with pytest.raises(ValueError, match="matched_negatives"):
        ExpertPairConfig(n_negatives=4, matched_negatives=5)
    with pytest.raises(ValueError, match="rejected_positive"):
        ExpertPairConfig(rejected_positive="augment")


def test_rejected_and_confirmed_links_keep_their_own_negatives():
    """One call with both: confirmed pairs keep B positives (source EXPERT), rejected pairs
    their own-view positives and matched negatives (source REJECTED)."""
    bank = _bank()
    link = replace(LINK, inliers=INLIERS)
    config = ExpertPairConfig(cells_per_link=8, n_negatives=4, anchor_levels=(0,), inliers="exact",
                              rejected_positive="view", matched_negatives=1)
    batch = expert_pairs([link], [link], bank, config)
    ok, no = batch.source == PairBatch.EXPERT, batch.source == PairBatch.REJECTED
    assert int(ok.sum()) == 3 and int(no.sum()) == 3
    assert (batch.positive[ok, 0] == 1).all() and (batch.positive[no, 0] == 0).all()
    # the confirmed anchors' negatives stay away from their positives (a 3x3 area)
    gap = (batch.negatives[ok][..., 2:] - batch.positive[ok][:, None, 2:]).abs().amax(dim=-1)
    assert (gap > 1).all()
    # ... and the rejected anchors' matched cells are the confirmed positives' cells
    assert torch.equal(batch.negatives[no][:, -1], batch.positive[ok])


def test_box_sampling_skips_repeated_texture():
    """Without inliers, anchors avoid cells of box A that repeat within the image."""
    bank = _bank()
    level = bank.levels[0]
    texture = level[0, :, 1, 1].clone()
    level[0, :, :, :3] = texture[:, None, None]  # columns 0-2 of image a: one repeated texture cell
    box = Box(0, 0, 60, 60)  # level-0 cells are 10 px: columns 0-5, half of them texture
    link = PairMatch("a", "b", box, Box(20, 0, 140, 120), AFFINE, 0.9, 30)
    floor = expert_pairs([link], [], bank, ExpertPairConfig(cells_per_link=36, n_negatives=3, anchor_levels=(0,)))
    assert len(floor) == 18 and (floor.anchor[:, 3] >= 3).all()
    none = expert_pairs([link], [], bank, ExpertPairConfig(cells_per_link=36, n_negatives=3, anchor_levels=(0,),
                                                           min_texture_weight=0.0))
    assert len(none) == 36 and (none.anchor[:, 3] < 3).any()
    with pytest.raises(ValueError, match="min_texture_weight"):
        ExpertPairConfig(min_texture_weight=1.5)


def test_negatives_are_the_anchors_best_matches():
    bank = _bank()
    config = ExpertPairConfig(cells_per_link=1, n_negatives=3, anchor_levels=(0,))
    batch = expert_pairs([LINK], [], bank, config)
    image, level, row, col = batch.anchor[0].tolist()
    b_img, b_lvl, b_row, b_col = batch.positive[0].tolist()
    # Plant a copy of the anchor far from the positive: it must be the first negative.
    far = (0 if b_row > 5 else 9, 0 if b_col > 5 else 9)
    bank.levels[b_lvl][b_img, :, far[0], far[1]] = bank.levels[level][image, :, row, col]
    batch = expert_pairs([LINK], [], bank, config)
    assert tuple(batch.negatives[0, 0, 2:].tolist()) == far


def test_rejected_link_by_default_only_pushes_apart_inside_box_b():
    """The defaults (rejected_positive="none", matched_negatives=0): no positive, the
    anchor's best matches inside box B as negatives, tagged REJECTED."""
    bank = _bank()
    config = ExpertPairConfig(cells_per_link=6, n_negatives=4)
    batch = expert_pairs([], [LINK], bank, config)
    assert len(batch) == 6 and not batch.positive_mask.any() and (batch.source == PairBatch.REJECTED).all()
    assert (batch.positive == -1).all()
    for negs in batch.negatives.tolist():
        for ref in negs:
            assert ref[0] == 1
            x0, y0, x1, y1 = _cell_box(bank, ref)
            assert LINK.box_b.x0 <= (x0 + x1) / 2 < LINK.box_b.x1 and LINK.box_b.y0 <= (y0 + y1) / 2 < LINK.box_b.y1


def test_choose_levels_matches_cell_sizes():
    cells = torch.tensor([10.0, 12.6, 15.9, 20.0], dtype=torch.float64)  # one octave over 3 steps
    g = torch.Generator().manual_seed(0)
    assert choose_levels(cells, cells, 2.0, [0], g) == (0, 3)  # 10 px * 2 = B's 20 px cells
    assert choose_levels(cells, cells * 2, 1.0, [2], g) == (2, 0)  # 15.9 px ~ B's 20 px cells
    with pytest.raises(ValueError, match="outside"):
        choose_levels(cells, cells, 1.0, [7], g)


def test_region_link_maps_box_onto_box():
    a, b = Region("a", Box(10, 20, 50, 40)), Region("b", Box(100, 0, 180, 60))
    link = region_link(a, b)
    (sx, _, tx), (_, sy, ty) = link.affine
    assert (sx * 10 + tx, sy * 20 + ty) == pytest.approx((100, 0))
    assert (sx * 50 + tx, sy * 40 + ty) == pytest.approx((180, 60))


def test_cluster_links_pair_members_in_different_images():
    regions = [Region("a", Box(0, 0, 10, 10)), Region("b", Box(0, 0, 20, 20)),
               Region("c", Box(5, 5, 15, 15)), Region("a", Box(40, 40, 60, 60))]
    pairs = cluster_links(regions)
    assert len(pairs) == 5  # 6 pairs minus the two regions of image a
    assert all(x.image_id != y.image_id for x, y in pairs)
    assert len(cluster_matches(regions)) == 5


def test_cluster_links_feed_expert_pairs():
    regions = [Region("a", Box(10, 10, 60, 60)), Region("c", Box(60, 20, 160, 100))]
    batch = expert_pairs(cluster_matches(regions), [], _bank(), ExpertPairConfig(cells_per_link=4, n_negatives=3))
    assert len(batch) == 4 and (batch.positive[:, 0] == 2).all()


def _link(status: str) -> Link:
    return Link(link_id=1, run_id=1, model_id="m", match=LINK, status=status)


def test_only_final_statuses_are_used():
    confirmed, rejected = split_links([_link("confirm"), _link("reject"), _link("unsure"), _link("unreviewed")])
    assert confirmed == [LINK] and rejected == [LINK]
    # A confirmed link whose verdict was revoked is back to unreviewed in the status view.
    assert split_links([_link("unreviewed")]) == ([], [])
    with pytest.raises(ValueError, match="revoke row is not a status"):
        split_links([_link("revoke")])


def test_bad_links_are_refused_by_name():
    bank = _bank()
    stranger = PairMatch("a", "zz", LINK.box_a, LINK.box_b, AFFINE, 0.5, 4)
    with pytest.raises(ValueError, match="'zz' is not in the collection"):
        expert_pairs([stranger], [], bank)
    flat = PairMatch("a", "b", LINK.box_a, LINK.box_b, ((1.0, 2.0, 0.0), (2.0, 4.0, 0.0)), 0.5, 4)
    with pytest.raises(ValueError, match="degenerate affine"):
        expert_pairs([], [flat], bank)


def test_no_links_give_an_empty_batch():
    batch = expert_pairs([], [], _bank(), ExpertPairConfig(n_negatives=7))
    assert len(batch) == 0 and batch.n_negatives == 7


def test_expert_pairs_train_with_mined_ones(random_effnet, tmp_path):
    """Expert pairs from a bank of real (random-weight) features go through a training round."""
    import copy

    from engine.mining import MiningConfig, mine_pairs
    from engine.train import TrainConfig, embed_collection, train

    g = torch.Generator().manual_seed(1)
    images = [(torch.rand(3, 64, 64, generator=g) * 255).byte() for _ in range(2)]
    features = FeatureConfig(max_side=6, n_scales=2)
    bank = embed_collection(random_effnet, images, features)
    bank.image_ids[:] = ["a", "b"]
    link = PairMatch("a", "b", Box(8, 8, 40, 40), Box(20, 20, 52, 52), ((1.0, 0.0, 12.0), (0.0, 1.0, 12.0)), 0.9, 9)
    pairs = expert_pairs([link], [link], bank, ExpertPairConfig(cells_per_link=4, n_negatives=4))
    assert len(pairs) == 8 and int((pairs.source == PairBatch.EXPERT).sum()) == 4 and int(pairs.positive_mask.sum()) == 4
    config = TrainConfig(steps=1, batch_pairs=16, expert_ratio=0.5, checkpoint_every=1, freeze="none",
                         mining=MiningConfig(n_proposals=8, top_k=1, verification_size=4, positive_square=4, n_negatives=4),
                         features=features)
    mined = mine_pairs(bank, 0, config.mining)
    result = train(copy.deepcopy(random_effnet), images, PairBatch.cat([mined, pairs]), config, out_dir=tmp_path)
    assert result.history[0].n_used_expert == 8 and math.isfinite(result.history[0].loss)


def _negative_similarity(bank: FeatureBank, batch: PairBatch) -> torch.Tensor:
    """(P, N) cosine of each anchor with each of its negatives."""
    def feats(refs):
        return torch.stack([bank.levels[k][i, :, r, c].float() for i, k, r, c in refs.reshape(-1, 4).tolist()])
    anchor = feats(batch.anchor)
    return (anchor[:, None] * feats(batch.negatives).view(len(batch), batch.n_negatives, -1)).sum(-1)


@pytest.mark.parametrize("switches", [{}, {"rejected_positive": "view", "matched_negatives": 1}])
def test_training_on_a_rejected_link_pushes_its_matched_cells_apart(random_effnet, tmp_path, switches):
    """Known answer: image b repeats image a shifted by 16 px, so a link between the two is
    a perfect match; rejected, the similarity of its inlier cells to their negatives (the
    matched cell among them) and the loss on its pairs fall."""
    import copy

    from engine.train import CachedMaps, TrainConfig, held_out_loss, level_shapes, train
    from engine.trunk_cache import bank_from_inputs, inputs_from_tensors

    g = torch.Generator().manual_seed(0)
    big = (F.interpolate(torch.rand(1, 3, 11, 13, generator=g), size=(96, 112), mode="bicubic", align_corners=False)
           .clamp(0, 1) * 255).byte()[0]
    images = [big[:, :, :96].contiguous(), big[:, :, 16:].contiguous()]  # b(x) = a(x + 16)
    features = FeatureConfig(max_side=6, n_scales=2)  # 16 px cells at level 0
    model = copy.deepcopy(random_effnet)
    inputs = inputs_from_tensors(model, images, features)
    bank = bank_from_inputs(model, inputs)
    bank.image_ids[:] = ["a", "b"]
    points = tuple((x + 8.0, y + 8.0, x - 8.0, y + 8.0) for x in (32, 48, 64) for y in (16, 32, 48, 64))
    link = PairMatch("a", "b", Box(32, 16, 80, 80), Box(16, 16, 64, 80), ((1.0, 0.0, -16.0), (0.0, 1.0, 0.0)), 0.9,
                     len(points), inliers=points)
    config = ExpertPairConfig(cells_per_link=12, n_negatives=4, anchor_levels=(0,), **switches)
    pairs = expert_pairs([], [link], bank, config)
    assert len(pairs) == 12 and (pairs.source == PairBatch.REJECTED).all()
    assert (pairs.negatives[..., 0] == 1).all()  # every negative lies in b
    if switches:  # b's cell holding each inlier's other end (a's cell one column left) is a negative
        assert all((a[2], a[3] - 1) == tuple(negs[-1][2:]) for a, negs in zip(pairs.anchor.tolist(), pairs.negatives.tolist()))
    before = _negative_similarity(bank, pairs)
    assert float(before.max(dim=1).values.mean()) > 0.7, "the matched cells start as the model's matches"
    train_config = TrainConfig(steps=10, batch_pairs=12, lr=1e-2, checkpoint_every=100, validation_fraction=0.0,
                               anchor_weight=0.0, mining=replace(TrainConfig().mining, n_negatives=4), features=features)
    shapes = level_shapes(inputs.sizes, features)
    loss_before = held_out_loss(CachedMaps(model, inputs), pairs, shapes)
    train(model, inputs, pairs, train_config, out_dir=tmp_path)
    loss_after = held_out_loss(CachedMaps(model, inputs), pairs, shapes)
    after = _negative_similarity(bank_from_inputs(model, inputs), pairs)
    assert loss_after < loss_before
    assert float(after.max(dim=1).values.mean()) < float(before.max(dim=1).values.mean()) - 0.1
