import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.detect import FeatureBank, window_scores
from engine.features import FeatureConfig, FeaturePyramid
from engine.mining import (
    Candidates,
    MiningConfig,
    MiningStats,
    PairBatch,
    allowed_targets,
    corner_offsets,
    count_votes,
    match_candidates,
    mine_pairs,
    positive_pairs,
    proposal_weights,
    sample_proposals,
    select_verified,
    top_matches,
    verification_offsets,
    window_scores_many,
)
from engine.texture import collection_counts
from engine.train import embed_collection

SHIFT = (3, 2)  # where A's level-0 map sits inside B's level-1 map (rows, cols)


def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random colour texture (H, W, 3) uint8."""
    small = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=torch.Generator().manual_seed(seed))
    big = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    return (big[0].permute(1, 2, 0) * 255).round().byte().numpy()


def _rand_map(seed, c, h, w):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(c, h, w, generator=g), dim=0)


def _known_pair_bank() -> FeatureBank:
    return FeatureBank.build(["a", "b", "c"], _known_pair_pyramids())


def _known_pair_pyramids() -> list[FeaturePyramid]:
    """A (16x18 cells at level 0) reappears in B at level 1, shifted by SHIFT cells.

    In pixels that is a known scale + translation: B's level-1 cells are 12 px, A's
    level-0 cells 10 px, so x_B = 1.2 x_A + 24 and y_B = 1.2 y_A + 36. C is a distractor.
    """
    c = 32
    a0, a1 = _rand_map(1, c, 16, 18), _rand_map(2, c, 13, 14)
    b0, b1 = _rand_map(3, c, 24, 24), _rand_map(4, c, 20, 20)
    b1[:, SHIFT[0] : SHIFT[0] + 16, SHIFT[1] : SHIFT[1] + 18] = a0
    c0, c1 = _rand_map(5, c, 20, 16), _rand_map(6, c, 16, 13)
    return [
        FeaturePyramid((a0, a1), (180, 160)),
        FeaturePyramid((b0, b1), (240, 240)),
        FeaturePyramid((c0, c1), (160, 200)),
    ]


def test_config_rejects_a_square_that_cannot_be_centred():
    with pytest.raises(ValueError, match="positive_square"):
        MiningConfig(positive_square=11)
    with pytest.raises(ValueError, match="verified_fraction"):
        MiningConfig(verified_fraction=0.0)


def test_paper_geometry_p12_corners_and_verification_ring():
    config = MiningConfig(positive_square=12)
    assert corner_offsets(config).tolist() == [[-5, -5], [-5, 6], [6, -5], [6, 6]]
    ring = verification_offsets(config)
    assert len(ring) == 36  # the border of the 10x10 square from -4 to +5
    assert ((ring == -4) | (ring == 5)).any(dim=1).all()
    full = verification_offsets(MiningConfig(verify_ring_only=False))
    assert len(full) == 100 and full.min() == -4 and full.max() == 5


def test_window_scores_many_equals_one_query_at_a_time():
    bank = _known_pair_bank()
    queries = torch.stack([bank.levels[0][0, :, 2:4, 5:7], bank.levels[0][2, :, 7:9, 1:3]])
    many = window_scores_many(bank.levels[1], bank.valid[1], queries)
    for q in range(2):
        one = window_scores(bank.levels[1], bank.valid[1], queries[q])
        assert torch.equal(torch.isinf(many[:, q]), torch.isinf(one))
        finite = torch.isfinite(one)
        assert torch.allclose(many[:, q][finite], one[finite], atol=1e-5)


def test_top_matches_known_answer():
    maps = torch.zeros(2, 2, 3, 3)
    maps[:, 0] = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.4], [0.0, 0.5, 0.6]])
    anchors = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    allowed = torch.ones(2, 3, 3, dtype=torch.bool)
    allowed[0, 0, 0] = False  # the best cell is excluded for the first anchor
    allowed[1] = False
    allowed[1, 2, 2] = allowed[1, 1, 2] = True  # only two cells allowed for the second
    rows, cols, ok = top_matches(anchors, maps, allowed, 3)
    assert list(zip(rows[0].tolist(), cols[0].tolist())) == [(1, 0), (2, 2), (2, 1)]
    assert list(zip(rows[1].tolist(), cols[1].tolist())) == [(2, 2), (1, 2), (2, 2)]  # best repeated
    assert ok.tolist() == [True, True]
    _, _, ok = top_matches(anchors, maps, torch.zeros(2, 3, 3, dtype=torch.bool), 3)
    assert ok.tolist() == [False, False]


def test_mined_pairs_follow_the_known_transform():
    bank = _known_pair_bank()
    config = MiningConfig(n_proposals=60, n_negatives=8, positive_square=12)
    batch = mine_pairs(bank, 0, config)
    assert len(batch) >= 8
    assert batch.anchor[:, :2].unique(dim=0).tolist() == [[0, 0]]  # A, level 0
    assert batch.positive[:, :2].unique(dim=0).tolist() == [[1, 1]]  # B, level 1
    shift = batch.positive[:, 2:] - batch.anchor[:, 2:]
    assert ((shift - torch.tensor(SHIFT)).abs() <= 1).all()
    assert batch.positive_mask.all() and (batch.source == PairBatch.MINED).all()
    # Negatives: B's level-1 cells, none within one cell of the positive.
    assert batch.negatives.shape == (len(batch), 8, 4)
    assert (batch.negatives[..., :2] == batch.positive[:, None, :2]).all()
    gap = (batch.negatives[..., 2:] - batch.positive[:, None, 2:]).abs().amax(dim=-1)
    assert (gap > 1).all()
    assert (batch.negatives[..., 2] < 20).all() and (batch.negatives[..., 3] < 20).all()



def test_count_votes_equals_matching_every_voter_alone():
    """Voting cells shared by overlapping proposals are matched once: same votes as one by one."""
    bank = _known_pair_bank()
    config = MiningConfig(n_proposals=50, top_k=2, chunk_candidates=7)
    props = sample_proposals(bank.valid[0], config, torch.Generator().manual_seed(0))
    props = torch.cat([props, props[:10], props[:5] + torch.tensor([0, 1, 0])])  # duplicates and overlaps
    cand = match_candidates(bank, props, config)
    votes = count_votes(bank, cand, config)
    offsets = verification_offsets(config)
    want = []
    for q in range(len(cand)):
        b, k = int(cand.image_b[q]), int(cand.level_b[q])
        h, w = bank.valid[k][b].tolist()
        fmap = bank.levels[k][b, :, :h, :w].reshape(bank.levels[k].shape[1], -1)
        voters = bank.levels[0][int(cand.image_a[q])][:, cand.row_a[q] + offsets[:, 0], cand.col_a[q] + offsets[:, 1]].T  # (V, C)
        nearest = (voters @ fmap).argmax(dim=1)
        drow = nearest // w - (cand.row_b[q] + offsets[:, 0])
        dcol = nearest % w - (cand.col_b[q] + offsets[:, 1])
        want.append(int(((drow.abs() <= 1) & (dcol.abs() <= 1)).sum()))
    assert votes.tolist() == want and max(want) > 0


def test_mining_is_deterministic_per_seed():
    bank = _known_pair_bank()
    config = MiningConfig(n_proposals=40)
    first, again, other = mine_pairs(bank, 3, config), mine_pairs(bank, 3, config), mine_pairs(bank, 4, config)
    assert torch.equal(first.anchor, again.anchor) and torch.equal(first.negatives, again.negatives)
    assert not torch.equal(first.anchor, other.anchor)
    from_pyramids = mine_pairs(_known_pair_pyramids(), 3, config)
    assert torch.equal(first.positive, from_pyramids.positive)


def test_mining_without_room_or_partner_is_empty():
    bank = _known_pair_bank()
    single = FeatureBank([bank.image_ids[0]], [lv[:1] for lv in bank.levels], [v[:1] for v in bank.valid], bank.sizes[:1])
    assert len(mine_pairs(single, 0, MiningConfig(n_proposals=10))) == 0
    too_big = MiningConfig(positive_square=30, verification_size=10, n_proposals=10)
    assert len(mine_pairs(bank, 0, too_big)) == 0


def test_pair_batch_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="inconsistent"):
        PairBatch(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long),
                  torch.zeros(2, 5, 4, dtype=torch.long), torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="negative counts"):
        PairBatch.cat([PairBatch.empty(5), PairBatch.empty(6)])


def test_real_features_mine_a_known_shift(effnet):
    """B shows A's content 32 px to the left: 4 cells at 8 px per cell (12 cells on 96 px)."""
    big = _texture(7, 96, 128)
    images = [np.ascontiguousarray(big[:, :96]), np.ascontiguousarray(big[:, 32:]), _texture(3, 96, 96)]
    tensors = [torch.from_numpy(img).permute(2, 0, 1).contiguous() for img in images]
    bank = embed_collection(effnet, tensors, FeatureConfig(max_side=12, n_scales=1))
    config = MiningConfig(n_proposals=24, top_k=2, verification_size=6, positive_square=8, n_negatives=5)
    batch = mine_pairs(bank, 0, config)
    assert len(batch) > 0
    ab = (batch.anchor[:, 0] == 0) & (batch.positive[:, 0] == 1)
    ba = (batch.anchor[:, 0] == 1) & (batch.positive[:, 0] == 0)
    assert (ab | ba).all()  # never the distractor
    shift = batch.positive[:, 2:] - batch.anchor[:, 2:]
    expected = torch.where(ab[:, None], torch.tensor([0, -4]), torch.tensor([0, 4]))
    assert ((shift - expected).abs() <= 1).all()


def test_vote_floor_is_a_share_of_the_ring_and_cuts_the_top_fraction():
    assert MiningConfig().min_votes == 22  # 0.6 of the 36 ring cells
    assert MiningConfig(min_vote_share=0.5).min_votes == 18
    assert MiningConfig(min_vote_share=0.0).min_votes == 1  # a candidate nobody votes for never passes
    config = MiningConfig(verified_fraction=0.5, min_vote_share=0.5)  # top 5 of these 10, then the floor of 18
    votes = torch.tensor([30, 2, 17, 18, 0, 25, 1, 3, 4, 5])
    chosen = select_verified(votes, torch.zeros(10), config)
    assert chosen.tolist() == [0, 5, 3]  # 17 is in the top half but under the floor of 18
    with pytest.raises(ValueError, match="min_vote_share"):
        MiningConfig(min_vote_share=1.5)


def test_allowed_targets_follow_the_shortlist_and_never_the_own_image():
    image_a = torch.tensor([0, 1, 2])
    assert allowed_targets(image_a, 3, None).tolist() == [[False, True, True], [True, False, True], [True, True, False]]
    neighbours = torch.tensor([[2, -1], [0, 2], [1, 2]])  # image 2 lists itself: still excluded
    assert allowed_targets(image_a, 3, neighbours).tolist() == [[False, False, True], [True, False, True], [False, True, False]]
    with pytest.raises(ValueError, match="neighbours"):
        allowed_targets(image_a, 3, torch.zeros(2, 2, dtype=torch.long))


def test_mining_searches_shortlist_neighbours_only():
    bank = _known_pair_bank()
    config = MiningConfig(n_proposals=60, n_negatives=8, min_vote_share=0.0)
    cut = torch.tensor([[2], [2], [0]])  # A and B are not each other's neighbours
    batch = mine_pairs(bank, 0, config, neighbours=cut)
    pairs = set(map(tuple, torch.stack([batch.anchor[:, 0], batch.positive[:, 0]], 1).tolist()))
    assert (0, 1) not in pairs and (1, 0) not in pairs
    stats: list[MiningStats] = []
    assert len(mine_pairs(bank, 0, config, stats=stats)) > 0 and stats[0].n_candidates > 0


def test_positive_is_the_best_match_within_3x3_and_negatives_keep_away():
    """A candidate off by one cell still gives the exact correspondents as positives."""
    bank = _known_pair_bank()
    config = MiningConfig(n_negatives=6, positive_square=6)
    # Proposal at A's (6, 6); B's true cell is (6, 6) + SHIFT, the candidate says one row lower.
    one = torch.tensor([0])
    cand = Candidates(one * 0, one + 6, one + 6, one + 1, one + 1, one + 6 + SHIFT[0] + 1, one + 6 + SHIFT[1], torch.ones(1))
    batch = positive_pairs(bank, cand, config)
    assert len(batch) == 4
    assert (batch.positive[:, 2:] - batch.anchor[:, 2:] == torch.tensor(SHIFT)).all()
    exact = positive_pairs(bank, cand, MiningConfig(n_negatives=6, positive_square=6, positive_search=0))
    assert (exact.positive[:, 2] - exact.anchor[:, 2] == SHIFT[0] + 1).all()  # without the search: off by one
    gap = (batch.negatives[..., 2:] - batch.positive[:, None, 2:]).abs().amax(dim=-1)
    assert (gap > 3).all()  # nothing within the 7x7 square around P2


# ---------------------------------------------------------------- texture-weighted proposals


def test_weighted_proposals_go_where_the_weight_is():
    config = MiningConfig(n_proposals=200, verification_size=4, positive_square=4, min_proposal_weight=0.8)
    valid = torch.tensor([[10, 10], [10, 8]])
    weights = torch.full((2, 10, 10), 0.2)
    weights[1, 4:6, 3:5] = 1.0  # the only 2x2 square of mean weight >= 0.8: top-left (4, 3) of image 1
    props = sample_proposals(valid, config, torch.Generator().manual_seed(0), weights)
    assert props.shape == (200, 3) and props.tolist() == [[1, 4, 3]] * 200
    # no square heavy enough: no proposal, rather than proposals on texture
    assert len(sample_proposals(valid, config, torch.Generator().manual_seed(0), torch.full((2, 10, 10), 0.2))) == 0


def test_weighted_proposals_keep_the_span_inside_the_image():
    config = MiningConfig(n_proposals=500, verification_size=6, positive_square=4, min_proposal_weight=0.0)
    valid = torch.tensor([[9, 7]])
    props = sample_proposals(valid, config, torch.Generator().manual_seed(1), torch.ones(1, 12, 12))
    first = -((config.span - config.proposal_size) // 2)  # offset of the span square's first cell
    rows, cols = props[:, 1] + first, props[:, 2] + first
    assert (rows >= 0).all() and (cols >= 0).all()
    assert (rows + config.span <= 9).all() and (cols + config.span <= 7).all()
    assert len({tuple(p) for p in props.tolist()}) == (9 - 6 + 1) * (7 - 6 + 1)  # every legal position is drawn


def test_proposal_weights_are_low_on_repeated_texture():
    stripes = torch.zeros(64, 8, 8)
    stripes[0] = 1.0  # every cell the same: a texture repeated all over the image
    unique = _rand_map(3, 64, 8, 8)  # 64 random dimensions: no two cells alike
    bank = FeatureBank.build(["t", "u"], [FeaturePyramid((stripes,), (128, 128)), FeaturePyramid((unique,), (128, 128))])
    w = proposal_weights(bank, 0)
    assert w.shape == (2, 8, 8)
    assert float(w[0].max()) < 0.2 and float(w[1].min()) > 0.9


def test_proposal_weights_take_precomputed_collection_counts():
    maps = [_rand_map(i, 64, 8, 8) for i in range(3)]
    maps[1][:, :4, :4] = maps[0][:, :4, :4]  # a shared corner: counted once across the collection
    bank = FeatureBank.build(["a", "b", "c"], [FeaturePyramid((m,), (128, 128)) for m in maps])
    counts = collection_counts(maps)
    assert torch.equal(proposal_weights(bank, 0, counts=counts), proposal_weights(bank, 0))
    # given counts are used as they are: more repeats, lower weights, nothing recomputed
    heavier = proposal_weights(bank, 0, counts=[c + 8.0 for c in counts])
    assert (heavier < proposal_weights(bank, 0)).all()
    with pytest.raises(ValueError, match="2 collection counts for 3 images"):
        proposal_weights(bank, 0, counts=counts[:2])
