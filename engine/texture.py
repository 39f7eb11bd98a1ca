"""Repetitive texture: how much each feature cell repeats within its own image.

Script, hatching, ruling, brickwork, textile and ornament borders are made of one small
pattern repeated many times. Their cells match any other page of the same kind almost
perfectly and in a spatially consistent way (lines of script are parallel, ornament bands
straight), so left alone they outvote a copied detail in the Hough vote and flood the
review queue with text-to-text links.

The remedy is the *burstiness* weighting of image retrieval (Jégou, Douze, Schmid,
"On the burstiness of visual elements", CVPR 2009): a visual element that occurs many
times in one image is down-weighted by the square root of its count. Here a cell's count
is the number of other cells of the same image, outside its own neighbourhood, whose
features are near-duplicates of it (cosine above ``threshold``), softly, and its weight
is ``(1 + count) ** -power``. A copied detail is rarely repeated within its own image and
keeps a weight near 1; a letter of script is repeated dozens of times and weighs little.
Measured on the multi-source demo (see ``benchmarks/sources.py``).

Within the image is not enough: a page template repeats *across* images while each of
its elements is unique on its page (a colour bar, a frame, a plate mark, a folio number
in the same place on every page). Discovery therefore also counts, for each cell, the
other images of the collection holding a near-duplicate of it (:func:`collection_counts`,
the document frequency of the element, at a coarse level where a template element of a
source is near-identical from page to page), weighted the same way. On the multi-source
demo (level 3, cosine 0.75) every cell of a colour bar or ornament border has a
near-duplicate in all 14 other pages of its source, script cells in 14 (median), and
motif cells in none (90th percentile 0): copies redrawn in another medium or hand are
similar, never near-identical. A one-shot query or a lone pair has no collection and
uses the within-image weights alone.

Counting against every other image is O(N^2) (minutes at 1,000 images on two cores,
hours at 10,000). Above ``collection_sample`` images each cell is compared with a
uniform reference sample of the images instead (drawn by content hash, so that a grown
collection keeps its sample) and its count scaled to the collection: the document
frequency estimated at O(N x sample). A template shared by a few per cent of the
collection keeps tens of reference pages at the default sample; an element in very few
images may draw none and go unweighted across the collection (the within-image weight
still holds for script and hatching).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from engine.features import FeaturePyramid


@dataclass(frozen=True)
class TextureConfig:
    threshold: float = 0.65  # cosine of two cells counted as repeats (soft: ramps up over `softness`)
    softness: float = 0.1  # a pair at threshold + softness counts fully, below threshold not at all
    neighbourhood: int = 2  # cells within this Chebyshev distance are the same element, never repeats
    power: float = 0.5  # weight = (1 + repeats)^-power; 0.5 is the burstiness paper's square root
    # Across the collection: a cell's repeats are the other images holding a cell at least
    # this similar, at pyramid level `collection_level` (20 cells on the long side).
    collection_threshold: float = 0.75
    collection_softness: float = 0.05
    collection_level: int = 3
    # Above this many images a cell is compared with a reference sample of about this many
    # (see `reference_level`) and its count scaled to the collection: O(N x sample)
    # instead of O(N^2). 0: every image, whatever the size.
    collection_sample: int = 1000

    def __post_init__(self) -> None:
        if not -1.0 <= self.threshold < 1.0 or self.softness <= 0:
            raise ValueError(f"texture threshold must be in [-1, 1) and softness > 0, got {self}")
        if self.neighbourhood < 0 or self.power < 0:
            raise ValueError(f"texture neighbourhood and power must be >= 0, got {self}")
        if self.collection_sample < 0 or self.collection_sample == 1:
            raise ValueError(f"texture collection_sample must be 0 (every image) or >= 2, got {self.collection_sample}")


def repetition_counts(fmap: torch.Tensor, config: TextureConfig = TextureConfig()) -> torch.Tensor:
    """Soft count of each cell's near-duplicates elsewhere in the same map.

    Args:
        fmap: (C, h, w) L2-normalised features.

    Returns:
        (h, w) float32 counts >= 0.
    """
    if fmap.ndim != 3:
        raise ValueError(f"expected a (C, h, w) feature map, got shape {tuple(fmap.shape)}")
    c, h, w = fmap.shape
    x = fmap.reshape(c, h * w).T.float()  # (N, C)
    sim = x @ x.T  # (N, N)
    soft = ((sim - config.threshold) / config.softness).clamp_(0.0, 1.0)
    rows = torch.arange(h, device=fmap.device).repeat_interleave(w)
    cols = torch.arange(w, device=fmap.device).repeat(h)
    near = ((rows[:, None] - rows[None, :]).abs() <= config.neighbourhood) & (
        (cols[:, None] - cols[None, :]).abs() <= config.neighbourhood)
    return soft.masked_fill_(near, 0.0).sum(1).view(h, w)


def repetition_weights(fmap: torch.Tensor, config: TextureConfig = TextureConfig()) -> torch.Tensor:
    """(C, h, w) -> (h, w) weights in (0, 1]: 1 for a unique cell, small for repeated texture."""
    return (1.0 + repetition_counts(fmap, config)).pow(-config.power)


def pyramid_weights(pyramid: FeaturePyramid, config: TextureConfig = TextureConfig()) -> tuple[torch.Tensor, ...]:
    """Texture weights at every level of a pyramid.

    Computed once at the reference level (the finest, where repeated strokes are resolved)
    and carried to the other levels by area averaging: a coarse cell is as repetitive as
    the fine cells it covers.

    Returns:
        one (h_k, w_k) float32 tensor per level.
    """
    ref = repetition_weights(pyramid.levels[0], config)
    return tuple(ref if k == 0 else F.adaptive_avg_pool2d(ref[None, None], tuple(t.shape[1:]))[0, 0]
                 for k, t in enumerate(pyramid.levels))


def reference_level(n_images: int, sample: int) -> int:
    """Halvings of the hash space that keep a reference sample of about ``sample`` images.

    0 (every image is a reference: the exact count) up to ``sample`` images; above, the
    smallest k with ``n_images / 2**k <= sample``, so the reference holds about
    ``sample / 2`` to ``sample`` images (:func:`in_reference`).
    """
    if sample <= 0 or n_images <= sample:
        return 0
    return math.ceil(math.log2(n_images / sample))


def in_reference(key: str, level: int) -> bool:
    """Whether the image ``key`` (its content hash, or any stable id) is a reference image
    at ``level``: the first 64 bits of its SHA-256 fall in the first ``1 / 2**level`` of
    their range. Membership depends on the image alone, so at one level adding images only
    adds reference images, and the counts kept for the others stay valid (hitl.texture_counts)."""
    return level == 0 or int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) >> (64 - level) == 0


def sampled_reference(keys: Sequence[str], sample: int) -> list[int] | None:
    """Indices of the reference images among ``keys`` (None: every image, the exact count;
    also when fewer than two would be drawn)."""
    level = reference_level(len(keys), sample)
    if level == 0:
        return None
    reference = [i for i, k in enumerate(keys) if in_reference(k, level)]
    return reference if len(reference) >= 2 else None


@torch.no_grad()
def reference_counts(maps: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], own: Sequence[int | None],
                     config: TextureConfig = TextureConfig(), block_elements: int = 1 << 25) -> list[torch.Tensor]:
    """Soft count, for each cell of each map, of the ``reference`` maps holding a near-duplicate.

    Args:
        maps: (C, h_i, w_i) L2-normalised maps, all at one pyramid level.
        reference: the maps compared with, at the same level.
        own: for each of ``maps``, its index in ``reference`` (never counted), or None.

    Cost: every cell against every reference cell, in blocks of ``block_elements``
    similarities, a matrix product of (cells x reference cells x channels): see
    ``python -m benchmarks.texture_counts``.

    Returns:
        one (h_i, w_i) float32 count per map, in [0, len(reference)].
    """
    if not maps:
        return []
    if not reference:
        return [torch.zeros(m.shape[1:]) for m in maps]
    ref_cells = torch.cat([m.flatten(1).T.float() for m in reference])  # (R, C)
    ref_owner = torch.cat([torch.full((m.shape[1] * m.shape[2],), j) for j, m in enumerate(reference)])
    cells = torch.cat([m.flatten(1).T.float() for m in maps])  # (M, C)
    own_of = torch.cat([torch.full((m.shape[1] * m.shape[2],), -1 if o is None else o) for m, o in zip(maps, own)])
    rows_per_block = max(1, block_elements // len(ref_cells))
    counts = torch.empty(len(cells))
    for s in range(0, len(cells), rows_per_block):
        sim = cells[s : s + rows_per_block] @ ref_cells.T  # (r, R)
        best = torch.full((sim.shape[0], len(reference)), -1.0).scatter_reduce_(
            1, ref_owner.expand(sim.shape[0], -1), sim, "amax")
        mine = own_of[s : s + rows_per_block]
        rows = torch.nonzero(mine >= 0).flatten()
        best[rows, mine[rows]] = -1.0  # its own image
        soft = ((best - config.collection_threshold) / config.collection_softness).clamp_(0.0, 1.0)
        counts[s : s + rows_per_block] = soft.sum(1)
    return [c.view(m.shape[1:]) for c, m in zip(counts.split([m.shape[1] * m.shape[2] for m in maps]), maps)]


def scale_to_collection(count: torch.Tensor, n_images: int, n_reference: int, is_reference: bool) -> torch.Tensor:
    """A count over a uniform reference sample scaled to the ``n_images - 1`` other images."""
    others = n_reference - int(is_reference)
    if others == n_images - 1:
        return count
    return count * ((n_images - 1) / max(others, 1))


def collection_counts(maps: Sequence[torch.Tensor], config: TextureConfig = TextureConfig(),
                      block_elements: int = 1 << 25, keys: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Soft count, for each cell of each map, of the *other* maps holding a near-duplicate.

    Args:
        maps: one (C, h_i, w_i) L2-normalised map per image, all at the same pyramid level.
        keys: a stable id per map (content hashes), drawing the reference sample above
            ``config.collection_sample`` maps (default: their positions).

    Up to ``config.collection_sample`` maps every cell is compared with every cell of every
    other map (exact, O(N^2)); above, with the maps of a reference sample
    (:func:`sampled_reference`), and each count is scaled to the collection: an unbiased
    estimate of the document frequency at O(N x sample).

    Returns:
        one (h_i, w_i) float32 count per map, in [0, len(maps) - 1].
    """
    if not maps:
        return []
    keys = [str(i) for i in range(len(maps))] if keys is None else list(keys)
    if len(keys) != len(maps):
        raise ValueError(f"collection_counts got {len(keys)} keys for {len(maps)} maps")
    picked = sampled_reference(keys, config.collection_sample)
    if picked is None:
        return reference_counts(maps, maps, range(len(maps)), config, block_elements)
    position = {j: r for r, j in enumerate(picked)}
    raw = reference_counts(maps, [maps[j] for j in picked], [position.get(i) for i in range(len(maps))],
                           config, block_elements)
    return [scale_to_collection(c, len(maps), len(picked), i in position) for i, c in enumerate(raw)]


def combined_weights(pyramid: FeaturePyramid, collection_count: torch.Tensor | None,
                     config: TextureConfig = TextureConfig()) -> tuple[torch.Tensor, ...]:
    """Within-image weights (:func:`pyramid_weights`) times the collection weight
    ``(1 + count) ** -power``, the count (h, w) carried to every level by bilinear resizing."""
    within = pyramid_weights(pyramid, config)
    if collection_count is None:
        return within
    across = (1.0 + collection_count.float()).pow(-config.power)[None, None]
    return tuple(w * F.interpolate(across, size=tuple(w.shape), mode="bilinear", align_corners=False)[0, 0]
                 for w in within)


class TextureWeights:
    """An image's texture weights per level by image id (:func:`combined_weights`), each
    computed once and kept (a few KB an image).

    Args:
        pyramids: image id -> its pyramid.
        counts: image id -> its collection count (:func:`collection_counts`); images
            missing here get the within-image weights alone.
        keep: images kept in memory.

    Plain data besides the pyramid reader, so a worker process can rebuild it from the
    counts of the images it verifies (``hitl.executors``).
    """

    def __init__(self, pyramids: Callable[[str], FeaturePyramid], config: TextureConfig,
                 counts: dict[str, torch.Tensor] | None = None, keep: int = 8192):
        self.pyramids = pyramids
        self.config = config
        self.counts = counts or {}
        self._get = lru_cache(maxsize=keep)(self._compute)

    def _compute(self, image_id: str) -> tuple[torch.Tensor, ...]:
        return combined_weights(self.pyramids(image_id), self.counts.get(image_id), self.config)

    def __call__(self, image_id: str) -> tuple[torch.Tensor, ...]:
        return self._get(image_id)
