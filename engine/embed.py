"""The map: 2D coordinates of images (or detail regions) and density groups on them.

UMAP places items with similar descriptors near each other; HDBSCAN then finds dense
groups on the 2D map (label -1 = noise, not in any group). Both are recomputed per model
version, since a fine-tuned model moves every descriptor. With a seed, UMAP runs single-
threaded and is reproducible; ``seed=None`` trades that for parallel speed on big maps.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

UMAP_MIN_ITEMS = 4  # below this UMAP's neighbour graph is degenerate: PCA instead


def image_descriptor_matrix(desc: torch.Tensor | np.ndarray) -> np.ndarray:
    """One vector per image for the map, from regional descriptors.

    The whole-image descriptor (region 0) and the normalised mean of the other regions,
    each weighted 1/√2, so rows stay unit length and both layout and detail count.

    Args:
        desc: (N, R, C) L2-normalised descriptors, region 0 the whole image
            (:func:`engine.shortlist.global_descriptors`).

    Returns:
        (N, C) if R == 1, else (N, 2C), float32.
    """
    desc = torch.as_tensor(desc).float()
    if desc.ndim != 3:
        raise ValueError(f"descriptors must be (N, R, C), got shape {tuple(desc.shape)}")
    if desc.shape[1] == 1:
        return desc[:, 0].numpy().copy()
    details = torch.nn.functional.normalize(desc[:, 1:].mean(dim=1), dim=1)
    return (torch.cat([desc[:, 0], details], dim=1) / math.sqrt(2)).numpy()


def _check_matrix(x: np.ndarray, name: str, width: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or (width is not None and x.shape[1] != width):
        shape = f"(N, {width})" if width else "(N, D)"
        raise ValueError(f"{name} must be {shape}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return x


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, 2) first two principal coordinates (zeros where there is no spread)."""
    out = np.zeros((len(x), 2), dtype=np.float32)
    if len(x) < 2:
        return out
    u, s, _ = np.linalg.svd(x - x.mean(axis=0, keepdims=True), full_matrices=False)
    k = min(2, len(s))
    out[:, :k] = u[:, :k] * s[:k]
    return out


def map_2d(descriptors: np.ndarray, seed: int | None = 0, n_neighbors: int = 15,
           min_dist: float = 0.1) -> np.ndarray:
    """UMAP 2D coordinates of descriptors.

    Args:
        descriptors: (N, D) rows, e.g. :func:`image_descriptor_matrix` or region descriptors.
            Rows are L2-normalised, so UMAP's euclidean metric ranks like cosine.
        seed: random state for a reproducible map; None runs UMAP in parallel.
        n_neighbors: UMAP's neighbourhood, capped at N - 1 for small collections.

    Returns:
        (N, 2) float32; PCA coordinates when N < 4.
    """
    x = _check_matrix(descriptors, "descriptors")
    if len(x) < UMAP_MIN_ITEMS:
        return pca_2d(x)
    import umap  # slow to import (numba): only when a map is drawn

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist,
                        random_state=seed, n_jobs=1 if seed is not None else -1)
    with warnings.catch_warnings():
        # "n_jobs overridden by setting random_state" and small-graph init notices.
        warnings.simplefilter("ignore", UserWarning)
        xy = reducer.fit_transform(x)
    return np.asarray(xy, dtype=np.float32)


def default_min_cluster_size(n: int) -> int:
    """At least 5 items per group, growing as √N / 2 (50 for 10k images)."""
    return max(5, round(0.5 * math.sqrt(n)))


def density_groups(xy: np.ndarray, min_cluster_size: int | None = None) -> np.ndarray:
    """HDBSCAN groups of map points.

    Args:
        xy: (N, 2) map coordinates.
        min_cluster_size: smallest group; default :func:`default_min_cluster_size`.

    Returns:
        (N,) int64 labels, -1 for noise; all -1 when N < min_cluster_size.
    """
    xy = _check_matrix(xy, "map coordinates", width=2)
    size = default_min_cluster_size(len(xy)) if min_cluster_size is None else min_cluster_size
    if size < 2:
        raise ValueError(f"min_cluster_size must be >= 2, got {size}")
    if len(xy) < size:
        return np.full(len(xy), -1, dtype=np.int64)
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=size, copy=True).fit_predict(xy).astype(np.int64)
