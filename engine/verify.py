"""Pair verification: the repeated regions shared by two images (paper §4.1-4.2).

For a pair (A, B), every step batched over many pairs at once on the device:

1. dense matches: A's features at its reference level against every level of B, mutual
   nearest neighbours per level of B (cosine similarity, one matmul per level; on CPUs
   pair by pair on true sizes with all of B's levels in one product, bf16 products where
   the CPU has them natively (``VerifyConfig.precision``);
2. Hough voting: each match votes for a change of scale (the level of B it was found at)
   and a translation (in B cells of that level); votes are spread by a Gaussian and the
   top ``n_candidates`` peaks are the candidate transforms;
3. groups: per candidate, the matches that agree with it within a permissive tolerance;
4. RANSAC: ``ransac_iterations`` 3-point affine hypotheses per group (closed-form
   solves), the hypotheses of all groups of all pairs scored as batched tensor
   operations on the group's matches (eq. 2's Gaussian, lowered to reach 0 at the
   inlier threshold);
5. refit: least squares on the inliers among all the pair's matches;
6. backward verification: an inlier's B position must map back onto its A cell through
   the inverse affine, and matches must be one-to-one in both directions;
7. only large 4-connected groups of inlier cells on A's grid survive; score (paper eq. 2)
   S = 1/N sum_i exp(-e_i^2 / 2 sigma^2) s_i over the inliers, N = features of A.

Coordinates are original pixels as ``(x, y)``; the affine maps A pixels to B pixels. A
is matched at its finest level only, so a copy is found when it is at least as large
(relative to its image's cell size) in B as in A: verify both orders for symmetry.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.nn.utils.rnn import pad_sequence

from engine.features import FeaturePyramid, cpu_has_native_bf16
from engine.texture import TextureConfig, pyramid_weights
from engine.types import Box, PairMatch

SCORES = ("authors", "gaussian")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class VerifyConfig:
    n_candidates: int = 10  # paper §4.1: "the top 10 translation candidates" of the Hough vote
    hough_tolerance: float = 2.0  # vote kernel exp(-d^2/tol^2), d in B cells (authors' code: 2)
    hough_min_votes: float = 3.0  # smoothed votes a peak needs to become a candidate
    group_tolerance: float = 3.0  # "permissive threshold": B cells (candidate's level) from its transform
    max_group: int = 128  # matches per group scored by RANSAC (most similar first; refit uses all)
    ransac_iterations: int = 1000  # 3-point affine hypotheses per group (authors' code: 1000)
    inlier_threshold: float = 2.0  # residual limit: B cells at the match's level, A cells backwards
    score_sigma: float = 1.4  # sigma of the Gaussian weighting RANSAC's hypotheses (authors' exp(-e^2/tol^2): tol/sqrt 2)
    max_anisotropy: float = 3.0  # affines stretching one axis over 3x the other are degenerate fits
    refit_iterations: int = 2  # least-squares refits on the inliers of all the pair's matches
    min_inliers: int = 6  # regions with fewer final inliers are dropped
    min_component: int = 3  # smaller connected groups of inlier cells go (authors' code: 3)
    # Inlier components: 8-connected on A's grid and on B's (B's positions mapped back to
    # A's frame), dropped and relabelled until stable, as the authors' KeepOnlyLargeCC;
    # 4 = the first version (4-connected on A's grid only, once).
    connectivity: int = 8
    # The pair's score. "authors": sum of the inliers' similarities over N, A's cells
    # less a `margin`-cell border (their pair_discovery.py: no Gaussian, and border cells,
    # spoilt by the network's zero padding, take no part). "gaussian": the first version's
    # eq. 2 reading, each similarity weighted by exp(-e^2 / 2 sigma^2) over all A cells.
    score: str = "authors"
    margin: int = 3  # A cells this close to the image border take no part (whole-image A only)
    max_regions_per_pair: int = 5  # distinct regions kept per pair, best score first
    dedupe_iou: float = 0.5  # regions whose A boxes overlap more are one region (best kept)
    seed: int = 0  # RANSAC samples; the same for every pair, so batching never changes results
    # Repetitive texture (engine.texture): each match's similarity and Hough vote are
    # weighted by the product of its two cells' burstiness weights, and N of the score is
    # A's texture-weighted cell count. False: every cell weighs 1 (the paper).
    texture_weight: bool = True
    texture: TextureConfig = field(default_factory=TextureConfig)
    # Inliers on cells weighing less than this (texture) are left out of the region, so a
    # copied picture matched together with its page's script is stored as the picture.
    region_min_weight: float = 0.35
    # A group's inliers that fall apart into separate clusters on A's grid (more than
    # 2 x `split_gap` empty cells between them) are separate details, each its own region with
    # its own score and refit affine, so two copied figures moved together, or a figure and
    # a stretch of scenery that happen to agree, are stored as what they are, not as one box
    # around both. -1 = one region per group (session 3).
    split_gap: int = 1
    # Inlier correspondences kept per region (PairMatch.inliers), heaviest first: the
    # review page draws them; 64 show a region's pattern and keep a link's row small.
    max_points: int = 64
    # Arithmetic on CPUs (issue 12). "auto": the dense similarity products (step 1, about
    # two thirds of the time) in bfloat16 where the CPU computes it natively
    # (engine.features.cpu_has_native_bf16: avx512_bf16 / AMX; a 1200 x 3300 block 21 -> 5 ms
    # on one core), float32 elsewhere, and the Hough votes smoothed by a separable kernel
    # (the same Gaussian, float rounding differs). bf16 ranks the matches on rounded
    # similarities (near-ties may pick another neighbour) and recomputes each kept
    # similarity in float32. "fp32": the exact switch, float32 products and the 2-D
    # smoothing, bit for bit the first version's results. "bf16": as "auto", bfloat16
    # even without native support (slow; for tests). GPUs keep their float16 batched path.
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("n_candidates", "max_group", "ransac_iterations", "max_regions_per_pair",
                     "min_inliers", "min_component", "max_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"VerifyConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("hough_tolerance", "group_tolerance", "inlier_threshold", "score_sigma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VerifyConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.max_anisotropy < 1:
            raise ValueError(f"VerifyConfig.max_anisotropy must be >= 1, got {self.max_anisotropy}")
        if self.connectivity not in (4, 8):
            raise ValueError(f"VerifyConfig.connectivity must be 4 or 8, got {self.connectivity}")
        if self.score not in SCORES:
            raise ValueError(f"VerifyConfig.score must be one of {SCORES}, got {self.score!r}")
        if self.margin < 0:
            raise ValueError(f"VerifyConfig.margin must be >= 0, got {self.margin}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"VerifyConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")

    def product_dtype(self) -> torch.dtype | None:
        """bfloat16 for the CPU's similarity products, or None for float32."""
        if self.precision == "auto":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return torch.bfloat16 if self.precision == "bf16" else None


# Largest (rows x cols) tensor one batched step materialises at once: small on CPU, where
# it must stay in cache, large on a GPU, where it must fill the device.
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 28}


def _chunk_elements(device: torch.device) -> int:
    return _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS["cpu"])


# Hough bins are ranked by one int64 key: quantised votes above _TIE_BITS bits of a rank
# by (level, dy, dx) with 12 bits per offset, hence at most 2^6 levels.
_TIE_BITS = 30
_MAX_LEVELS = 1 << (_TIE_BITS - 24)


# ---------------------------------------------------------------- batching pyramids


@dataclass
class PairBatch:
    """Features of P pairs, zero-padded to common sizes.

    Attributes:
        feats_a: (P, NA, C) A's reference level, one row per cell (row-major), zero rows
            for padding and for cells outside ``region_a``.
        a_valid: (P, NA) bool, the rows that take part.
        a_grid: (P, 2) long (h, w) of A's reference level.
        a_cell: (P, 2) float pixels per A cell (x, y).
        n_source: (P,) float, N of eq. 2: the A cells that take part (texture-weighted).
        a_weight: (P, NA) texture weight of A's cells (1 without texture weighting).
        feats_b: per level k of B, (P, n_k, C) features, zero rows for padding.
        b_weight: per level k of B, (P, n_k) texture weights.
        b_grid: (P, L, 2) long (h, w) per level, 0 where B lacks the level.
        b_cell: (P, L, 2) float pixels per B cell (x, y), 1 where B lacks the level.
        b_size: (P, 2) float (W, H) of B.
    """

    feats_a: torch.Tensor
    a_valid: torch.Tensor
    a_grid: torch.Tensor
    a_cell: torch.Tensor
    n_source: torch.Tensor
    a_weight: torch.Tensor
    feats_b: list[torch.Tensor]
    b_weight: list[torch.Tensor]
    b_grid: torch.Tensor
    b_cell: torch.Tensor
    b_size: torch.Tensor


def _check_pyramid(pyramid: FeaturePyramid, name: str) -> None:
    if not pyramid.levels or any(t.ndim != 3 or t.numel() == 0 for t in pyramid.levels):
        raise ValueError(f"image {name!r}: feature pyramid has no levels or an empty (C, h, w) level")
    if len(pyramid.levels) > _MAX_LEVELS:
        raise ValueError(f"image {name!r}: {len(pyramid.levels)} pyramid levels, at most {_MAX_LEVELS} supported")
    if min(pyramid.image_size) <= 0:
        raise ValueError(f"image {name!r}: image size {pyramid.image_size} is empty")


def _rows(level: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(C, h, w) -> (h * w, C) on the device, row-major cells."""
    return level.flatten(1).T.to(device=device, dtype=dtype)


def _region_cells(h: int, w: int, cell: tuple[float, float], region: Box | None, margin: int = 0) -> torch.Tensor:
    """(h * w,) bool: cells whose centre lies inside ``region``; when None, every cell at
    least ``margin`` cells from the border (all of them on a grid too small for one)."""
    if region is None:
        inner = torch.zeros(h, w, dtype=torch.bool)
        if h > 2 * margin and w > 2 * margin:
            inner[margin : h - margin, margin : w - margin] = True
        else:
            inner[:] = True
        return inner.flatten()
    xs = (torch.arange(w) + 0.5) * cell[0]
    ys = (torch.arange(h) + 0.5) * cell[1]
    inside_x = (xs >= region.x0) & (xs < region.x1)
    inside_y = (ys >= region.y0) & (ys < region.y1)
    return (inside_y[:, None] & inside_x[None, :]).flatten()


Weights = tuple[torch.Tensor, ...]  # one (h_k, w_k) texture weight map per pyramid level


def stack_pairs(
    pairs: Sequence[tuple[FeaturePyramid, FeaturePyramid, Box | None]],
    names: Sequence[tuple[str, str]],
    device: torch.device,
    weights: Sequence[tuple[Weights, Weights]] | None = None,
    margin: int = 0,
) -> PairBatch:
    """Pad the pyramids of P pairs (A, B, region of A or None) into one :class:`PairBatch`.

    ``weights``: per pair, the texture weights of A's and B's levels; None: all ones.
    ``margin``: A cells this close to the border take no part when A has no region.
    """
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # no fast half reductions on CPUs
    n_levels = max(len(b.levels) for _, b, _ in pairs)
    channels = pairs[0][0].levels[0].shape[0]
    for (a, b, _), (name_a, name_b) in zip(pairs, names):
        _check_pyramid(a, name_a)
        _check_pyramid(b, name_b)
        if a.levels[0].shape[0] != channels or any(t.shape[0] != channels for t in b.levels):
            raise ValueError(f"pair ({name_a!r}, {name_b!r}): feature channels differ from {channels}")
    inside = [_region_cells(a.levels[0].shape[1], a.levels[0].shape[2], a.cell_size(0), region, margin)
              for a, _, region in pairs]
    feats_a = pad_sequence([_rows(a.levels[0], device, dtype) * m[:, None].to(device)
                            for (a, _, _), m in zip(pairs, inside)], batch_first=True)
    a_valid = pad_sequence(inside, batch_first=True)
    if weights is None:
        weights = [(tuple(torch.ones(t.shape[1:]) for t in a.levels[:1]), tuple(torch.ones(t.shape[1:]) for t in b.levels))
                   for a, b, _ in pairs]
    a_weight = pad_sequence([wa[0].flatten().float() * m for (wa, _), m in zip(weights, inside)],
                            batch_first=True).to(device)
    b_weight = [pad_sequence([wb[k].flatten().float() if k < len(wb) else torch.zeros(0) for _, wb in weights],
                             batch_first=True).to(device) for k in range(n_levels)]
    empty = torch.zeros(0, channels, dtype=dtype, device=device)
    feats_b = [pad_sequence([_rows(b.levels[k], device, dtype) if k < len(b.levels) else empty for _, b, _ in pairs],
                            batch_first=True) for k in range(n_levels)]
    b_grid = [[tuple(b.levels[k].shape[1:]) if k < len(b.levels) else (0, 0) for k in range(n_levels)]
              for _, b, _ in pairs]
    b_cell = [[b.cell_size(k) if k < len(b.levels) else (1.0, 1.0) for k in range(n_levels)] for _, b, _ in pairs]
    a_grid = [tuple(a.levels[0].shape[1:]) for a, _, _ in pairs]
    return PairBatch(
        feats_a=feats_a,
        a_valid=a_valid.to(device),
        a_grid=torch.tensor(a_grid, dtype=torch.long, device=device),
        a_cell=torch.tensor([a.cell_size(0) for a, _, _ in pairs], dtype=torch.float32, device=device),
        n_source=a_weight.sum(1),
        a_weight=a_weight,
        feats_b=feats_b,
        b_weight=b_weight,
        b_grid=torch.tensor(b_grid, dtype=torch.long, device=device),
        b_cell=torch.tensor(b_cell, dtype=torch.float32, device=device),
        b_size=torch.tensor([b.image_size for _, b, _ in pairs], dtype=torch.float32, device=device),
    )


# ---------------------------------------------------------------- dense matches


def mutual_nearest(feats_a: torch.Tensor, feats_b: torch.Tensor, chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours by cosine similarity (features are L2-normalised).

    Args:
        feats_a: (P, NA, C); feats_b: (P, NB, C); zero rows never win against a positive
            similarity, and the caller drops matches of non-positive similarity.

    Returns:
        index (P, NA) long: each A row's nearest B row; sim (P, NA) float32 its similarity;
        mutual (P, NA) bool: that B row's nearest A row is this one.
    """
    P, n_a, _ = feats_a.shape
    n_b = feats_b.shape[1]
    index = torch.zeros(P, n_a, dtype=torch.long, device=feats_a.device)
    sim = torch.zeros(P, n_a, device=feats_a.device)
    mutual = torch.zeros(P, n_a, dtype=torch.bool, device=feats_a.device)
    if n_b == 0:
        return index, sim, mutual
    step = max(1, chunk_elements // max(1, n_a * n_b))
    for s in range(0, P, step):  # chunks of pairs bound the (pairs, NA, NB) similarity tensor
        scores = torch.bmm(feats_a[s : s + step], feats_b[s : s + step].transpose(1, 2))  # (p, NA, NB)
        best_sim, best = scores.max(dim=2)  # (p, NA)
        # Mutual when this A row is (one of) the column's best: a column max is several
        # times cheaper than a column argmax on CPUs, and exact ties are immaterial.
        column_best = scores.amax(dim=1)  # (p, NB)
        index[s : s + step] = best
        sim[s : s + step] = best_sim.float()
        mutual[s : s + step] = best_sim >= column_best.gather(1, best)
    return index, sim, mutual


# Row maxima with their first index, in two steps: a plain max over each group of
# _ARGMAX_GROUP columns (vectorised along the row, ~15x faster than torch.max with indices
# on CPUs), then a search only inside the first group that holds the maximum. Columns are
# reduced by folding rows onto each other (a reduction over a leading dimension vectorises
# along the row too; torch's 2-D amax(dim=0) does not). Same values and first indices as torch.max.
_ARGMAX_GROUP = 64
_FOLD = 16


def column_max(scores: torch.Tensor) -> torch.Tensor:
    """(n, m) row-contiguous -> column maxima (m,), as ``scores.amax(dim=0)``."""
    n = scores.shape[0]
    if n < 2 * _FOLD:
        return scores.amax(dim=0)
    folded = scores[: n // _FOLD * _FOLD].unflatten(0, (_FOLD, n // _FOLD)).amax(0).amax(0)
    return folded if n % _FOLD == 0 else torch.maximum(folded, scores[n // _FOLD * _FOLD :].amax(0))


def _pair_columns(feats_b: Sequence[torch.Tensor], p: int, n_b: list[int],
                  ) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """Pair ``p``'s B features, its levels side by side, each padded to whole groups of
    :data:`_ARGMAX_GROUP` rows (so that no group of columns spans two levels; the padding
    rows repeat a true cell and their columns are masked).

    Returns:
        feats (NP, C); pads: the (first, end) columns of each level's padding; level
        (NP / group,) long, the level of each group of columns; start (L,) long, the first
        column of each level.
    """
    device = feats_b[0].device
    widths = [-(-n // _ARGMAX_GROUP) * _ARGMAX_GROUP for n in n_b]
    starts = [0, *itertools.accumulate(widths)][:-1]
    feats = torch.cat([f[p, torch.arange(w, device=device).clamp_max(n - 1)] for f, n, w in zip(feats_b, n_b, widths)])
    pads = [(s + n, s + w) for s, n, w in zip(starts, n_b, widths) if w > n]
    level = torch.repeat_interleave(torch.arange(len(n_b), device=device),
                                    torch.tensor(widths, device=device) // _ARGMAX_GROUP)
    return feats, pads, level, torch.tensor(starts, device=device)


def _level_argmax(scores: torch.Tensor, level: torch.Tensor, n_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(na, NP) similarities with B's levels side by side (whole groups of columns per
    level, padding columns -inf) -> per level the row maxima (na, L) and the first column
    holding each (na, L), as ``torch.max`` over each level's columns (-inf and an
    arbitrary column for a level without columns)."""
    na, n_cols = scores.shape
    n_groups = n_cols // _ARGMAX_GROUP
    blocks = scores.view(na, n_groups, _ARGMAX_GROUP)
    groups = blocks.amax(2)  # (na, G)
    at = level[None].expand(na, -1)
    best = groups.new_full((na, n_levels), -math.inf).scatter_reduce_(1, at, groups, "amax")
    # The first group holding its level's maximum: the largest (G - group) among those that do.
    from_end = torch.where(groups == best.gather(1, at), n_groups - torch.arange(n_groups, device=scores.device), 0)
    first = n_groups - torch.zeros_like(best, dtype=torch.long).scatter_reduce_(1, at, from_end, "amax")
    window = blocks[torch.arange(na, device=scores.device)[:, None], first.clamp_max(n_groups - 1)]  # (na, L, group)
    # The first column of the window holding the maximum, by a max (vectorised) not an argmax.
    rank = torch.arange(_ARGMAX_GROUP, 0, -1, device=scores.device, dtype=scores.dtype)
    within = _ARGMAX_GROUP - torch.where(window == best[..., None], rank, 0).amax(2).long()
    return best, first * _ARGMAX_GROUP + within


def _exact_claims(claims: torch.Tensor, best: torch.Tensor, fa: torch.Tensor,
                  fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual matches found on rounded (bf16) similarities, made one-to-one in float32:
    ``>=`` on rounded values lets every row tied at a column's rounded maximum claim it
    (bf16 keeps 8 bits: 5 % more matches on the demo); of the rows claiming one column,
    only the one of highest float32 similarity keeps it, as float32 would.

    Args:
        claims: (na, L) bool, rows mutual on rounded values; best: (na, L) long their
            columns; fa (na, C), fb (NP, C) the float32 features.

    Returns:
        (na, L) bool the claims that stand, and (na, L) float32 their similarity (0 elsewhere).
    """
    row, lev = claims.nonzero(as_tuple=True)
    column = best[row, lev]
    exact = (fa[row] * fb[column]).sum(-1)
    top = exact.new_full((len(fb),), -math.inf).scatter_reduce_(0, column, exact, "amax")
    stands = claims.index_put((row, lev), exact >= top[column])
    return stands, exact.new_zeros(claims.shape).index_put((row, lev), exact)


def mutual_nearest_levels(batch: PairBatch, low: torch.dtype | None = None,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`mutual_nearest` of A's reference level with every level of B, pair by pair
    on true sizes: one product per pair with all of B's levels side by side, one column
    maximum, one grouped row maximum for all levels (few large operations, not many small),
    and only A's rows that take part (``a_valid``: the margin's cells are a third of a
    40 x 30 grid).

    Gives what the padded path gives wherever it matters: equal index and similarity for
    every A row (a row whose best real similarity is negative points past B's cells with
    similarity 0 where the batch pads that level, as it found a padding column there), and
    equal ``mutual`` wherever the similarity is positive (a zero padding row cannot beat a
    positive column maximum).

    ``low``: the dtype of the similarity products (bfloat16; None: float32, exact). The
    matches are then ranked on rounded similarities (near-ties may resolve otherwise than
    in float32) and each kept similarity is recomputed in float32.

    Returns:
        index, sim, mutual: (P, L, NA), per level of B as :func:`mutual_nearest`.
    """
    P, n_a_pad, _ = batch.feats_a.shape
    n_levels, device = len(batch.feats_b), batch.feats_a.device
    index = torch.zeros(P, n_levels, n_a_pad, dtype=torch.long, device=device)
    sim = torch.zeros(P, n_levels, n_a_pad, device=device)
    mutual = torch.zeros(P, n_levels, n_a_pad, dtype=torch.bool, device=device)
    padded = torch.tensor([f.shape[1] for f in batch.feats_b], device=device)  # the batch's cells per level
    for p, counts in enumerate(batch.b_grid.prod(-1).tolist()):
        fb, pads, level, start = _pair_columns(batch.feats_b, p, counts)
        # Rows left out are the padded path's zero rows: index 0, similarity 0, and no
        # influence on a positive column maximum.
        rows = batch.a_valid[p].nonzero()[:, 0]
        if len(rows) == 0:
            continue
        fa = batch.feats_a[p, rows]
        scores = fa @ fb.T if low is None else (fa.to(low) @ fb.to(low).T).float()  # (na, NP)
        column = column_max(scores)
        for first, end in pads:  # padding columns never win a row
            scores[:, first:end] = -math.inf
        best_sim, best = _level_argmax(scores, level, n_levels)  # (na, L)
        both = best_sim >= column.gather(0, best.flatten().clamp_max(len(column) - 1)).view_as(best)
        if low is not None:
            claims = both & (best_sim > 0)
            both, exact = _exact_claims(claims, best, fa, fb)
            best_sim = torch.where(claims, exact, best_sim)  # the mutual matches' similarities in float32
        n_b = torch.tensor(counts, device=device)
        past = (best_sim < 0) & (n_b < padded)  # the padded path's padding column (similarity 0) wins there
        best = torch.where(past, n_b, best - start)
        best_sim = torch.where(past, 0.0, best_sim)
        absent = n_b == 0  # B lacks the level: nothing to match
        index[p, :, rows] = torch.where(absent, 0, best).T
        sim[p, :, rows] = torch.where(absent, 0.0, best_sim).T
        mutual[p, :, rows] = (both & ~absent).T
    return index, sim, mutual


@dataclass
class Matches:
    """The mutual matches of P pairs, compacted and padded to M per pair.

    Attributes:
        valid: (P, M) bool. a_index: (P, M) long flat cell of A's grid. level: (P, M) long
        level of B. shift: (P, M, 2) long translation (dx, dy) in cells of that level.
        pa, pb: (P, M, 2) cell centres in pixels. unit: (P, M, 2) B's cell size at the
        match's level (pixels). texture: (P, M) product of both cells' texture weights.
        sim: (P, M) cosine similarity times ``texture``, 0 where invalid: the weight of
        the match in the vote, in RANSAC and in the score.
    """

    valid: torch.Tensor
    a_index: torch.Tensor
    level: torch.Tensor
    shift: torch.Tensor
    pa: torch.Tensor
    pb: torch.Tensor
    unit: torch.Tensor
    texture: torch.Tensor
    sim: torch.Tensor


def _cell_centres(flat: torch.Tensor, width: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat cell indices -> (…, 2) long (col, row) and (…, 2) float pixel centres."""
    colrow = torch.stack([flat % width, torch.div(flat, width, rounding_mode="floor")], dim=-1)
    return colrow, (colrow.float() + 0.5) * cell


def dense_matches(batch: PairBatch, chunk_elements: int, trimmed: bool = False,
                  low: torch.dtype | None = None) -> Matches:
    """Mutual nearest neighbours of A's reference cells with each level of B, compacted.

    ``trimmed``: pair by pair on true sizes (:func:`mutual_nearest_levels`, the same
    matches, or nearly with ``low`` = bfloat16 products); else batched over the padded
    tensors (one bmm per level: best on a GPU).
    """
    P, n_a, _ = batch.feats_a.shape
    n_levels = len(batch.feats_b)
    n_b_max = max(max((f.shape[1] for f in batch.feats_b), default=0), 1)
    b_index = torch.zeros(P, n_levels, n_a, dtype=torch.long, device=batch.feats_a.device)
    sim = torch.zeros(P, n_levels, n_a, device=batch.feats_a.device)
    ok = torch.zeros(P, n_levels, n_a, dtype=torch.bool, device=batch.feats_a.device)
    n_b = batch.b_grid.prod(-1)  # (P, L) true cells per level
    if trimmed:  # every level at once, pair by pair
        b_index, sim, mutual = mutual_nearest_levels(batch, low)
        ok = mutual & batch.a_valid[:, None] & (b_index < n_b[..., None]) & (sim > 0)
    for k, feats_b in enumerate(batch.feats_b if not trimmed else ()):  # one matmul per level of B
        index, s, mutual = mutual_nearest(batch.feats_a, feats_b, chunk_elements)
        b_index[:, k], sim[:, k] = index, s
        ok[:, k] = mutual & batch.a_valid & (index < n_b[:, k : k + 1]) & (s > 0)
    # Compact the (level, A cell) slots of each pair; a stable sort keeps them in that
    # order whatever the padding, so a pair gives the same matches alone or in a batch.
    ok = ok.flatten(1)
    m = int(ok.sum(1).max()) if ok.numel() else 0
    slots = torch.sort(ok.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :m]
    valid = ok.gather(1, slots)
    level = torch.div(slots, n_a, rounding_mode="floor")
    a_index = slots % n_a
    b_flat = b_index.flatten(1).gather(1, slots)
    cell_b = batch.b_cell.gather(1, level[..., None].expand(-1, -1, 2))  # (P, M, 2)
    width_b = batch.b_grid[..., 1].gather(1, level).clamp_min(1)
    colrow_a, pa = _cell_centres(a_index, batch.a_grid[:, 1:2], batch.a_cell[:, None])
    colrow_b, pb = _cell_centres(b_flat, width_b, cell_b)
    b_weight = torch.stack([F.pad(w, (0, n_b_max - w.shape[1])) for w in batch.b_weight], 1)  # (P, L, NB)
    texture = batch.a_weight.gather(1, a_index) * b_weight.flatten(1).gather(1, level * n_b_max + b_flat)
    texture = texture * valid
    return Matches(valid, a_index, level, colrow_b - colrow_a, pa, pb, cell_b, texture,
                   sim.flatten(1).gather(1, slots) * texture)


# ---------------------------------------------------------------- Hough voting


@dataclass
class Candidates:
    """Top Hough peaks per pair: (P, G) valid, and per candidate (P, G, 2) scale,
    offset (pixels) and unit (B's cell size at its level): p_B ~ scale * p_A + offset."""

    valid: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    unit: torch.Tensor


def _vote_kernel(tolerance: float, device: torch.device) -> torch.Tensor:
    radius = math.ceil(tolerance)
    ax = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    return torch.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / tolerance**2)[None, None]  # (1, 1, k, k)


def _tie_break(n_levels: int, ty: int, tx: int, ha: int, wa: int, device: torch.device) -> torch.Tensor:
    """(L * ty * tx,) long rank of each bin by (level, dy, dx) in absolute terms: equal
    votes resolve the same way whatever the batch's padding."""
    level = torch.arange(n_levels, device=device)[:, None, None]
    dy = (torch.arange(ty, device=device)[None, :, None] - (ha - 1) + 2048).clamp(0, 4095)
    dx = (torch.arange(tx, device=device)[None, None, :] - (wa - 1) + 2048).clamp(0, 4095)
    return ((level * 4096 + dy) * 4096 + dx).flatten()


def _window_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, h, w) -> the max over each (2r + 1)^2 window, as a stride-1 max pool padded with
    -inf (the same values: a max is exact), by shifted maxima: several times faster on CPUs."""
    out = x.clone()
    for axis in (-1, -2):
        src, out = out, out.clone()
        n = src.shape[axis]
        for d in range(1, min(radius, n - 1) + 1):
            head, tail = out.narrow(axis, 0, n - d), out.narrow(axis, d, n - d)
            torch.maximum(head, src.narrow(axis, d, n - d), out=head)
            torch.maximum(tail, src.narrow(axis, 0, n - d), out=tail)
    return out


def _smooth_separable(votes: torch.Tensor, tolerance: float) -> torch.Tensor:
    """(N, h, w) votes convolved with :func:`_vote_kernel`'s Gaussian as two 1-D passes of
    shifted sums, zero padding (a 1-channel conv2d is slow on CPUs); differs from the 2-D
    convolution by float rounding only."""
    radius = math.ceil(tolerance)
    taps = torch.exp(-torch.arange(radius + 1, dtype=torch.float32) ** 2 / tolerance**2).tolist()
    for axis in (-1, -2):
        n, out = votes.shape[axis], votes * taps[0]
        for d in range(1, min(radius, n - 1) + 1):
            out.narrow(axis, 0, n - d).add_(votes.narrow(axis, d, n - d), alpha=taps[d])
            out.narrow(axis, d, n - d).add_(votes.narrow(axis, 0, n - d), alpha=taps[d])
        votes = out
    return votes


def hough_candidates(m: Matches, batch: PairBatch, config: VerifyConfig, reference: bool = False) -> Candidates:
    """Vote in (level of B, dy, dx); smooth the votes; the top peaks per pair.

    ``reference``: the first version's 2-D convolution and max pools (``precision="fp32"``
    smooths the same way; local maxima are exact either way)."""
    P, n_levels = batch.b_grid.shape[:2]
    ha, wa = (int(v) for v in batch.a_grid.amax(0))
    hb, wb = (int(v) for v in batch.b_grid.amax((0, 1)))
    ty, tx = ha + hb - 1, wa + wb - 1  # every (cell of B) - (cell of A) offset
    pair = torch.arange(P, device=m.valid.device)[:, None]
    flat = ((pair * n_levels + m.level) * ty + m.shift[..., 1] + ha - 1) * tx + m.shift[..., 0] + wa - 1
    flat = torch.where(m.valid, flat, 0)
    # Each match votes with its texture weight: script and hatching cannot make a peak.
    votes = torch.bincount(flat.flatten(), m.texture.flatten().float(), minlength=P * n_levels * ty * tx)
    radius = math.ceil(config.hough_tolerance)
    planes = votes.view(P * n_levels, ty, tx)
    if reference or config.precision == "fp32" or votes.device.type != "cpu":
        smooth = F.conv2d(planes[:, None], _vote_kernel(config.hough_tolerance, votes.device), padding=radius)[:, 0]
    else:
        smooth = _smooth_separable(planes, config.hough_tolerance)
    # Local maxima over the kernel's window; a separable max pool is cheaper on CPUs.
    if reference:
        window = F.max_pool2d(smooth[:, None], (1, 2 * radius + 1), stride=1, padding=(0, radius))
        window = F.max_pool2d(window, (2 * radius + 1, 1), stride=1, padding=(radius, 0))[:, 0]
    else:
        window = _window_max(smooth, radius)
    peaks = (smooth >= window) & (smooth >= config.hough_min_votes)
    # Quantised votes first, then the tie-break rank: an exact, layout-free ordering.
    tie = _tie_break(n_levels, ty, tx, ha, wa, votes.device)
    key = (smooth.view(P, -1) * 1024).round().long() * (1 << _TIE_BITS) + ((1 << _TIE_BITS) - 1 - tie)
    key = torch.where(peaks.view(P, -1), key, -1)
    top, index = key.topk(min(config.n_candidates, key.shape[1]), dim=1)  # (P, G)
    level = torch.div(index, ty * tx, rounding_mode="floor")
    dy = torch.div(index, tx, rounding_mode="floor") % ty - (ha - 1)
    dx = index % tx - (wa - 1)
    unit = batch.b_cell.gather(1, level[..., None].expand(-1, -1, 2))  # (P, G, 2)
    scale = unit / batch.a_cell[:, None]
    return Candidates(top >= 0, scale, torch.stack([dx, dy], -1).float() * unit, unit)


def candidate_groups(m: Matches, cand: Candidates, config: VerifyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The matches agreeing with each candidate within ``group_tolerance`` B cells.

    Returns:
        index (P, G, Mg) long into the pair's matches (most similar first), and
        valid (P, G, Mg) bool; Mg <= ``max_group``.
    """
    pred = cand.scale[:, :, None] * m.pa[:, None] + cand.offset[:, :, None]  # (P, G, M, 2)
    off = ((m.pb[:, None] - pred) / cand.unit[:, :, None]).abs().amax(-1)  # (P, G, M)
    member = (off <= config.group_tolerance) & m.valid[:, None] & cand.valid[:, :, None]
    size = min(config.max_group, int(member.sum(-1).max()) if member.numel() else 0)
    key = torch.where(member, m.sim[:, None] + 2.0, 0.0)  # similarity is in [-1, 1]
    top, index = key.topk(size, dim=-1)
    return index, top > 0


# ---------------------------------------------------------------- RANSAC


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (P, M, *rest) at index (P, *shape) -> (P, *shape, *rest)."""
    rest = values.shape[2:]
    flat = index.reshape(index.shape[0], -1, *([1] * len(rest))).expand(-1, -1, *rest)
    return values.gather(1, flat).view(*index.shape, *rest)


def affine_from_triplets(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact affines through point triplets, in closed form (no batched LAPACK call).

    Args:
        src, dst: (..., 3, 2) points (x, y).

    Returns:
        (..., 2, 3) affines mapping src onto dst, and (...,) bool: the triplet is not
        (nearly) collinear. Degenerate entries hold finite garbage.
    """
    u2, u3 = src[..., 1, :] - src[..., 0, :], src[..., 2, :] - src[..., 0, :]
    v2, v3 = dst[..., 1, :] - dst[..., 0, :], dst[..., 2, :] - dst[..., 0, :]
    det = u2[..., 0] * u3[..., 1] - u3[..., 0] * u2[..., 1]
    # |det| = |u2||u3| sin(angle): require an angle above ~6 degrees.
    ok = det.abs() > 0.1 * u2.norm(dim=-1) * u3.norm(dim=-1)
    det = torch.where(ok, det, torch.ones_like(det))
    # L = V U^-1 with U = [u2 u3] (columns), V = [v2 v3].
    inv = torch.stack([u3[..., 1], -u3[..., 0], -u2[..., 1], u2[..., 0]], -1).unflatten(-1, (2, 2)) / det[..., None, None]
    lin = torch.stack([v2, v3], -1) @ inv  # (..., 2, 2)
    shift = dst[..., 0, :] - (lin @ src[..., 0, :, None])[..., 0]
    return torch.cat([lin, shift[..., None]], -1), ok


def plausible(affine: torch.Tensor, max_anisotropy: float) -> torch.Tensor:
    """(..., 2, 3) -> (...,) bool: orientation-preserving and not too stretched.

    With singular values s1 >= s2: s1/s2 <= r  <=>  s1^2 + s2^2 <= (r + 1/r) s1 s2.
    """
    lin = affine[..., :2]
    det = lin[..., 0, 0] * lin[..., 1, 1] - lin[..., 0, 1] * lin[..., 1, 0]
    frob = lin.square().sum((-2, -1))
    return (det > 0) & (frob <= (max_anisotropy + 1.0 / max_anisotropy) * det)


def score_hypotheses(hyp: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor, unit: torch.Tensor,
                     sim: torch.Tensor, config: VerifyConfig) -> torch.Tensor:
    """Score of every hypothesis on its group's matches: eq. 2's Gaussian, lowered so that
    it reaches zero at the inlier threshold (continuous, as in MSAC).

    Args:
        hyp: (R, H, 2, 3) affines; pa, pb, unit: (R, Mg, 2); sim: (R, Mg), 0 for padding.

    Returns:
        (R, H): sum_i max(0, exp(-e_i^2 / 2 sigma^2) - exp(-t^2 / 2 sigma^2)) * sim_i, with
        e_i in B cells of match i's level and t the inlier threshold.
    """
    # Residuals as two baddbmm, pre-scaled so their squares are already e^2 / 2 sigma^2:
    # r_x = [a b tx] @ [x, y, 1] * k/u - x_B * k/u, with k = 1 / (sqrt 2 sigma).
    k = (1.0 / unit) / (math.sqrt(2.0) * config.score_sigma)  # (R, Mg, 2)
    ax = torch.stack([pa[..., 0] * k[..., 0], pa[..., 1] * k[..., 0], k[..., 0]], 1)  # (R, 3, Mg)
    ay = torch.stack([pa[..., 0] * k[..., 1], pa[..., 1] * k[..., 1], k[..., 1]], 1)
    bx, by = -(pb[..., 0] * k[..., 0])[:, None], -(pb[..., 1] * k[..., 1])[:, None]  # (R, 1, Mg)
    hx, hy = hyp[..., 0, :].contiguous(), hyp[..., 1, :].contiguous()  # (R, H, 3)
    limit = 0.5 * (config.inlier_threshold / config.score_sigma) ** 2
    floor = math.exp(-limit)
    rows, n_hyp, size = hyp.shape[0], hyp.shape[1], pa.shape[1]
    score = torch.empty(rows, n_hyp, device=hyp.device)
    step = max(1, _chunk_elements(hyp.device) // max(1, n_hyp * size))
    for s in range(0, rows, step):  # chunks of groups bound the (groups, H, Mg) residuals
        part = slice(s, s + step)
        e2 = torch.baddbmm(bx[part], hx[part], ax[part]).square_()
        ry = torch.baddbmm(by[part], hy[part], ay[part])
        # Clamping before exp also keeps it off the slow path of denormal results.
        weight = e2.addcmul_(ry, ry).clamp_max_(limit).neg_().exp_().sub_(floor).clamp_min_(0.0)
        score[part] = torch.bmm(weight, sim[part, :, None])[..., 0]  # (r, H)
    return score


def ransac(m: Matches, group: torch.Tensor, in_group: torch.Tensor, config: VerifyConfig,
           uniform: torch.Tensor, skip_small: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Best 3-point affine per group.

    Args:
        group, in_group: (P, G, Mg) from :func:`candidate_groups`.
        uniform: (G', H, 3) numbers in [0, 1), G' >= G: the sample draws, shared by pairs.
        skip_small: score only groups of 3 matches or more (the same results; False
            scores all, as the first version did).

    Returns:
        affine (P, G, 2, 3) and score (P, G), -1 where no valid hypothesis exists.
    """
    P, G, size = group.shape
    n_hyp = uniform.shape[1]
    count = in_group.sum(-1)  # (P, G)
    # Only groups of 3 matches or more can hold a valid hypothesis (``ok`` is False for
    # every other one, so neither their hypotheses nor their scores are ever read): most
    # groups are empty candidates of pairs with few Hough peaks, and drawing and scoring
    # them was most of RANSAC's time.
    live = ((count >= 3) | (not skip_small)).flatten().nonzero()[:, 0]  # (R,)
    pair = torch.div(live, G, rounding_mode="floor")
    count_live, group_live = count.flatten()[live], group.flatten(0, 1)[live]  # (R,), (R, Mg)
    draw = (uniform[None, :G].expand(P, -1, -1, -1).flatten(0, 1)[live] * count_live[:, None, None]).long()
    draw = torch.minimum(draw, (count_live - 1).clamp_min(0)[:, None, None])  # (R, H, 3)
    pick = group_live.gather(1, draw.flatten(1))  # (R, H * 3) match indices
    points = [values[pair].gather(1, pick[..., None].expand(-1, -1, 2)).view(len(live), n_hyp, 3, 2)
              for values in (m.pa, m.pb)]
    hyp_live, ok_live = affine_from_triplets(*points)  # (R, H, 2, 3)
    ok_live &= plausible(hyp_live, config.max_anisotropy) & (count_live >= 3)[:, None]
    hyp = torch.zeros(P * G, n_hyp, 2, 3, device=group.device).index_copy_(0, live, hyp_live).view(P, G, n_hyp, 2, 3)
    ok = torch.zeros(P * G, n_hyp, dtype=torch.bool, device=group.device).index_copy_(0, live, ok_live).view(P, G, -1)
    sim = m.sim.gather(1, group.flatten(1)).view(P, G, size) * in_group
    score = torch.full((P * G, n_hyp), -1.0, device=hyp.device)
    if len(live):
        score[live] = score_hypotheses(
            hyp_live, _take(m.pa, group).flatten(0, 1)[live], _take(m.pb, group).flatten(0, 1)[live],
            _take(m.unit, group).flatten(0, 1)[live], sim.flatten(0, 1)[live], config,
        )
    score = torch.where(ok, score.view(P, G, -1), -1.0)
    best_score, best = score.max(-1)  # (P, G)
    affine = hyp.gather(2, best[..., None, None, None].expand(-1, -1, 1, 2, 3))[:, :, 0]
    return affine, best_score


# ---------------------------------------------------------------- refit and backward check


def forward_error(affine: torch.Tensor, pa: torch.Tensor, pb: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Squared residuals in B cells of each match's level.

    Args:
        affine: (P, G, 2, 3); pa, pb, unit: (P, M, 2).

    Returns:
        (P, G, M).
    """
    pred = torch.einsum("pgij,pmj->pgmi", affine[..., :2], pa) + affine[:, :, None, :, 2]
    return ((pred - pb[:, None]) / unit[:, None]).square().sum(-1)


def fit_affine(pa: torch.Tensor, pb: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares affines, centred for float32 accuracy.

    Args:
        pa, pb: (P, M, 2); weight: (P, G, M) >= 0, one fit per (pair, group).

    Returns:
        (P, G, 2, 3) affines and (P, G) bool: at least 3 points, not collinear.
    """
    total = weight.sum(-1).clamp_min(1e-12)[..., None]  # (P, G, 1)
    mean_a = torch.einsum("pgm,pmi->pgi", weight, pa) / total
    mean_b = torch.einsum("pgm,pmi->pgi", weight, pb) / total
    da = pa[:, None] - mean_a[:, :, None]  # (P, G, M, 2)
    db = pb[:, None] - mean_b[:, :, None]
    s_aa = torch.einsum("pgm,pgmi,pgmj->pgij", weight, da, da)
    s_ba = torch.einsum("pgm,pgmi,pgmj->pgij", weight, db, da)
    det = s_aa[..., 0, 0] * s_aa[..., 1, 1] - s_aa[..., 0, 1] * s_aa[..., 1, 0]
    trace = s_aa[..., 0, 0] + s_aa[..., 1, 1]
    ok = ((weight > 0).sum(-1) >= 3) & (det > 1e-3 * trace.square())
    det = torch.where(ok, det, torch.ones_like(det))
    inv = torch.stack([s_aa[..., 1, 1], -s_aa[..., 0, 1], -s_aa[..., 1, 0], s_aa[..., 0, 0]], -1)
    lin = s_ba @ (inv.unflatten(-1, (2, 2)) / det[..., None, None])
    shift = mean_b - (lin @ mean_a[..., None])[..., 0]
    return torch.cat([lin, shift[..., None]], -1), ok


def refine(affine: torch.Tensor, m: Matches, config: VerifyConfig) -> torch.Tensor:
    """Least-squares refits on the inliers among all the pair's matches (P, G, 2, 3)."""
    limit = config.inlier_threshold**2
    for _ in range(config.refit_iterations):
        inlier = (forward_error(affine, m.pa, m.pb, m.unit) < limit) & m.valid[:, None]
        # Coarse levels localise worse: weight by inverse cell area of the match's level.
        weight = inlier / m.unit.prod(-1)[:, None]
        fitted, ok = fit_affine(m.pa, m.pb, weight)
        ok &= plausible(fitted, config.max_anisotropy)
        affine = torch.where(ok[..., None, None], fitted, affine)
    return affine


def _invert(affine: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) -> the inverse affine; callers keep only orientation-preserving ones."""
    lin = affine[..., :2]
    det = lin[..., 0, 0] * lin[..., 1, 1] - lin[..., 0, 1] * lin[..., 1, 0]
    det = torch.where(det.abs() > 1e-12, det, torch.ones_like(det))
    inv = torch.stack([lin[..., 1, 1], -lin[..., 0, 1], -lin[..., 1, 0], lin[..., 0, 0]], -1)
    inv = inv.unflatten(-1, (2, 2)) / det[..., None, None]
    return torch.cat([inv, -(inv @ affine[..., 2:])], -1)


def keep_best(key: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, n_keys: int) -> torch.Tensor:
    """Among masked entries of each row sharing a key, keep the heaviest (first on ties).

    Args:
        key: (R, M) long in [0, n_keys); weight: (R, M); mask: (R, M) bool.

    Returns:
        (R, M) bool, a subset of ``mask``.
    """
    rows, size = key.shape
    slot = torch.arange(rows, device=key.device)[:, None] * (n_keys + 1)
    flat = (slot + torch.where(mask, key, n_keys)).flatten()  # slot n_keys: a dump
    best = torch.full((rows * (n_keys + 1),), -torch.inf, device=key.device)
    best.scatter_reduce_(0, flat, torch.where(mask, weight, -torch.inf).flatten(), "amax")
    win = mask & (weight >= best[flat].view(rows, size))
    pos = torch.arange(size, device=key.device).expand(rows, size)
    first = torch.full((rows * (n_keys + 1),), size, device=key.device, dtype=torch.long)
    flat = (slot + torch.where(win, key, n_keys)).flatten()
    first.scatter_reduce_(0, flat, pos.flatten(), "amin")
    return win & (pos == first[flat].view(rows, size))


def consistent_inliers(affine: torch.Tensor, m: Matches, batch: PairBatch,
                       config: VerifyConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inliers of each (pair, group) that pass the backward check, one-to-one.

    Forward: residual under ``affine`` below the threshold in B cells of the match's level.
    Backward: B's position mapped back by the inverse affine lands within the threshold
    (in A cells) of its A cell, and no two inliers share an A cell or land in the same A
    cell from B (the heaviest is kept), as in the authors' bijectivity check.

    Returns:
        keep (P, G, M) bool; weight (P, G, M): the match's share of the score (its
        similarity, times exp(-e^2/2 sigma^2) for the "gaussian" score); b_cell (P, G, M)
        long: the cell of B's grid the match lands in, B's grid being A's mapped onto B
        by the affine (the authors' FeatSizeImgTarget), flat over (h + 2 pad, w + 2 pad).
    """
    P, G = affine.shape[:2]
    limit = config.inlier_threshold**2
    e2 = forward_error(affine, m.pa, m.pb, m.unit)
    weight = torch.exp(-0.5 * e2 / config.score_sigma**2) * m.sim[:, None]
    inverse = _invert(affine)
    back = torch.einsum("pgij,pmj->pgmi", inverse[..., :2], m.pb) + inverse[:, :, None, :, 2]  # (P, G, M, 2)
    a_cell = batch.a_cell[:, None, None]
    back_e2 = ((back - m.pa[:, None]) / a_cell).square().sum(-1)
    keep = (e2 < limit) & (back_e2 < limit) & m.valid[:, None] & plausible(affine, config.max_anisotropy)[..., None]
    ha, wa = (int(v) for v in batch.a_grid.amax(0))
    keep = keep_best(m.a_index[:, None].expand(-1, G, -1).flatten(0, 1), weight.flatten(0, 1),
                     keep.flatten(0, 1), ha * wa).view(P, G, -1)
    # The A cell each B position lands in; the backward check bounds it near A's grid.
    pad = math.ceil(config.inlier_threshold) + 1
    col = torch.floor(back[..., 0] / a_cell[..., 0]).long().clamp(-pad, wa + pad - 1) + pad
    row = torch.floor(back[..., 1] / a_cell[..., 1]).long().clamp(-pad, ha + pad - 1) + pad
    key = row * (wa + 2 * pad) + col
    keep = keep_best(key.flatten(0, 1), weight.flatten(0, 1), keep.flatten(0, 1),
                     (ha + 2 * pad) * (wa + 2 * pad)).view(P, G, -1)
    if config.score == "authors":
        weight = m.sim[:, None].expand(-1, G, -1)
    return keep, weight, key


# ---------------------------------------------------------------- regions


def large_components(cells: np.ndarray, min_size: int, connectivity: int = 4) -> np.ndarray:
    """Keep the connected components (4- or 8-connected) of at least ``min_size`` cells of each grid.

    Args:
        cells: (R, h, w) bool, one grid per region (components never cross grids).

    Returns:
        (R, h, w) bool.
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)  # within a grid only
    labels, _ = ndimage.label(cells, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=1)
    large = sizes >= min_size
    large[0] = False
    return large[labels]


@dataclass
class Regions:
    """Surviving (pair, group) regions, R rows: pair (R,) index into the batch; affine
    (R, 2, 3); score (R,) eq. 2; n_inliers (R,); cells (R, 4) bounding box of the inlier
    A cells (col0, row0, col1, row1), ends exclusive; points (R, K, 4) the heaviest
    inliers (x_a, y_a, x_b, y_b) in pixels, the first min(n_inliers, K) of a row real."""

    pair: np.ndarray
    affine: np.ndarray
    score: np.ndarray
    n_inliers: np.ndarray
    cells: np.ndarray
    points: np.ndarray


def detail_labels(cells: np.ndarray, shape: tuple[int, int, int], gap: int) -> np.ndarray:
    """Which separate detail of its region each inlier cell belongs to, numbered over all regions.

    Cells of one region with at most ``2 * gap`` empty cells between them (8-connected
    after a ``gap``-cell dilation) are one detail; labels run from 0 in region order.

    Args:
        cells: (K, 3) long (region, row, col) of each inlier on A's grid.
        shape: (regions, h, w) of the grids.

    Returns:
        (K,) long.
    """
    grids = np.zeros(shape, dtype=bool)
    grids[tuple(cells.T)] = True
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-connected, within a grid only
    if gap > 0:
        grids = ndimage.binary_dilation(grids, structure=structure, iterations=gap)
    labels, _ = ndimage.label(grids, structure=structure)  # numbered in scan order: region-major
    found = labels[tuple(cells.T)]
    return np.unique(found, return_inverse=True)[1].reshape(-1)


def _row_of_detail(detail: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(K,) detail label and region of each inlier -> (D,) the region of each detail."""
    rows = np.zeros(int(detail.max()) + 1 if len(detail) else 0, dtype=np.int64)
    rows[detail] = region
    return rows


def _cell_boxes(grids: np.ndarray) -> np.ndarray:
    """(R, h, w) bool, each with a cell set -> (R, 4) long (col0, row0, col1, row1)."""
    boxes = np.zeros((len(grids), 4), dtype=np.int64)
    rows, cols = grids.any(2), grids.any(1)  # (R, h), (R, w)
    boxes[:, 0] = cols.argmax(1)
    boxes[:, 1] = rows.argmax(1)
    boxes[:, 2] = cols.shape[1] - cols[:, ::-1].argmax(1)
    boxes[:, 3] = rows.shape[1] - rows[:, ::-1].argmax(1)
    return boxes


def surviving_inliers(a_cell: np.ndarray, b_cell: np.ndarray, a_shape: tuple[int, int],
                      b_shape: tuple[int, int], min_size: int, connectivity: int = 8, both: bool = True) -> np.ndarray:
    """Which inliers lie in large components of A's grid (and of B's, with ``both``),
    dropping the others and relabelling until nothing changes (the authors' KeepOnlyLargeCC).

    Args:
        a_cell, b_cell: (K, 3) long (region, row, col) of each inlier on A's and B's grids.
        a_shape, b_shape: (h, w) of the grids.

    Returns:
        (K,) bool.
    """
    alive = np.ones(len(a_cell), dtype=bool)
    n_regions = int(a_cell[:, 0].max()) + 1 if len(a_cell) else 0
    while alive.any():
        ok = alive.copy()
        for cells, shape in ((a_cell, a_shape), (b_cell, b_shape))[: 2 if both else 1]:
            at = tuple(cells[alive].T)
            grids = np.zeros((n_regions, *shape), dtype=bool)
            grids[at] = True
            ok[alive] &= large_components(grids, min_size, connectivity)[at]
        if (ok == alive).all() or not both:
            return ok
        alive = ok
    return alive


def build_regions(keep: torch.Tensor, weight: torch.Tensor, affine: torch.Tensor, m: Matches,
                  batch: PairBatch, config: VerifyConfig, b_cell: torch.Tensor | None = None) -> Regions:
    """Connected-component filter, score and final refit per (pair, group).

    Args:
        keep, weight, b_cell: (P, G, M) from :func:`consistent_inliers`; affine: (P, G, 2, 3).
    """
    P, G, _ = keep.shape
    # Trim to the distinctive support: inliers on A's repetitive texture (the page's
    # script around a copied picture) neither shape the region nor count in its score.
    keep = keep & (batch.a_weight.gather(1, m.a_index) >= config.region_min_weight)[:, None]
    chosen = (keep.sum(-1) >= config.min_inliers).flatten().nonzero()[:, 0]  # (R,)
    pair = torch.div(chosen, G, rounding_mode="floor")
    keep, weight = keep.flatten(0, 1)[chosen], weight.flatten(0, 1)[chosen]  # (R, M)
    ha, wa = (int(v) for v in batch.a_grid.amax(0))
    width = batch.a_grid[pair, 1:2]
    r_idx, m_idx = keep.nonzero(as_tuple=True)
    flat, cols = m.a_index[pair][r_idx, m_idx], width[r_idx, 0]
    a_at = np.stack([r_idx.cpu().numpy(), torch.div(flat, cols, rounding_mode="floor").cpu().numpy(),
                     (flat % cols).cpu().numpy()], 1)
    pad = math.ceil(config.inlier_threshold) + 1
    b_shape = (ha + 2 * pad, wa + 2 * pad)
    both = b_cell is not None and config.connectivity == 8
    if both:
        b_flat = b_cell.flatten(0, 1)[chosen][r_idx, m_idx].cpu().numpy()
        b_at = np.stack([a_at[:, 0], b_flat // b_shape[1], b_flat % b_shape[1]], 1)
    else:
        b_at = a_at
    alive = surviving_inliers(a_at, b_at, (ha, wa), b_shape, config.min_component, config.connectivity, both)
    if config.split_gap >= 0:  # one row per separate detail
        detail = detail_labels(a_at[alive], (len(chosen), ha, wa), config.split_gap)
        m_idx, a_at = m_idx[torch.from_numpy(alive).to(m_idx.device)], a_at[alive]
        rows = torch.from_numpy(_row_of_detail(detail, a_at[:, 0])).to(keep.device)
        a_at[:, 0] = detail
        alive = np.ones(len(a_at), dtype=bool)
        pair, chosen, r_idx = pair[rows], chosen[rows], torch.from_numpy(detail).to(keep.device)
        keep, weight = keep[rows], weight[rows]
    grids = np.zeros((len(chosen), ha, wa), dtype=bool)
    grids[tuple(a_at[alive].T)] = True
    survive = torch.zeros_like(keep)
    survive[r_idx, m_idx] = torch.from_numpy(alive).to(keep.device)
    n_inliers = survive.sum(-1)
    score = (weight * survive).sum(-1) / batch.n_source[pair].clamp_min(1)
    # The reported affine is a refit on the surviving inliers (the previous one if that fails).
    fitted, ok = fit_affine(m.pa[pair], m.pb[pair], (survive / m.unit[pair].prod(-1))[:, None])
    ok = ok[:, 0] & plausible(fitted[:, 0], config.max_anisotropy)
    final = torch.where(ok[:, None, None], fitted[:, 0], affine.flatten(0, 1)[chosen])
    good = (n_inliers >= config.min_inliers).cpu().numpy()
    return Regions(pair.cpu().numpy()[good], final.cpu().numpy()[good], score.cpu().numpy()[good],
                   n_inliers.cpu().numpy()[good], _cell_boxes(grids[good]),
                   _heaviest_points(survive, weight, m, pair, config.max_points).cpu().numpy()[good])


def _heaviest_points(survive: torch.Tensor, weight: torch.Tensor, m: Matches, pair: torch.Tensor,
                     k: int) -> torch.Tensor:
    """(R, M) inliers and weights -> (R, min(k, M), 4) their heaviest (x_a, y_a, x_b, y_b).

    A stable sort (first match on ties) keeps a pair's points the same alone or in a batch.
    """
    order = torch.sort(torch.where(survive, weight, -1.0), dim=1, descending=True, stable=True).indices
    top = order[:, :k, None].expand(-1, -1, 2)  # (R, k, 2)
    return torch.cat([m.pa[pair].gather(1, top), m.pb[pair].gather(1, top)], dim=-1).float()


def _map_box(affine: np.ndarray, box: Box) -> Box | None:
    """Bounding box of ``box``'s corners under a (2, 3) affine, or None if degenerate."""
    corners = np.array([[box.x0, box.y0, 1], [box.x1, box.y0, 1], [box.x0, box.y1, 1], [box.x1, box.y1, 1]])
    mapped = corners @ affine.T.astype(np.float64)
    x0, y0 = mapped.min(0)
    x1, y1 = mapped.max(0)
    return Box(float(x0), float(y0), float(x1), float(y1)) if x1 > x0 and y1 > y0 else None


def to_pair_matches(regions: Regions, batch: PairBatch, names: Sequence[tuple[str, str]],
                    config: VerifyConfig) -> list[list[PairMatch]]:
    """Boxes in pixels, best score first, overlapping regions of a pair merged (NMS on A boxes)."""
    a_cell, b_size = batch.a_cell.cpu().numpy(), batch.b_size.cpu().numpy()
    out: list[list[PairMatch]] = [[] for _ in names]
    for r in np.argsort(-regions.score, kind="stable"):  # post-processing: one row per region
        p = int(regions.pair[r])
        if len(out[p]) >= config.max_regions_per_pair:
            continue
        c0, r0, c1, r1 = regions.cells[r]
        (cx, cy), (width, height) = a_cell[p], b_size[p]
        box_a = Box(float(c0 * cx), float(r0 * cy), float(c1 * cx), float(r1 * cy))
        mapped = _map_box(regions.affine[r], box_a)
        if mapped is None or mapped.x1 <= 0 or mapped.y1 <= 0 or mapped.x0 >= width or mapped.y0 >= height:
            continue
        if any(box_a.iou(kept.box_a) > config.dedupe_iou for kept in out[p]):
            continue
        affine = tuple(tuple(float(v) for v in row) for row in regions.affine[r])
        points = tuple(tuple(v) for v in regions.points[r, : int(regions.n_inliers[r])].tolist())
        out[p].append(PairMatch(names[p][0], names[p][1], box_a, mapped.clip(float(width), float(height)),
                                affine, float(regions.score[r]), int(regions.n_inliers[r]), inliers=points))
    return out


# ---------------------------------------------------------------- public API


def _uniform(config: VerifyConfig, device: torch.device) -> torch.Tensor:
    """(n_candidates, ransac_iterations, 3) sample draws from ``seed``, drawn on the CPU so
    that every device samples the same triplets."""
    generator = torch.Generator().manual_seed(config.seed)
    return torch.rand(config.n_candidates, config.ransac_iterations, 3, generator=generator).to(device)


@torch.no_grad()
def _verify_batch(pairs: Sequence[tuple[FeaturePyramid, FeaturePyramid, Box | None]],
                  names: Sequence[tuple[str, str]], config: VerifyConfig,
                  device: torch.device, weights: Sequence[tuple[Weights, Weights]] | None = None,
                  reference: bool = False) -> list[list[PairMatch]]:
    for (a, b, _), (name_a, name_b) in zip(pairs, names):  # before any weight is computed
        _check_pyramid(a, name_a)
        _check_pyramid(b, name_b)
    if config.texture_weight and weights is None:
        weights = [(pyramid_weights(a, config.texture)[:1], pyramid_weights(b, config.texture)) for a, b, _ in pairs]
    batch = stack_pairs(pairs, names, device, weights if config.texture_weight else None, config.margin)
    # Pair by pair on CPUs, where padding costs time; one batched bmm per level on a GPU.
    trimmed = device.type == "cpu" and not reference
    m = dense_matches(batch, _chunk_elements(device), trimmed, config.product_dtype() if trimmed else None)
    if m.valid.shape[1] < 3:
        return [[] for _ in pairs]
    cand = hough_candidates(m, batch, config, reference)
    group, in_group = candidate_groups(m, cand, config)
    if group.shape[-1] < 3:
        return [[] for _ in pairs]
    affine, best = ransac(m, group, in_group, config, _uniform(config, device), skip_small=not reference)
    affine = refine(affine, m, config)
    keep, weight, b_cell = consistent_inliers(affine, m, batch, config)
    keep &= (best > 0)[..., None]
    return to_pair_matches(build_regions(keep, weight, affine, m, batch, config, b_cell), batch, names, config)


def merge_twins(base: list[PairMatch], extra: list[PairMatch],
                same: Callable[[PairMatch, PairMatch], bool]) -> list[PairMatch]:
    """``base`` plus the matches of ``extra`` that are no twin (``same``) of a base match;
    of twins the better score stays, in the base match's place."""
    kept = list(base)
    for m in extra:
        twin = next((i for i, b in enumerate(base) if same(b, m)), None)
        if twin is None:
            kept.append(m)
        elif m.score > kept[twin].score:
            kept[twin] = m
    return kept


def _resolve(device: torch.device | str | None, pyramid: FeaturePyramid) -> torch.device:
    return torch.device(device) if device is not None else pyramid.levels[0].device


def verify_pair(
    pyr_a: FeaturePyramid,
    pyr_b: FeaturePyramid,
    image_a: str,
    image_b: str,
    config: VerifyConfig = VerifyConfig(),
    region_a: Box | None = None,
    device: torch.device | str | None = None,
) -> list[PairMatch]:
    """The regions of A repeated in B, best score first; [] when nothing verifies.

    Args:
        pyr_a: A's pyramid; only its reference level (0) is used.
        pyr_b: B's pyramid; every level is searched.
        region_a: restrict A to the cells whose centre lies in this box (pixels of A);
            N of the score is then the number of those cells.
        device: where to compute (default: where the pyramids are).
    """
    return _verify_batch([(pyr_a, pyr_b, region_a)], [(image_a, image_b)], config, _resolve(device, pyr_a))[0]


def verify_pairs(
    pairs: Sequence[tuple[str, str]],
    get_pyramid: Callable[[str], FeaturePyramid],
    config: VerifyConfig = VerifyConfig(),
    device: torch.device | str | None = None,
    batch_size: int = 32,
    get_weights: Callable[[str], Weights] | None = None,
    reference: bool = False,
) -> Iterator[tuple[tuple[str, str], list[PairMatch]]]:
    """Verify many (A, B) pairs, ``batch_size`` per batch on the device, in input order.

    A pair gives the same result alone (:func:`verify_pair`) or in any batch.

    Args:
        get_weights: an image's texture weights (:func:`engine.texture.pyramid_weights`),
            e.g. cached by the caller across calls; default: computed once per image per call.
        reference: the first version's path (padded mutual nearest neighbours, every
            RANSAC group scored), for tests and benchmarks: the same results, slower.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = [(str(a), str(b)) for a, b in pairs]
    if get_weights is None:
        get_weights = functools.lru_cache(maxsize=512)(lambda name: pyramid_weights(get_pyramid(name), config.texture))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        pyramids = {name: get_pyramid(name) for name in dict.fromkeys(n for pair in chunk for n in pair)}
        target = _resolve(device, next(iter(pyramids.values())))
        for name, pyramid in pyramids.items():
            _check_pyramid(pyramid, name)
        weights = [(get_weights(a)[:1], get_weights(b)) for a, b in chunk] if config.texture_weight else None
        found = _verify_batch([(pyramids[a], pyramids[b], None) for a, b in chunk], chunk, config, target, weights,
                              reference)
        yield from zip(chunk, found)


def both_ways(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """(A, B), (B, A) for each pair, side by side."""
    return [ordered for a, b in pairs for ordered in ((str(a), str(b)), (str(b), str(a)))]


def discovery_score(
    pyr_query_image: FeaturePyramid,
    pyr_b: FeaturePyramid,
    query_box: Box,
    config: VerifyConfig = VerifyConfig(),
    device: torch.device | str | None = None,
    image_a: str = "query",
    image_b: str = "candidate",
) -> tuple[float, PairMatch | None]:
    """Paper §5.2's re-ranking score of a one-shot detection: eq. 2 for the query box's
    cells of the query image against image B, and the best region (or 0.0, None)."""
    found = verify_pair(pyr_query_image, pyr_b, image_a, image_b, config, query_box, device)
    return (found[0].score, found[0]) if found else (0.0, None)
