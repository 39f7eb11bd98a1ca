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

from collections.abc import Sequence
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
    grids: tuple[int, ...] = (1, 8)  # g x g regions per grid: 1 + 64 = 65 descriptors, whole image first
    block: int = 4096  # database images per matmul block (bounds memory, not results)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"shortlist k must be >= 1, got {self.k}")
        if self.gem_p <= 0:
            raise ValueError(f"GeM exponent must be > 0, got {self.gem_p}")
        if not self.grids or min(self.grids) < 1:
            raise ValueError(f"region grids must be positive integers, got {self.grids}")
        if self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")

    @property
    def n_regions(self) -> int:
        return sum(g * g for g in self.grids)


def gem_regions(features: torch.Tensor, grids: Sequence[int], p: float = 3.0) -> torch.Tensor:
    """Signed GeM pooling of one feature map over the cells of several grids.

    The default backbone's stride-16 features come out of a linear bottleneck and are
    signed, so plain GeM (which clamps at zero) would throw half of them away: we pool
    ``sign(x)|x|^p`` and take the signed p-th root. For non-negative (post-ReLU)
    features this is the usual GeM.

    Args:
        features: (C, h, w) feature map.
        grids: g for each g x g grid; a grid finer than the map reuses cells.
        p: GeM exponent.

    Returns:
        (R, C) L2-normalised descriptors, R = sum(g * g), whole-map grid first if g=1 leads.
    """
    x = features.float()
    powered = x.sign() * x.abs().pow(p)  # (C, h, w)
    pooled = [F.adaptive_avg_pool2d(powered[None], g)[0].flatten(1).T for g in grids]  # (g*g, C)
    m = torch.cat(pooled)  # (R, C)
    return F.normalize(m.sign() * m.abs().pow(1.0 / p), dim=1)


def global_descriptors(pyramids: Sequence[FeaturePyramid], config: ShortlistConfig = ShortlistConfig()) -> torch.Tensor:
    """Regional GeM descriptors of each image's pyramid level ``config.level``.

    Returns:
        (N, R, C) float32 on CPU, L2-normalised along C; R = ``config.n_regions``.

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
        out[i] = gem_regions(fmap.cpu(), config.grids, config.gem_p)
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


def all_pairs(n: int) -> list[Pair]:
    """Every unordered pair ``(i, j)``, i < j, of n images (`--pairs all`)."""
    if n < 0:
        raise ValueError(f"number of images must be >= 0, got {n}")
    i, j = np.triu_indices(n, k=1)
    return list(zip(i.tolist(), j.tolist()))
