"""Self-supervised mining of hard-positive feature pairs (paper §3.1, authors' code).

One mining round over a collection's feature bank:

1. **Proposals**: random 2x2 cell squares at the reference level, placed so the
   verification region and the positive square around them stay inside the image.
2. **Candidates**: every proposal is slid over every level of its candidate images as
   one convolution per (image, level) whose output channels are the proposals. The
   candidate images are the proposal image's shortlist neighbours when given (O(P·k),
   not O(P·N)), else every other image. Each proposal keeps its best window per image,
   then its top K = 10 images.
3. **Verification**: each feature of the ring of the 10x10 square around the proposal
   is matched (nearest neighbour) in the candidate's map; it votes when it lands within
   one cell of where the candidate's displacement puts it. Verified: the top 10% of all
   candidates by votes *and* at least ``min_vote_share`` of the ring's cells. The top
   fraction alone let near-unverified candidates through (on the demo: precision ~1%
   below 4 of 36 votes, ~46% at 12-19 votes).
4. **Pairs**: the 4 corners of the square around a verified proposal (P12 in the paper,
   6x6 by default here, see ``MiningConfig.positive_square``) and,
   in the candidate's map, the best match of each within 3x3 of where the displacement
   puts it (the authors' ``PosCosineSimilaritytop1``); the hard negatives of a pair are
   the top 20 matches of P1 in P2's map outside a 7x7 neighbourhood of P2, so true
   correspondents a few cells away never become negatives.

A correspondence is a translation in cells between the proposal's map (level
``proposal_level`` of image A) and the candidate's map (the level of B where it matched
best): the choice of level absorbs the scale, as in the paper.

Steps 3 and 4 run per candidate image and level: the candidates of one map are matched
against that map at once, so no map is ever copied per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn.functional as F

from engine.detect import FeatureBank
from engine.features import FeaturePyramid
from engine.texture import TextureConfig, collection_counts, combined_weights


@dataclass(frozen=True)
class MiningConfig:
    # Proposals per round (authors' code: 2000 per epoch, over many epochs); the speed knob
    # of mining. 4000 here: one mining per round, and texture-weighted proposals on the
    # multi-source demo verified 20 pairs of 2000, 72 of 4000 (benchmarks/positives.py).
    n_proposals: int = 4000
    proposal_size: int = 2  # paper: 2x2 proposal regions
    proposal_level: int = 0  # proposals are cut from the reference (largest) level
    top_k: int = 10  # paper: K = 10 candidate images per proposal
    verification_size: int = 10  # paper: the 10x10 square centred on the proposal votes
    # The authors' code votes with the 36 cells on the ring of that square only: they are
    # the furthest from the proposal, so the most independent of it (paper §3.1).
    verify_ring_only: bool = True
    vote_tolerance: int = 1  # authors' code: a vote lands within 1 cell (both axes) of the prediction
    verified_fraction: float = 0.1  # paper: top 10% of candidates by votes are verified
    # Absolute floor: a verified candidate also has at least this share of the voting
    # cells' votes (the authors' code: 0.6 of the ring, commented out there). On the demo
    # (benchmarks/positives.py) precision of mined pairs is 0.41 at 0.5, 0.55 at 0.6.
    min_vote_share: float = 0.6
    # Paper: P12, the corners of a 12x12 square. Corners 6 apart here: on the demo, whose
    # motifs span ~8-12 cells at the reference level, P12 corners land on the scenery
    # around a motif (precision 0.20 against 0.41 at 6, same floor; benchmarks/positives.py).
    positive_square: int = 6
    positive_search: int = 1  # authors' code: P2 is P1's best match within 3x3 of the predicted cell
    n_negatives: int = 20  # paper: N_neg = 20 hard negatives per positive pair
    # Cells this close (both axes) to P2 are not negatives: a 7x7 square, since true
    # correspondents 2-3 cells from P2 made hard negatives with a 3x3 one.
    negative_exclusion: int = 3
    chunk_candidates: int = 2048  # candidates of one map matched together (bounds memory)
    # Proposals are drawn only where the cells' texture weight (engine.texture: repeats
    # within the image and across the collection, the weights discovery scores with) is at
    # least this, with probability proportional to it, when weights are given to
    # mine_pairs. Not in the paper. Page templates (script, frames, colour bars) and
    # scenery repeat and verify perfectly, but are not the details a user looks for: on
    # the multi-source demo 3.5 % of mined pairs lay on motifs without it (README).
    min_proposal_weight: float = 0.5
    texture_proposals: bool = True  # False: proposals drawn uniformly over the image (the paper)

    def __post_init__(self) -> None:
        for name in ("n_proposals", "proposal_size", "top_k", "verification_size", "positive_square",
                     "n_negatives", "chunk_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"MiningConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("positive_search", "negative_exclusion", "vote_tolerance"):
            if getattr(self, name) < 0:
                raise ValueError(f"MiningConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("verification_size", "positive_square"):
            size = getattr(self, name)
            if size < self.proposal_size or (size - self.proposal_size) % 2:
                raise ValueError(
                    f"MiningConfig.{name}={size} cannot be centred on a {self.proposal_size}x"
                    f"{self.proposal_size} proposal (needs >= it and the same parity)"
                )
        if not 0.0 < self.verified_fraction <= 1.0:
            raise ValueError(f"MiningConfig.verified_fraction must be in (0, 1], got {self.verified_fraction}")
        if not 0.0 <= self.min_proposal_weight <= 1.0:
            raise ValueError(f"MiningConfig.min_proposal_weight must be in [0, 1], got {self.min_proposal_weight}")
        if not 0.0 <= self.min_vote_share <= 1.0:
            raise ValueError(f"MiningConfig.min_vote_share must be in [0, 1], got {self.min_vote_share}")

    @property
    def min_votes(self) -> int:
        """The vote floor in cells (22 of the 36 ring cells at the defaults; at least 1)."""
        return max(1, math.ceil(self.min_vote_share * len(verification_offsets(self)) - 1e-9))

    @property
    def span(self) -> int:
        """Side of the cell square around a proposal that must lie inside its image."""
        return max(self.verification_size, self.positive_square, self.proposal_size)


@dataclass(frozen=True, eq=False)
class PairBatch:
    """Training pairs as cell references ``[image, level, row, col]`` into a collection.

    ``image`` indexes the collection's image list (bank order); ``level`` its pyramid.

    Attributes:
        anchor: (P, 4) long, P1 of each pair.
        positive: (P, 4) long, P2; rows are -1 where ``positive_mask`` is False.
        negatives: (P, N, 4) long, hard negatives of P1.
        positive_mask: (P,) bool, False for pairs that only push apart.
        source: (P,) long, ``MINED``, ``EXPERT``, ``DISCOVERY`` or ``REJECTED`` (see
            ``SOURCE_NAMES``): a ``REJECTED`` pair's negatives are an expert-rejected link's
            cells, its positive (if any) the anchor's own cell at another scale.
        weight: (P,) float, the pair's weight in the loss (default 1): expert pairs weigh
            more than discovery links, which weigh more than mined pairs.
    """

    anchor: torch.Tensor
    positive: torch.Tensor
    negatives: torch.Tensor
    positive_mask: torch.Tensor
    source: torch.Tensor
    weight: torch.Tensor | None = None

    MINED: ClassVar[int] = 0
    EXPERT: ClassVar[int] = 1
    DISCOVERY: ClassVar[int] = 2  # unrejected discovery links above a score (weak positives)
    REJECTED: ClassVar[int] = 3  # expert-rejected links: hard negatives
    SOURCE_NAMES: ClassVar[tuple[str, ...]] = ("mined", "expert", "discovery", "rejected")

    def __post_init__(self) -> None:
        p = self.anchor.shape[0]
        if self.weight is None:
            object.__setattr__(self, "weight", torch.ones(p, device=self.anchor.device))
        ok = (
            self.anchor.shape == (p, 4) and self.positive.shape == (p, 4)
            and self.negatives.dim() == 3 and self.negatives.shape[0] == p and self.negatives.shape[2] == 4
            and self.positive_mask.shape == (p,) and self.source.shape == (p,) and self.weight.shape == (p,)
        )
        if not ok:
            raise ValueError(
                f"inconsistent PairBatch shapes: anchor {tuple(self.anchor.shape)}, positive "
                f"{tuple(self.positive.shape)}, negatives {tuple(self.negatives.shape)}, mask "
                f"{tuple(self.positive_mask.shape)}, source {tuple(self.source.shape)}, weight "
                f"{tuple(self.weight.shape)}"
            )

    def __len__(self) -> int:
        return self.anchor.shape[0]

    @property
    def n_negatives(self) -> int:
        return self.negatives.shape[1]

    @classmethod
    def empty(cls, n_negatives: int) -> PairBatch:
        long = torch.zeros(0, 4, dtype=torch.long)
        return cls(long, long.clone(), torch.zeros(0, n_negatives, 4, dtype=torch.long),
                   torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long))

    def select(self, index: torch.Tensor) -> PairBatch:
        """The pairs at ``index`` (a long index or a bool mask over P)."""
        return PairBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def tagged(self, source: int, weight: float) -> PairBatch:
        """The same pairs, all from ``source`` and weighing ``weight`` in the loss."""
        return PairBatch(self.anchor, self.positive, self.negatives, self.positive_mask,
                         torch.full_like(self.source, source), torch.full_like(self.weight, weight))

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(*(getattr(self, f.name).to(device) for f in fields(self)))

    @classmethod
    def cat(cls, batches: Sequence[PairBatch]) -> PairBatch:
        if not batches:
            raise ValueError("PairBatch.cat needs at least one batch")
        sizes = {b.n_negatives for b in batches}
        if len(sizes) > 1:
            raise ValueError(f"cannot join pair batches with different negative counts {sorted(sizes)}")
        return cls(*(torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)))


@dataclass(frozen=True, eq=False)
class Candidates:
    """Flat candidate correspondences: proposal cell (row_a, col_a) of image_a at the
    proposal level <-> window (row_b, col_b) of image_b at level_b; all (Q,) tensors."""

    image_a: torch.Tensor
    row_a: torch.Tensor
    col_a: torch.Tensor
    image_b: torch.Tensor
    level_b: torch.Tensor
    row_b: torch.Tensor
    col_b: torch.Tensor
    score: torch.Tensor

    def __len__(self) -> int:
        return self.image_a.shape[0]

    def select(self, index: torch.Tensor) -> Candidates:
        return Candidates(*(getattr(self, f.name)[index] for f in fields(self)))


# ---------------------------------------------------------------- geometry of a proposal


def square_offsets(size: int, proposal_size: int) -> tuple[int, int]:
    """(first, last) cell offset of a ``size`` square centred on a proposal at offset 0."""
    first = -((size - proposal_size) // 2)
    return first, first + size - 1


def verification_offsets(config: MiningConfig) -> torch.Tensor:
    """(V, 2) (drow, dcol) of the voting cells relative to the proposal's top-left cell."""
    first, last = square_offsets(config.verification_size, config.proposal_size)
    r = torch.arange(first, last + 1)
    grid = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)
    if config.verify_ring_only and config.verification_size > 2:
        on_ring = (grid == first).any(1) | (grid == last).any(1)
        grid = grid[on_ring]
    return grid


def corner_offsets(config: MiningConfig) -> torch.Tensor:
    """(4, 2) offsets of the positive square's corners (P12: -5 and +6 for a 2x2 proposal)."""
    first, last = square_offsets(config.positive_square, config.proposal_size)
    return torch.tensor([[first, first], [first, last], [last, first], [last, last]])


def cells_inside(valid: torch.Tensor, side: int) -> torch.Tensor:
    """(n, side, side) bool: the cells of a zero-padded map that belong to the image.

    Args:
        valid: (n, 2) true (h, w) of each map.
    """
    grid = torch.arange(side, device=valid.device)
    return (grid[None, :, None] < valid[:, 0, None, None]) & (grid[None, None, :] < valid[:, 1, None, None])


def near_cells(rows: torch.Tensor, cols: torch.Tensor, side: int, radius: int) -> torch.Tensor:
    """(n, side, side) bool: cells within ``radius`` (both axes) of (rows, cols), each (n,)."""
    grid = torch.arange(side, device=rows.device)
    return ((grid[None, :, None] - rows[:, None, None]).abs() <= radius) & (
        (grid[None, None, :] - cols[:, None, None]).abs() <= radius
    )


def gather_cells(level: torch.Tensor, image: torch.Tensor, row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Features of cells of a padded level (N, C, S, S); index tensors of one shape (*) -> (*, C)."""
    return level[image, :, row, col]


# ---------------------------------------------------------------- the four steps


def sample_proposals(valid: torch.Tensor, config: MiningConfig, generator: torch.Generator,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Random proposal positions at the proposal level.

    Args:
        valid: (N, 2) true (h, w) of each image's map at the proposal level.
        weights: (N, S, S) texture weight of every cell at that level (padding 0), or
            None. When given, a position is drawn with probability proportional to the
            mean weight of its proposal's cells, and never below
            ``config.min_proposal_weight``.

    Returns:
        (P, 3) long [image, row, col] of each proposal's top-left cell (P = 0 when no map
        is large enough for ``config.span``, or no position is heavy enough).
    """
    valid = valid.cpu()
    span = config.span
    margin = -square_offsets(span, config.proposal_size)[0]
    if weights is not None:
        return _weighted_proposals(valid, weights.cpu().float(), config, generator, margin)
    eligible = ((valid[:, 0] >= span) & (valid[:, 1] >= span)).nonzero()[:, 0]
    if len(eligible) == 0:
        return torch.zeros(0, 3, dtype=torch.long)
    n = config.n_proposals
    image = eligible[torch.randint(len(eligible), (n,), generator=generator)]
    room = valid[image] - span + 1  # (P, 2) possible top-left positions of the span square
    offset = (torch.rand(n, 2, generator=generator) * room).long()
    return torch.cat([image[:, None], offset + margin], dim=1)


def _weighted_proposals(valid: torch.Tensor, weights: torch.Tensor, config: MiningConfig, generator: torch.Generator,
                        margin: int) -> torch.Tensor:
    """Proposals drawn (with replacement) in proportion to their cells' mean texture weight."""
    n_images, side = weights.shape[0], weights.shape[-1]
    size, span = config.proposal_size, config.span
    mean = F.avg_pool2d(weights[:, None], size, stride=1)[:, 0]  # (N, S-size+1, S-size+1) at each top-left cell
    rows = torch.arange(mean.shape[1])
    # the span square around the proposal must lie inside the image: top-left in [margin, h - span + margin]
    inside_r = (rows[None] >= margin) & (rows[None] <= valid[:, :1] - span + margin)  # (N, R)
    inside_c = (rows[None] >= margin) & (rows[None] <= valid[:, 1:] - span + margin)
    mass = mean * inside_r[:, :, None] * inside_c[:, None, :] * (mean >= config.min_proposal_weight)
    flat = mass.flatten()
    if n_images == 0 or side < size or not bool((flat > 0).any()):
        return torch.zeros(0, 3, dtype=torch.long)
    pick = torch.multinomial(flat, config.n_proposals, replacement=True, generator=generator)
    per_image = mean.shape[1] * mean.shape[2]
    return torch.stack([pick // per_image, (pick % per_image) // mean.shape[2], pick % mean.shape[2]], dim=1)


def window_scores_many(level: torch.Tensor, valid: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of many queries at every window position, one convolution.

    Args:
        level: (B, C, S, S) padded features; valid: (B, 2) true (h, w).
        queries: (P, C, q, q).

    Returns:
        (B, P, S - q + 1, S - q + 1) scores in the bank's compute dtype, -inf where the
        window leaves the image.
    """
    q = queries.shape[-1]
    compute = torch.float32 if level.device.type == "cpu" else level.dtype
    scores = F.conv2d(level.to(compute), queries.to(device=level.device, dtype=compute)) / (q * q)
    inside = cells_inside(valid - q + 1, scores.shape[-1])  # top-left cells whose window fits
    return scores.masked_fill(~inside[:, None], float("-inf"))


def allowed_targets(image_a: torch.Tensor, n_images: int, neighbours: torch.Tensor | None) -> torch.Tensor:
    """(P, N) bool: the images each proposal is matched in.

    Args:
        image_a: (P,) image of each proposal.
        neighbours: (N, k) long shortlist neighbours of every image (-1 pads), or None
            for every image. A proposal's own image is never a candidate.
    """
    device = image_a.device
    if neighbours is None:
        allowed = torch.ones(len(image_a), n_images, dtype=torch.bool, device=device)
    else:
        if neighbours.dim() != 2 or neighbours.shape[0] != n_images:
            raise ValueError(f"neighbours must be (N={n_images}, k), got {tuple(neighbours.shape)}")
        nbrs = neighbours.to(device)
        per_image = torch.zeros(n_images, n_images + 1, dtype=torch.bool, device=device)
        per_image.scatter_(1, torch.where(nbrs < 0, n_images, nbrs), True)  # -1 lands in a dropped column
        allowed = per_image[image_a, :n_images]
    allowed[torch.arange(len(image_a), device=device), image_a] = False
    return allowed


def _maps(bank: FeatureBank, min_side: int = 1) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(image, level, (C, h, w) unpadded map) of every map with both sides >= ``min_side``."""
    for k, (level, valid) in enumerate(zip(bank.levels, bank.valid)):
        for b, (h, w) in enumerate(valid.tolist()):
            if h >= min_side and w >= min_side:
                yield b, k, level[b, :, :h, :w]


def match_candidates(bank: FeatureBank, proposals: torch.Tensor, config: MiningConfig,
                     neighbours: torch.Tensor | None = None) -> Candidates:
    """Top-K candidate windows of every proposal over every level of its candidate images.

    Each proposal keeps its best window per image (over positions and levels), then the
    K best images, as the authors' code does: candidates in K distinct images. The
    convolution runs on each unpadded map with the proposals allowed there.
    """
    level0 = bank.levels[config.proposal_level]
    device, p = level0.device, config.proposal_size
    props = proposals.to(device)
    r = torch.arange(p, device=device)
    queries = level0[props[:, 0, None, None], :, (props[:, 1, None] + r)[:, :, None], (props[:, 2, None] + r)[:, None, :]]
    compute = torch.float32 if device.type == "cpu" else level0.dtype
    queries = queries.permute(0, 3, 1, 2).to(compute) / (p * p)  # (P, C, p, p): a window's mean cosine
    n_props, n_images = len(props), len(bank)
    allowed = allowed_targets(props[:, 0], n_images, neighbours)
    best = torch.full((n_props, n_images), float("-inf"), device=device)
    where = torch.zeros(3, n_props, n_images, dtype=torch.long, device=device)  # level, row, col
    rows_of = [allowed[:, b].nonzero()[:, 0] for b in range(n_images)]
    for b, k, fmap in _maps(bank, p):
        rows = rows_of[b]
        if len(rows) == 0:
            continue
        scores = F.conv2d(fmap[None].to(compute), queries[rows])[0]  # (n, h - p + 1, w - p + 1)
        value, index = scores.flatten(1).float().max(dim=1)
        better = value > best[rows, b]
        best[rows, b] = torch.where(better, value, best[rows, b])
        width = scores.shape[-1]
        for slot, new in enumerate((torch.full_like(index, k), index // width, index % width)):
            where[slot, rows, b] = torch.where(better, new, where[slot, rows, b])
    score, image_b = best.topk(min(config.top_k, n_images), dim=1)  # (P, K)
    lvl, row, col = (torch.gather(w, 1, image_b) for w in where)
    keep = torch.isfinite(score).flatten()
    own = props[:, None].expand(-1, score.shape[1], -1).reshape(-1, 3)
    flat = Candidates(own[:, 0], own[:, 1], own[:, 2], image_b.flatten(), lvl.flatten(),
                      row.flatten(), col.flatten(), score.flatten())
    return flat.select(keep)


def _groups_by_map(image: torch.Tensor, level: torch.Tensor, n_levels: int,
                   chunk: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(image, level, indices) of the entries that fall in each map, in chunks of ``chunk``."""
    if len(image) == 0:
        return
    key = image * n_levels + level
    order = key.argsort(stable=True)
    keys, counts = torch.unique_consecutive(key[order], return_counts=True)
    for kv, members in zip(keys.tolist(), order.split(counts.tolist())):
        for part in members.split(chunk):
            yield kv // n_levels, kv % n_levels, part


def _map_of(bank: FeatureBank, image: int, level: int) -> tuple[torch.Tensor, int, int]:
    """(C, h*w) features of one unpadded map, its h and w."""
    h, w = (int(v) for v in bank.valid[level][image])
    fmap = bank.levels[level][image, :, :h, :w]
    return fmap.reshape(fmap.shape[0], h * w), h, w


def count_votes(bank: FeatureBank, cand: Candidates, config: MiningConfig) -> torch.Tensor:
    """Votes of the verification cells for each candidate (paper §3.1).

    A cell at offset d from the proposal votes when its nearest neighbour in the
    candidate's map lies within ``vote_tolerance`` cells of the candidate's cell + d.

    Returns:
        (Q,) long vote counts.
    """
    level_a = bank.levels[config.proposal_level]
    offsets = verification_offsets(config).to(level_a.device)  # (V, 2)
    votes = torch.zeros(len(cand), dtype=torch.long, device=level_a.device)
    side = level_a.shape[-1]
    for b, k, sel in _groups_by_map(cand.image_b, cand.level_b, len(bank.levels), config.chunk_candidates):
        c = cand.select(sel)
        fmap, _, w = _map_of(bank, b, k)
        # Overlapping proposals of one image share voting cells: each distinct cell is
        # matched once (on the demo 1.7x fewer matmul rows, the bulk of mining's time).
        rows, cols = c.row_a[:, None] + offsets[:, 0], c.col_a[:, None] + offsets[:, 1]  # (n, V)
        cells, inverse = torch.unique((c.image_a[:, None] * side + rows) * side + cols, return_inverse=True)
        voters = gather_cells(level_a, cells // (side * side), cells // side % side, cells % side)  # (U, C)
        nearest = (voters.to(fmap.dtype) @ fmap).float().argmax(dim=1)[inverse]  # (n, V) into the map's h*w cells
        drow = nearest // w - (c.row_b[:, None] + offsets[:, 0])
        dcol = nearest % w - (c.col_b[:, None] + offsets[:, 1])
        agree = (drow.abs() <= config.vote_tolerance) & (dcol.abs() <= config.vote_tolerance)
        votes[sel] = agree.sum(dim=1)
    return votes


def select_verified(votes: torch.Tensor, score: torch.Tensor, config: MiningConfig) -> torch.Tensor:
    """Indices of the top ``verified_fraction`` of candidates by votes (ties: by score) that
    also reach the absolute floor ``config.min_votes``."""
    if len(votes) == 0:
        return torch.zeros(0, dtype=torch.long, device=votes.device)
    order = score.argsort(descending=True, stable=True)
    order = order[votes[order].argsort(descending=True, stable=True)]
    n_keep = math.ceil(config.verified_fraction * len(votes))
    top = order[:n_keep]
    return top[votes[top] >= config.min_votes]


def top_allowed(sim: torch.Tensor, allowed: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` best allowed entries of each row of ``sim`` (M, K).

    Where fewer than ``n`` are allowed, the best one fills the remaining slots, so every
    row has exactly ``n`` (a repeated negative only weighs more).

    Returns:
        index (M, n) long, and ok (M,) bool: False where nothing was allowed.
    """
    sim = sim.masked_fill(~allowed, float("-inf"))
    value, index = sim.topk(min(n, sim.shape[1]), dim=1)
    index = torch.where(torch.isfinite(value), index, index[:, :1])
    if index.shape[1] < n:
        index = torch.cat([index, index[:, :1].expand(-1, n - index.shape[1])], dim=1)
    return index, torch.isfinite(value[:, 0])


def top_matches(anchors: torch.Tensor, maps: torch.Tensor, allowed: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n`` cells of each map most similar to its anchor, among allowed cells.

    Args:
        anchors: (M, C) features; maps: (M, C, S, S) padded maps; allowed: (M, S, S) bool.

    Returns:
        rows (M, n), cols (M, n) long, and ok (M,) bool: False where no cell was allowed.
    """
    side = maps.shape[-1]
    sim = torch.einsum("mc,mcs->ms", anchors.to(maps.dtype), maps.flatten(2)).float()
    index, ok = top_allowed(sim, allowed.flatten(1), n)
    return index // side, index % side, ok


def _grid_near(rows: torch.Tensor, cols: torch.Tensor, h: int, w: int, radius: int) -> torch.Tensor:
    """(n, h*w) bool: cells of an h x w map within ``radius`` (both axes) of (rows, cols)."""
    r = torch.arange(h, device=rows.device)
    c = torch.arange(w, device=rows.device)
    near = ((r[None, :, None] - rows[:, None, None]).abs() <= radius) & ((c[None, None, :] - cols[:, None, None]).abs() <= radius)
    return near.flatten(1)


def positive_pairs(bank: FeatureBank, cand: Candidates, config: MiningConfig) -> PairBatch:
    """P12 positives of verified candidates and their hard negatives (paper §3.1-3.2).

    P2 is P1's best match within ``positive_search`` cells of where the candidate's
    displacement puts it; negatives are P1's best matches in P2's map outside
    ``negative_exclusion`` cells of P2.
    """
    corners = corner_offsets(config).to(cand.row_a.device)  # (4, 2)
    img_a, img_b, lvl_b = (_per_corner(t) for t in (cand.image_a, cand.image_b, cand.level_b))
    row_a = (cand.row_a[:, None] + corners[:, 0]).reshape(-1)
    col_a = (cand.col_a[:, None] + corners[:, 1]).reshape(-1)
    row_b = (cand.row_b[:, None] + corners[:, 0]).reshape(-1)
    col_b = (cand.col_b[:, None] + corners[:, 1]).reshape(-1)
    size_b = torch.stack(bank.valid)[lvl_b, img_b]  # (M, 2) true (h, w) of B's map
    inside = (row_b >= 0) & (col_b >= 0) & (row_b < size_b[:, 0]) & (col_b < size_b[:, 1])
    level_a = bank.levels[config.proposal_level]
    neg_rows = torch.zeros(len(img_a), config.n_negatives, dtype=torch.long, device=img_a.device)
    neg_cols = torch.zeros_like(neg_rows)
    kept = inside.nonzero()[:, 0]
    for b, k, part in _groups_by_map(img_b[kept], lvl_b[kept], len(bank.levels), config.chunk_candidates):
        sel = kept[part]
        fmap, h, w = _map_of(bank, b, k)
        anchors = gather_cells(level_a, img_a[sel], row_a[sel], col_a[sel])
        sim = (anchors.to(fmap.dtype) @ fmap).float()  # (n, h*w)
        best = sim.masked_fill(~_grid_near(row_b[sel], col_b[sel], h, w, config.positive_search), float("-inf")).argmax(dim=1)
        row_b[sel], col_b[sel] = best // w, best % w
        index, ok = top_allowed(sim, ~_grid_near(row_b[sel], col_b[sel], h, w, config.negative_exclusion), config.n_negatives)
        neg_rows[sel], neg_cols[sel] = index // w, index % w
        inside[sel] &= ok
    pl = torch.full_like(img_a, config.proposal_level)
    negatives = torch.stack([img_b[:, None].expand_as(neg_rows), lvl_b[:, None].expand_as(neg_rows), neg_rows, neg_cols], dim=-1)
    batch = PairBatch(torch.stack([img_a, pl, row_a, col_a], 1), torch.stack([img_b, lvl_b, row_b, col_b], 1),
                      negatives, torch.ones_like(img_a, dtype=torch.bool), torch.full_like(img_a, PairBatch.MINED))
    return batch.select(inside.nonzero()[:, 0])


def _per_corner(t: torch.Tensor) -> torch.Tensor:
    """(Q,) -> (4Q,): each candidate's value repeated for its 4 corners."""
    return t[:, None].expand(-1, 4).reshape(-1)


@dataclass(frozen=True)
class MiningStats:
    """What one mining round found: candidates, verified ones, and their votes."""

    n_proposals: int
    n_candidates: int
    n_verified: int
    n_pairs: int
    min_votes: int
    median_votes_verified: float


@torch.no_grad()
def proposal_weights(bank: FeatureBank, level: int = 0, texture: TextureConfig = TextureConfig(),
                     counts: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """(N, S, S) texture weight of every cell at ``level`` (padding 0): repeats within the
    image and across the collection, as discovery weighs cells (:mod:`engine.texture`).

    ``counts``: the collection counts of the bank's images in bank order, when already
    computed (:func:`engine.texture.collection_counts`; discovery keeps them);
    None computes them here.
    """
    pyramids = [bank.pyramid(i) for i in range(len(bank))]
    if counts is not None and len(counts) != len(bank):
        raise ValueError(f"proposal_weights got {len(counts)} collection counts for {len(bank)} images")
    if counts is None and len(bank) > 1:
        coarse = [min(texture.collection_level, len(p.levels) - 1) for p in pyramids]
        counts = collection_counts([p.levels[k].float() for p, k in zip(pyramids, coarse)], texture,
                                   keys=list(bank.image_ids))
    counts = counts if counts is not None else [None] * len(bank)
    side = bank.levels[level].shape[-1]
    out = torch.zeros(len(bank), side, side)
    for i, (pyramid, count) in enumerate(zip(pyramids, counts)):
        single = FeaturePyramid((pyramid.levels[0].float(), pyramid.levels[level].float()), pyramid.image_size)
        w = combined_weights(single, count, texture)[1 if level else 0].cpu()
        out[i, : w.shape[0], : w.shape[1]] = w
    return out


@torch.no_grad()
def mine_pairs(bank: FeatureBank | Sequence[FeaturePyramid], generator: torch.Generator | int,
               config: MiningConfig = MiningConfig(), neighbours: torch.Tensor | None = None,
               stats: list[MiningStats] | None = None, weights: torch.Tensor | None = None) -> PairBatch:
    """One round of self-supervised mining over a collection (paper §3.1).

    Args:
        bank: the collection's current features (a bank, or pyramids in image order),
            every level L2-normalised.
        generator: a CPU ``torch.Generator`` (or a seed) drawing the proposals.
        neighbours: (N, k) shortlist neighbours of each image (-1 pads): candidates are
            searched there only. None: in every other image.
        stats: when given, a :class:`MiningStats` of the round is appended to it.
        weights: (N, S, S) texture weights at the proposal level (see
            :func:`sample_proposals`); None: :func:`proposal_weights` when
            ``config.texture_proposals``, else proposals are drawn uniformly (the paper).

    Returns:
        Mined positive pairs with hard negatives, on the CPU; empty when the collection
        has fewer than two images or no map holds a ``config.span`` square.
    """
    if not isinstance(bank, FeatureBank):
        bank = FeatureBank.build([str(i) for i in range(len(bank))], list(bank))
    if not 0 <= config.proposal_level < len(bank.levels):
        raise ValueError(f"proposal_level {config.proposal_level} outside the bank's {len(bank.levels)} levels")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    if weights is None and config.texture_proposals:
        weights = proposal_weights(bank, config.proposal_level)
    proposals = sample_proposals(bank.valid[config.proposal_level], config, generator, weights)
    if len(bank) < 2 or len(proposals) == 0:
        return PairBatch.empty(config.n_negatives)
    cand = match_candidates(bank, proposals, config, neighbours)
    votes = count_votes(bank, cand, config)
    chosen = select_verified(votes, cand.score, config)
    pairs = positive_pairs(bank, cand.select(chosen), config).to("cpu")
    if stats is not None:
        verified = votes[chosen].float()
        stats.append(MiningStats(len(proposals), len(cand), len(chosen), len(pairs), config.min_votes,
                                 float(verified.median()) if len(verified) else math.nan))
    return pairs
