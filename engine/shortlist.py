"""Which image pairs to verify: regional GeM descriptors and an exact blocked k-NN.

The paper verifies every pair of images, which "limits the size of the datasets we can
handle to a few thousand images". Here each image gets a set of L2-normalised regional
GeM descriptors: the whole image plus the cells of a g x g grid, so that a small shared
detail still brings two images together. Two images are as similar as their most
similar pair of regions, and each image keeps its ``k`` most similar images. The search
is exact: one matmul per block of images on the device with a running top-k, so memory
stays bounded by the block size, never N x N (N up to ~1M images).

Why the coarsest pyramid level and a fine grid (measured on the 60-image demo, ImageNet
EfficientNet-Lite0, recall of the 102 ground-truth pairs at k = 5/10/20/50):

- level 0 (40 cells), grids 1+2x2+3x3: 0.15/0.20/0.36/0.89 -- no better than random
  pairs (0.11/0.20/0.40/0.92): at full size a cell sees strokes, and the medium
  (hatching, wash) dominates every pooled descriptor;
- level 6 (10 cells), grids 1+2x2+3x3: 0.18/0.27/0.52/0.98;
- level 6, grids 1+8x8 (the default): 0.32/0.54/0.77/0.96; one region per cell
  (10x10) reaches 0.37/0.54/0.81/0.99 at 1.5x the compute.

A cell of the coarsest level sees a whole motif-sized detail, with the medium's texture
blurred away. Compute grows with R^2 per image pair (R = regions per image): lower the
grid for very large collections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.features import FeaturePyramid

Pair = tuple[int, int]


@dataclass(frozen=True)
class ShortlistConfig:
    k: int = 20  # neighbours kept per image (`--k 20`); pairs are then made unordered
    level: int = -1  # pyramid level pooled: the coarsest (10 cells on the longer side by default)
    gem_p: float = 3.0  # GeM exponent: 1 = average pooling, large = max pooling
    # g x g regions per grid, whole image first: 1 + 4 + 16 + 64 = 85 descriptors, down to
    # ~1/8 of the image side, so that a detail of any size has a region about its size.
    grids: tuple[int, ...] = (1, 2, 4, 8)
    block: int = 4096  # database images per matmul block (bounds memory, not results)
    # "votes": every cell of an image's coarse level votes for the images holding its
    # nearest cells, by how much nearer they are than its next neighbours (see
    # :func:`vote_scores`); "distinctive": pooled regions, scored the same way
    # (:func:`distinctive_knn`); "max": the single most similar region pair, the first
    # version's score. Measured on the multi-source demo (benchmarks/sources.py).
    scoring: str = "votes"
    vote_level: int = 3  # query cells at this level (20 cells on the long side) ...
    vote_neighbours: int = 5  # ... each votes for the images of its 5 nearest cells at this level and coarser
    # Votes count only where they agree on where the detail went: an image pair scores its
    # heaviest bin of (database level, translation), bins this many database cells wide
    # (ArtMiner's Hough vote, §4.1, brought to the shortlist). 0: every vote counts (sum).
    vote_bin: float = 3.0
    # Cells vote after each image's texture-weighted mean cell (per level) is taken out and
    # they are L2-normalised again (:func:`centre_cells`): the component every cell of a page
    # shares (paper tone, medium, a source's house look) no longer makes a page's cells near
    # to every page of its source. Multi-source demo, k = 20: cross-source recall 0.71 -> 0.74
    # alone, 0.79 with `same_group_share=0.5`; single-source demo, all pairs 0.82 -> 0.84;
    # no more pairs, no measurable time (benchmarks/sources.py).
    vote_centre: bool = True
    background_k: int = 10  # a region's background: its mean best match over this many images (CSLS's K = 10)
    top_regions: int = 3  # the pair score sums this many best distinctive region matches
    # At most this share of an image's k neighbours come from its own look-alike group
    # (same house look: a manuscript's pages, an album's sheets), so repeated layout can
    # never fill the whole shortlist. 1.0 turns the cap off. 0.5 (was 0.75): on the
    # multi-source demo, cross-source recall at k = 20 0.71 -> 0.75 at the same within-source
    # recall, but 5 % more pairs to verify (12 % on the single-source demo, where recall at
    # k = 5-10 drops); benchmarks/sources.py. The 0.75 of the first cap was not measured.
    same_group_share: float = 0.5
    # Regions pool their cells weighted by texture weight (engine.texture), so a region of
    # a page describes its picture, not its script; regions whose mean weight is below
    # `min_region_mass` (script, ruling, blank margins only) describe nothing.
    texture_weight: bool = True
    min_region_mass: float = 0.25

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"shortlist k must be >= 1, got {self.k}")
        if self.gem_p <= 0:
            raise ValueError(f"GeM exponent must be > 0, got {self.gem_p}")
        if not self.grids or min(self.grids) < 1:
            raise ValueError(f"region grids must be positive integers, got {self.grids}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if self.scoring not in ("votes", "distinctive", "max"):
            raise ValueError(f"shortlist scoring must be 'votes', 'distinctive' or 'max', got {self.scoring!r}")
        if self.vote_neighbours < 1 or self.vote_level < 0:
            raise ValueError("vote_neighbours must be >= 1 and vote_level >= 0")
        if self.vote_bin < 0:
            raise ValueError(f"vote_bin must be >= 0, got {self.vote_bin}")
        if self.background_k < 1 or self.top_regions < 1:
            raise ValueError("background_k and top_regions must be >= 1")
        if not 0.0 < self.same_group_share <= 1.0:
            raise ValueError(f"same_group_share must be in (0, 1], got {self.same_group_share}")

    @property
    def n_regions(self) -> int:
        return sum(g * g for g in self.grids)


def gem_regions(features: torch.Tensor, grids: Sequence[int], p: float = 3.0,
                weights: torch.Tensor | None = None, min_mass: float = 0.0) -> torch.Tensor:
    """Signed GeM pooling of one feature map over the cells of several grids.

    The default backbone's stride-16 features come out of a linear bottleneck and are
    signed, so plain GeM (which clamps at zero) would throw half of them away: we pool
    ``sign(x)|x|^p`` and take the signed p-th root. For non-negative (post-ReLU)
    features this is the usual GeM.

    Args:
        features: (C, h, w) feature map.
        grids: g for each g x g grid; a grid finer than the map reuses cells.
        p: GeM exponent.
        weights: (h, w) cell weights (texture weights, :mod:`engine.texture`): the pooled
            mean is weighted, so a region describes its distinctive cells, not its script.
        min_mass: a region whose mean weight is below this describes nothing: zero vector.

    Returns:
        (R, C) L2-normalised descriptors (zero rows for empty regions), R = sum(g * g),
        whole-map grid first if g=1 leads.
    """
    x = features.float()
    w = torch.ones(x.shape[1:]) if weights is None else weights.float()
    powered = x.sign() * x.abs().pow(p) * w  # (C, h, w)
    pooled, mass = [], []
    for g in grids:
        pooled.append(F.adaptive_avg_pool2d(powered[None], g)[0].flatten(1).T)  # (g*g, C)
        mass.append(F.adaptive_avg_pool2d(w[None, None], g).flatten())  # (g*g,)
    m, mass = torch.cat(pooled), torch.cat(mass)  # (R, C), (R,)
    m = m / mass.clamp_min(1e-6)[:, None]
    out = F.normalize(m.sign() * m.abs().pow(1.0 / p), dim=1)
    return out * (mass >= min_mass)[:, None]


def global_descriptors(pyramids: Sequence[FeaturePyramid], config: ShortlistConfig = ShortlistConfig(),
                       weights: Sequence[tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
    """Regional GeM descriptors of each image's pyramid level ``config.level``.

    Args:
        weights: per image, its texture weights per level (:func:`engine.texture.pyramid_weights`);
            used when ``config.texture_weight``.

    Returns:
        (N, R, C) float32 on CPU, L2-normalised along C (zero rows: regions of texture
        only); R = ``config.n_regions``.

    Raises:
        ValueError: a pyramid lacks the level, or pyramids disagree on the channel count.
    """
    if not pyramids:
        return torch.zeros(0, config.n_regions, 0)
    out: torch.Tensor | None = None
    for i, pyramid in enumerate(pyramids):  # maps differ in shape: one pooling call per image
        if not -len(pyramid.levels) <= config.level < len(pyramid.levels):
            raise ValueError(f"image {i}: no pyramid level {config.level} (it has {len(pyramid.levels)})")
        fmap = pyramid.levels[config.level]
        if out is None:
            out = torch.empty(len(pyramids), config.n_regions, fmap.shape[0])
        if fmap.ndim != 3 or fmap.shape[0] != out.shape[2]:
            raise ValueError(f"image {i}: features of shape {tuple(fmap.shape)}, expected ({out.shape[2]}, h, w)")
        w = weights[i][config.level] if (weights is not None and config.texture_weight) else None
        out[i] = gem_regions(fmap.cpu(), config.grids, config.gem_p, w, config.min_region_mass if w is not None else 0.0)
    return out


def _as_regions(desc: torch.Tensor | np.ndarray) -> torch.Tensor:
    desc = torch.as_tensor(desc)
    if desc.ndim == 2:
        desc = desc[:, None]  # one descriptor per image
    if desc.ndim != 3:
        raise ValueError(f"descriptors must be (N, R, C) or (N, C), got shape {tuple(desc.shape)}")
    return desc.float()


def _block_similarity(queries: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """(Q, R, C) x (B, R, C) -> (Q, B): max cosine over all region pairs."""
    q, r, c = queries.shape
    b = base.shape[0]
    sim = queries.reshape(q * r, c) @ base.reshape(b * r, c).T  # (Q*R, B*R)
    return sim.view(q, r, b, r).amax(dim=3).amax(dim=1)


@torch.no_grad()
def knn_graph(desc: torch.Tensor | np.ndarray, k: int, device: str | torch.device | None = None,
              block: int = 4096, max_block_elems: int = 1 << 26,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest images of every image (itself excluded), in blocks.

    Image similarity is the max cosine over pairs of their regions. Database images come
    in blocks of ``block``; query images in blocks small enough that one region-by-region
    similarity matrix has at most ``max_block_elems`` entries (256 MB in float32).

    Args:
        desc: (N, R, C) or (N, C) L2-normalised descriptors.
        k: neighbours per image; clipped to N - 1.
        dtype: matmul precision; float16 on a GPU is several times faster for ~1M images
            but may swap neighbours whose similarities differ by less than ~1e-3.

    Returns:
        (N, k') neighbour indices and (N, k') similarities on CPU, best first, k' = min(k, N - 1).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    desc = _as_regions(desc)
    n, r, _ = desc.shape
    k = min(k, n - 1)
    if k < 1:
        return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base_all = desc.to(device=device, dtype=dtype)
    q_block = max(1, max_block_elems // (min(block, n) * r * r))
    idx_out, sim_out = torch.empty(n, k, dtype=torch.long), torch.empty(n, k)
    for q0 in range(0, n, q_block):
        q1 = min(n, q0 + q_block)
        best_idx, best_sim = _running_topk(base_all, q0, q1, k, block)
        idx_out[q0:q1] = best_idx.cpu()
        sim_out[q0:q1] = best_sim.float().cpu()
    return idx_out, sim_out


def _running_topk(base: torch.Tensor, q0: int, q1: int, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of images ``q0:q1`` over all of ``base`` (N, R, C), one block at a time.

    Returns:
        (Q, k) indices and similarities on ``base``'s device.
    """
    queries, device = base[q0:q1], base.device
    rows = torch.arange(q0, q1, device=device)
    best_sim = torch.full((q1 - q0, k), -torch.inf, device=device, dtype=base.dtype)
    best_idx = torch.zeros((q1 - q0, k), dtype=torch.long, device=device)
    for b0 in range(0, len(base), block):
        sim = _block_similarity(queries, base[b0 : b0 + block])  # (Q, B)
        cols = torch.arange(b0, b0 + sim.shape[1], device=device)
        sim[rows[:, None] == cols[None, :]] = -torch.inf  # an image is not its own neighbour
        merged_sim = torch.cat([best_sim, sim], dim=1)  # (Q, k + B)
        merged_idx = torch.cat([best_idx, cols.expand(q1 - q0, -1)], dim=1)
        best_sim, pos = merged_sim.topk(k, dim=1)
        best_idx = merged_idx.gather(1, pos)
    return best_idx, best_sim


def unique_pairs(neighbours: torch.Tensor, similarity: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Unordered, deduplicated pairs from a k-NN graph, most similar first.

    Args:
        neighbours: (N, k) indices; similarity: (N, k) their similarities.

    Returns:
        (P, 2) int64 pairs with i < j, and (P,) float32 similarities; ties broken by (i, j).
    """
    n, k = neighbours.shape
    a = np.repeat(np.arange(n, dtype=np.int64), k)
    b = neighbours.numpy().reshape(-1).astype(np.int64)
    s = similarity.numpy().reshape(-1).astype(np.float32)
    keep = np.isfinite(s)
    a, b, s = a[keep], b[keep], s[keep]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    # i->j and j->i may differ by rounding; keep the larger so the order is symmetric.
    order = np.lexsort((-s, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    lo, hi, s = lo[first], hi[first], s[first]
    order = np.lexsort((hi, lo, -s))
    return np.stack([lo[order], hi[order]], axis=1), s[order]


def knn_pairs(desc: torch.Tensor | np.ndarray, k: int, device: str | torch.device | None = None,
              block: int = 4096, dtype: torch.dtype = torch.float32) -> list[tuple[int, int, float]]:
    """The shortlist: each image with its k most similar images, as unordered pairs.

    Args:
        desc: (N, R, C) or (N, C) L2-normalised descriptors (see :func:`global_descriptors`).
        k: neighbours per image (k >= N - 1 gives every pair).
        device: where the matmuls run; default CUDA when available.
        block: database images per block.
        dtype: matmul precision (see :func:`knn_graph`).

    Returns:
        ``(i, j, similarity)`` with i < j, each pair once, most similar first.
    """
    neighbours, similarity = knn_graph(desc, k, device, block, dtype=dtype)
    pairs, sims = unique_pairs(neighbours, similarity)
    return [(int(i), int(j), float(s)) for (i, j), s in zip(pairs.tolist(), sims.tolist())]


# ------------------------------------------------------------ distinctive regions


def _region_best(queries: torch.Tensor, base: torch.Tensor, base_bias: torch.Tensor | None = None) -> torch.Tensor:
    """(Q, R, C) x (B, R, C) -> (Q, R, B): each query region's best match in each base image.

    With ``base_bias`` (B, R), the match of regions r, s scores ``2 cos(r, s) - bias_s``.
    """
    q, r, c = queries.shape
    b = base.shape[0]
    sim = queries.reshape(q * r, c) @ base.reshape(b * r, c).T  # (Q*R, B*R)
    if base_bias is not None:
        sim = 2 * sim - base_bias.reshape(1, b * r)
    return sim.view(q, r, b, r).amax(dim=3)


def _query_step(n: int, r: int, block: int, max_block_elems: int) -> int:
    """Query images per step so that one (Q*R, B*R) similarity block has <= max_block_elems entries."""
    return max(1, max_block_elems // (min(block, n) * r * r))


@torch.no_grad()
def region_backgrounds(desc: torch.Tensor, k: int, block: int = 4096, max_block_elems: int = 1 << 26) -> torch.Tensor:
    """How well each region matches the collection at large: the mean of its best
    similarities in its ``k`` best-matching *other* images.

    This is the local scaling of CSLS (Conneau et al., 2018, "Word translation without
    parallel data", against hubs): a region of script, ruling or an ornament border
    matches every page of its source almost perfectly, so its background is high and its
    matches count for little; a copied detail matches a few images well and the rest
    poorly.

    Args:
        desc: (N, R, C) L2-normalised descriptors (on the device the matmuls run on).

    Returns:
        (N, R) backgrounds, on ``desc``'s device.
    """
    n, r, _ = desc.shape
    k = max(1, min(k, n - 1))
    out = torch.empty(n, r, device=desc.device, dtype=desc.dtype)
    step = _query_step(n, r, block, max_block_elems)
    for q0 in range(0, n, step):
        q1 = min(n, q0 + step)
        top = torch.full((q1 - q0, r, k), -torch.inf, device=desc.device, dtype=desc.dtype)
        for b0 in range(0, n, block):
            best = _region_best(desc[q0:q1], desc[b0 : b0 + block])  # (Q, R, B)
            own = torch.arange(q0, q1, device=desc.device)[:, None] - b0
            inside = (own >= 0) & (own < best.shape[2])
            best[inside[:, 0].nonzero()[:, 0], :, own[inside]] = -torch.inf  # not its own image
            top = torch.cat([top, best], dim=2).topk(k, dim=2).values
        out[q0:q1] = top.masked_fill(top == -torch.inf, 0).mean(dim=2)
    return out


def look_alike_groups(desc: torch.Tensor, min_group: int = 5) -> np.ndarray:
    """Groups of images that share a global look (a source's house style), by HDBSCAN.

    Pages of one manuscript, sheets of one album or cards of one photo archive look alike
    as wholes whatever they depict. Clustered on the whole-image descriptors (region 0),
    reduced by PCA to at most 16 dimensions so that HDBSCAN stays fast on large N.

    Args:
        desc: (N, R, C) or (N, C) descriptors.

    Returns:
        (N,) int64 group labels; -1 (no group) for images in none, and for all when N is small.
    """
    whole = _as_regions(desc)[:, 0].cpu().numpy().astype(np.float64)
    n = len(whole)
    if n < 2 * min_group:
        return np.full(n, -1, dtype=np.int64)
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    reduced = PCA(n_components=min(16, n - 1, whole.shape[1]), random_state=0).fit_transform(whole)
    return HDBSCAN(min_cluster_size=min_group, copy=True).fit_predict(reduced).astype(np.int64)


def _capped_topk(scores: torch.Tensor, same: torch.Tensor, k: int, k_same: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` columns per row with at most ``k_same`` of the ``same`` ones, unless too few others.

    Args:
        scores: (Q, M) with -inf for excluded columns; same: (Q, M) bool.

    Returns:
        (Q, k) column indices and their scores, best first.
    """
    same_rank = torch.where(same, scores, -torch.inf).argsort(dim=1, descending=True).argsort(dim=1)
    over_cap = same & (same_rank >= k_same)
    # Three tiers: allowed columns by score, then over-cap look-alikes by score (only if
    # nothing else is left), then excluded columns.
    tier = over_cap.float() * 2 + torch.isinf(scores).float() * 4
    key = -tier * 1e6 + torch.nan_to_num(scores, neginf=0.0).clamp(-1e5, 1e5)
    idx = key.topk(k, dim=1).indices
    return idx, scores.gather(1, idx)


@torch.no_grad()
def distinctive_knn(desc: torch.Tensor | np.ndarray, config: ShortlistConfig, groups: np.ndarray | None = None,
                    device: str | torch.device | None = None,
                    max_block_elems: int = 1 << 26) -> tuple[torch.Tensor, torch.Tensor]:
    """The k images that share the most *distinctive* regions with each image.

    A pair (i, j) scores the sum of the ``top_regions`` best region matches of i in j,
    each measured above both regions' backgrounds (:func:`region_backgrounds`):
    ``max_s [2 cos(r, s) - bg_s] - bg_r``, clipped at 0. Repeated layout and script
    match everything and score near 0; several regions of a copied detail each score
    high. Of each image's neighbours, at most ``same_group_share * k`` come from its own
    look-alike group (``groups``, -1 = none).

    Args:
        desc: (N, R, C) L2-normalised descriptors.
        groups: (N,) group label per image, e.g. :func:`look_alike_groups` or the
            ``collection`` metadata; None: no cap.

    Returns:
        (N, k') neighbour indices and scores on CPU, best first, k' = min(k, N - 1).
    """
    desc = _as_regions(desc)
    n, r, _ = desc.shape
    k = min(config.k, n - 1)
    if k < 1:
        return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = desc.to(device)
    background = region_backgrounds(base, config.background_k, config.block, max_block_elems)
    group = torch.as_tensor(groups if groups is not None else np.full(n, -1), device=device)
    k_same = max(1, int(round(config.same_group_share * k))) if groups is not None else k
    top = min(config.top_regions, r)
    idx_out, score_out = torch.empty(n, k, dtype=torch.long), torch.empty(n, k)
    step = _query_step(n, r, config.block, max_block_elems)
    for q0 in range(0, n, step):
        q1 = min(n, q0 + step)
        rows = group[q0:q1, None]
        cand_score, cand_idx = [], []
        for b0 in range(0, n, config.block):
            b1 = min(n, b0 + config.block)
            best = _region_best(base[q0:q1], base[b0:b1], background[b0:b1]) - background[q0:q1, :, None]
            score = best.clamp_min(0).topk(top, dim=1).values.sum(1)  # (Q, B)
            cols = torch.arange(b0, b1, device=device)
            score[torch.arange(q0, q1, device=device)[:, None] == cols[None, :]] = -torch.inf
            same = (group[cols][None, :] == rows) & (rows >= 0)
            for part in (same, ~same):  # the best k of each side, so the cap can always be filled
                s, i = torch.where(part, score, -torch.inf).topk(min(k, score.shape[1]), dim=1)
                cand_score.append(s)
                cand_idx.append(cols[i])
        scores, cols = torch.cat(cand_score, 1), torch.cat(cand_idx, 1)
        same = (group[cols] == rows) & (rows >= 0)
        pos, best = _capped_topk(scores, same, k, k_same)
        idx_out[q0:q1], score_out[q0:q1] = cols.gather(1, pos).cpu(), best.float().cpu()
    return idx_out, score_out


# ------------------------------------------------------------ cell votes


@dataclass
class CellBag:
    """Feature cells of many images pooled together, built by :func:`cell_bag`: features
    (M, C), weights (M,), owner (M,) image index (cells of one image are contiguous,
    images in order), and where each cell is: centre (M, 2) in pixels of its image, width
    (M,) of its cell in pixels and pyramid level (M,)."""

    features: torch.Tensor
    weights: torch.Tensor
    owner: torch.Tensor
    centre: torch.Tensor | None = None
    width: torch.Tensor | None = None
    level: torch.Tensor | None = None


def cell_bag(pyramids: Iterable[FeaturePyramid], weights: Iterable[Sequence[torch.Tensor]] | None,
             levels: Callable[[int], Iterable[int]]) -> CellBag:
    """Every cell of ``levels(n_levels)`` of each pyramid, with its texture weight (1 without)."""
    return cell_bags(pyramids, weights, levels)[0]


def cell_bags(pyramids: Iterable[FeaturePyramid], weights: Iterable[Sequence[torch.Tensor]] | None,
              *levels: Callable[[int], Iterable[int]]) -> list[CellBag]:
    """One :class:`CellBag` per ``levels`` selector, in one pass over the pyramids (each is
    read once, and none is kept: a large collection never sits in memory)."""
    weights = iter(weights) if weights is not None else None
    parts: list[tuple[list, ...]] = [([], [], [], [], [], []) for _ in levels]
    for i, pyramid in enumerate(pyramids):
        w_levels = next(weights) if weights is not None else None
        for (feats, wts, owner, centre, width, lvl), select in zip(parts, levels):
            for level in select(len(pyramid.levels)):
                fmap = pyramid.levels[level]
                _, h, w = fmap.shape
                feats.append(fmap.flatten(1).T.float())
                wts.append(w_levels[level].flatten().float() if w_levels is not None else torch.ones(h * w))
                owner.append(torch.full((h * w,), i, dtype=torch.long))
                cx, cy = pyramid.cell_size(level)
                rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                centre.append(torch.stack([(cols.flatten() + 0.5) * cx, (rows.flatten() + 0.5) * cy], 1).float())
                width.append(torch.full((h * w,), cx))
                lvl.append(torch.full((h * w,), level, dtype=torch.long))
    return [CellBag(*(torch.cat(v) for v in part)) if part[0] else
            CellBag(torch.zeros(0, 0), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long)) for part in parts]


def centre_cells(bag: CellBag) -> CellBag:
    """The bag with each image's mean cell taken out, per pyramid level, and cells L2-normalised.

    The mean is weighted by the cells' texture weights, so it is the mean of the image's
    distinctive cells, not of its script. What every cell of an image shares (a paper tone,
    a medium, a source's house look) pulls all of its cells toward every image of the same
    look; with it taken out, a detail redrawn in another medium is nearer to its copy.

    Args:
        bag: cells (see :func:`cell_bag`); ``level`` None counts as one level.

    Returns:
        A new :class:`CellBag`, same cells and order, features (M, C) centred and normalised.
    """
    if len(bag.features) == 0:
        return bag
    level = bag.level if bag.level is not None else torch.zeros_like(bag.owner)
    groups, inverse = torch.unique(bag.owner * (int(level.max()) + 1) + level, return_inverse=True)
    weighted = torch.zeros(len(groups), bag.features.shape[1]).index_add_(0, inverse, bag.features * bag.weights[:, None])
    mass = torch.zeros(len(groups)).index_add_(0, inverse, bag.weights)
    mean = weighted / mass.clamp_min(1e-6)[:, None]  # (G, C) an all-zero-weight image keeps its cells
    features = F.normalize(bag.features - mean[inverse], dim=1)
    return CellBag(features, bag.weights, bag.owner, bag.centre, bag.width, bag.level)


def _image_blocks(owner: torch.Tensor, rows: int) -> list[slice]:
    """Slices of ``owner`` (sorted) of about ``rows`` rows that never split an image."""
    starts = torch.nonzero(torch.diff(owner, prepend=owner[:1] - 1)).flatten().tolist() + [len(owner)]
    blocks, begin = [], 0
    for start, end in zip(starts[:-1], starts[1:]):
        if end - begin > rows and start > begin:
            blocks.append(slice(begin, start))
            begin = start
    return blocks + [slice(begin, len(owner))] if len(owner) else blocks


def _hough_peaks(pair: torch.Tensor, level: torch.Tensor, shift: torch.Tensor, bin_width: torch.Tensor,
                 vote: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """(n_pairs,) heaviest (level, translation) bin of each pair's votes.

    Two grids of bins staggered by half a bin in each axis (four in all): a peak cut by a
    bin edge in one grid is whole in another.
    """
    best = torch.zeros(n_pairs)
    for ox in (0.0, 0.5):
        for oy in (0.0, 0.5):
            bx = (torch.floor(shift[:, 0] / bin_width + ox).long() + 2048).clamp(0, 4095)
            by = (torch.floor(shift[:, 1] / bin_width + oy).long() + 2048).clamp(0, 4095)
            key = ((pair * 16 + level.clamp(0, 15)) * 4096 + bx) * 4096 + by
            bins, inverse = torch.unique(key, return_inverse=True)
            mass = torch.zeros(len(bins)).index_add_(0, inverse, vote)
            best.scatter_reduce_(0, torch.div(bins, 16 * 4096 * 4096, rounding_mode="floor"), mass, "amax")
    return best


@torch.no_grad()
def vote_scores(queries: CellBag, database: CellBag, n_images: int, neighbours: int = 5,
                block_elements: int = 1 << 25, bin_cells: float = 0.0) -> torch.Tensor:
    """How strongly each image's cells point at each other image (N, N), symmetric.

    Each query cell finds its ``neighbours + 1`` nearest database cells in *other*
    images; each of the first ``neighbours`` votes for its image with
    ``(s_j - s_last) * w_query * w_cell``: how much nearer it is than the next candidate
    (local scaling, as CSLS: a cell of script or of a page's frame has many equally near
    neighbours and casts almost nothing), times both cells' texture weights. A copied
    detail redrawn in another medium is rarely anyone's nearest cell *globally* by a wide
    margin, but its several cells point at the same image, so the votes add up there.

    With ``bin_cells`` > 0 the votes must also agree on where the detail went, as in
    ArtMiner's Hough vote: a vote from query cell p to a database cell q at scale
    s = (q's cell width / p's) says the detail moved by t = q - s * p; a pair scores the
    votes of its heaviest (database level, t) bin, ``bin_cells`` database cells wide,
    instead of all of them. Generic cells (sky, paper, hatching) vote for scattered
    translations, the cells of a copied detail for one.

    Args:
        queries, database: cells (see :func:`cell_bag`); database cells may come from
            several levels, so a detail is found at other scales.
        n_images: N, the number of owners.

    Returns:
        (N, N) float32 scores, ``max(s_ij, s_ji)``, zero diagonal.
    """
    score = torch.zeros(n_images * n_images)
    if len(queries.features) == 0 or len(database.features) == 0:
        return score.view(n_images, n_images)
    m = min(neighbours + 1, len(database.features))
    rows = max(1, block_elements // len(database.features))
    for part in _image_blocks(queries.owner, rows):  # an image's votes all in one block: its bins are whole
        sim = queries.features[part] @ database.features.T  # (r, M)
        sim.masked_fill_(queries.owner[part, None] == database.owner[None, :], -2.0)
        top, idx = sim.topk(m, dim=1)
        idx = idx[:, :-1]
        vote = (top[:, :-1] - top[:, -1:]).clamp_min(0) * queries.weights[part, None] * database.weights[idx]
        key = queries.owner[part, None] * n_images + database.owner[idx]
        if bin_cells <= 0:
            score.index_add_(0, key.flatten(), vote.flatten())
            continue
        scale = database.width[idx] / queries.width[part, None]  # (r, n)
        shift = database.centre[idx] - scale[..., None] * queries.centre[part, None]  # (r, n, 2)
        # The block's query images own the score rows [first, last]: its pairs alone.
        first, last = int(queries.owner[part.start]), int(queries.owner[part.stop - 1])
        offset = first * n_images
        score[offset : (last + 1) * n_images] = _hough_peaks(
            key.flatten() - offset, database.level[idx].flatten(), shift.flatten(0, 1),
            (bin_cells * database.width[idx]).flatten(), vote.flatten(), (last - first + 1) * n_images)
    score = score.view(n_images, n_images)
    return torch.maximum(score, score.T).fill_diagonal_(0.0)


@torch.no_grad()
def cell_image_best(queries: CellBag, database: CellBag, n_images: int, block_elements: int = 1 << 25) -> torch.Tensor:
    """Each query cell's best cosine in each image (a diagnostic: what the cells can tell).

    Args:
        queries, database: cells (see :func:`cell_bag`).
        n_images: N, the number of owners.

    Returns:
        (M, N) float32, M query cells; -inf for the cell's own image and images without cells.
    """
    out = torch.full((len(queries.features), n_images), -torch.inf)
    if len(queries.features) == 0 or len(database.features) == 0:
        return out
    rows = max(1, block_elements // len(database.features))
    owner = database.owner[None, :]
    for s in range(0, len(queries.features), rows):
        sim = queries.features[s : s + rows] @ database.features.T  # (r, M_db)
        out[s : s + rows].scatter_reduce_(1, owner.expand(len(sim), -1), sim, "amax")
    out[torch.arange(len(out)), queries.owner] = -torch.inf
    return out


def capped_neighbours(score: torch.Tensor, k: int, groups: np.ndarray | None = None,
                      same_group_share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's ``k`` best-scoring other images, at most ``same_group_share * k`` of
    them from its own group (``groups``, -1 = none) while others are left.

    Returns:
        (N, k') indices and scores, best first, k' = min(k, N - 1).
    """
    n = score.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return torch.zeros(n, 0, dtype=torch.long), torch.zeros(n, 0)
    score = score.clone().fill_diagonal_(-torch.inf)
    group = torch.as_tensor(groups if groups is not None else np.full(n, -1))
    same = (group[:, None] == group[None, :]) & (group[:, None] >= 0)
    k_same = max(1, int(round(same_group_share * k))) if groups is not None else k
    return _capped_topk(score, same, k, k_same)


def shortlist_pairs(desc: torch.Tensor | np.ndarray, config: ShortlistConfig, groups: np.ndarray | None = None,
                    device: str | torch.device | None = None,
                    votes: torch.Tensor | None = None) -> list[tuple[int, int, float]]:
    """The shortlist by ``config.scoring``: unordered pairs ``(i, j, score)``, best first.

    Args:
        votes: (N, N) :func:`vote_scores`, needed for ``scoring="votes"``.
    """
    if config.scoring == "max":
        return knn_pairs(desc, config.k, device, config.block)
    if config.scoring == "votes":
        if votes is None:
            raise ValueError("the 'votes' shortlist needs the vote scores of the collection's cells")
        neighbours, score = capped_neighbours(votes, config.k, groups, config.same_group_share)
    else:
        neighbours, score = distinctive_knn(desc, config, groups, device)
    pairs, scores = unique_pairs(neighbours, score)
    return [(int(i), int(j), float(s)) for (i, j), s in zip(pairs.tolist(), scores.tolist())]


def all_pairs(n: int) -> list[Pair]:
    """Every unordered pair ``(i, j)``, i < j, of n images (`--pairs all`)."""
    if n < 0:
        raise ValueError(f"number of images must be >= 0, got {n}")
    i, j = np.triu_indices(n, k=1)
    return list(zip(i.tolist(), j.tolist()))
