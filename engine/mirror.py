"""Mirrored copies: prints reverse their model, so a copy is often a mirror image.

Pair verification (:mod:`engine.verify`) fits orientation-preserving affines only, and
one-shot detection slides the query as it is. Both are wrapped here, not changed:

1. verification also runs on (A, mirror(B)), B's pyramid being that of the image flipped
   left-right; what it finds is mapped back into B's frame (x -> W_B - x), so its affine
   has a negative determinant, and the match is marked ``mirrored``;
2. detection also slides the mirrored query (features of the flipped query crop) and
   marks its hits ``mirrored``;
3. a region found both ways (a symmetric detail, a face seen from the front) is kept
   once, with the better score.

The mirrored pyramid comes two ways (``MIRROR_MODES``):

- ``"image"``: features of the flipped image. Exact, at the price of one more feature
  extraction per image, cached beside the direct features under ``<hash>-mirror``.
- ``"flip"``: the direct feature maps flipped left-right. Free, but approximate: the
  backbone's filters are not mirror-symmetric (a filter for a left-facing edge does not
  become one for a right-facing edge), so flipped features differ from features of the
  flipped image; ``benchmarks/mirror.py`` measures what that costs in recall.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import batched_nms

from engine.backbone import STRIDE, Backbone
from engine.detect import DetectConfig, FeatureBank, detect
from engine.features import FeatureCache, FeatureConfig, FeaturePyramid, extract_pyramids
from engine.images import ImageReadError, image_size, load_rgb
from engine.types import Affine, Box, Detection, PairMatch
from engine.verify import VerifyConfig, merge_twins, verify_pairs

MIRROR_MODES = ("off", "flip", "image")
MIRROR_PREFIX = "mirror:"  # names the mirrored twin of an image inside a verification batch
MIRROR_SUFFIX = "-mirror"  # cache key suffix of the flipped image's features


def flip_pyramid(pyramid: FeaturePyramid) -> FeaturePyramid:
    """The feature maps flipped left-right (mode ``"flip"``): (C, h, w) per level."""
    return FeaturePyramid(tuple(torch.flip(t, dims=(2,)) for t in pyramid.levels), pyramid.image_size)


def mirror_box(box: Box, width: float) -> Box:
    """``box`` in the frame of the image flipped left-right (an involution)."""
    return Box(width - box.x1, box.y0, width - box.x0, box.y1)


def unmirror_affine(affine: Affine, width_b: float) -> Affine:
    """A -> mirror(B) affine composed with the flip x -> W_B - x: the A -> B affine."""
    (a, b, c), (d, e, f) = affine
    return ((-a, -b, width_b - c), (d, e, f))


def unmirror_match(match: PairMatch, image_b: str, width_b: float) -> PairMatch:
    """A match of (A, mirror(B)) in B's own frame, marked ``mirrored``."""
    inliers = tuple((xa, ya, width_b - xb, yb) for xa, ya, xb, yb in match.inliers)
    return replace(match, image_b=image_b, box_b=mirror_box(match.box_b, width_b),
                   affine=unmirror_affine(match.affine, width_b), mirrored=True, inliers=inliers)


def merge_mirrored(direct: list[PairMatch], mirrored: list[PairMatch], iou: float = 0.5) -> list[PairMatch]:
    """Direct matches plus mirrored ones that are not the same region pair; of twins
    (both boxes overlapping more than ``iou``) the better score stays. Best first."""
    kept = merge_twins(direct, mirrored, lambda d, m: d.box_a.iou(m.box_a) > iou and d.box_b.iou(m.box_b) > iou)
    return sorted(kept, key=lambda m: -m.score)


def verify_pairs_mirrored(
    pairs: Sequence[tuple[str, str]],
    get_pyramid: Callable[[str], FeaturePyramid],
    get_mirrored: Callable[[str], FeaturePyramid],
    config: VerifyConfig = VerifyConfig(),
    device: torch.device | str | None = None,
    batch_size: int = 32,
    get_weights: Callable[[str], tuple[torch.Tensor, ...]] | None = None,
    reference: bool = False,
) -> Iterator[tuple[tuple[str, str], list[PairMatch]]]:
    """:func:`engine.verify.verify_pairs` of (A, B) and of (A, mirror(B)), merged per pair.

    Pairs given in :func:`engine.verify.both_ways` order with an even ``batch_size`` keep
    (A, B) and (B, A) in one batch.

    Args:
        get_mirrored: image id -> pyramid of its mirror image (see ``MIRROR_MODES``).
        get_weights: image id -> its texture weights per level; the mirror image's are
            the same maps flipped left-right. None: computed by ``verify_pairs``.

    Yields:
        ((A, B), matches) in input order; mirrored matches are in B's frame.
    """
    pairs = [(str(a), str(b)) for a, b in pairs]

    def pyramid(name: str) -> FeaturePyramid:
        return get_mirrored(name[len(MIRROR_PREFIX):]) if name.startswith(MIRROR_PREFIX) else get_pyramid(name)

    def weights(name: str) -> tuple[torch.Tensor, ...]:
        if name.startswith(MIRROR_PREFIX):
            return tuple(w.flip(-1) for w in get_weights(name[len(MIRROR_PREFIX):]))
        return get_weights(name)

    # Direct and mirrored pairs of a chunk go through one call, so they share batches.
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        ordered = chunk + [(a, MIRROR_PREFIX + b) for a, b in chunk]
        found = dict(verify_pairs(ordered, pyramid, config, device, batch_size,
                                  weights if get_weights is not None else None, reference))
        for a, b in chunk:
            width_b = float(get_pyramid(b).image_size[0])
            flipped = [unmirror_match(m, b, width_b) for m in found[(a, MIRROR_PREFIX + b)]]
            yield (a, b), merge_mirrored(found[(a, b)], flipped)


def detect_mirrored(query: torch.Tensor, query_mirror: torch.Tensor, bank: FeatureBank,
                    config: DetectConfig = DetectConfig(), exclude: tuple[str, Box] | None = None) -> list[Detection]:
    """:func:`engine.detect.detect` of the query and of its mirror image, merged.

    Args:
        query: (C, qh, qw) features of the query crop; query_mirror: (C, qh, qw)
            features of the crop flipped left-right.

    Returns:
        Up to ``config.top_k`` detections, best first; hits of the mirrored query are
        ``mirrored``; hits of one image overlapping by more than ``config.nms_iou``
        across the two queries are one hit (the better).
    """
    return merge_mirrored_detections(detect(query, bank, config, exclude),
                                     detect(query_mirror, bank, config, exclude), config)


def merge_mirrored_detections(direct: list[Detection], mirrored: list[Detection],
                              config: DetectConfig = DetectConfig()) -> list[Detection]:
    """Hits of a query and of its mirror image as one list: the latter marked ``mirrored``,
    hits of one image overlapping by more than ``config.nms_iou`` kept once (the better)."""
    found = direct + [replace(d, mirrored=True) for d in mirrored]
    if not found:
        return []
    boxes = torch.tensor([d.box.as_list() for d in found], dtype=torch.float32)
    scores = torch.tensor([d.score for d in found], dtype=torch.float32)
    position = {image_id: i for i, image_id in enumerate(dict.fromkeys(d.image_id for d in found))}
    owners = torch.tensor([position[d.image_id] for d in found])
    keep = batched_nms(boxes, scores, owners, config.nms_iou)  # sorted by score
    return [found[i] for i in keep[: config.top_k].tolist()]


# ---------------------------------------------------------------- features of flipped images


def mirror_hash(image_hash: str) -> str:
    """Cache key of the flipped image's pyramid."""
    return image_hash + MIRROR_SUFFIX


def cache_mirrored_features(backbone: Backbone, items: Sequence[tuple[str, str | Path]], hashes: dict[str, str],
                            config: FeatureConfig, cache_root: str | Path, batch_size: int = 16) -> list[str]:
    """Make sure the pyramid of every image flipped left-right is cached (mode ``"image"``).

    Args:
        items: (image_id, path); hashes: image_id -> content hash (the cache key's root).

    Returns:
        Paths that could not be read (skipped).
    """
    cache = FeatureCache(cache_root, backbone.model_id, config)
    todo = [(i, p) for i, p in items if not cache.path(mirror_hash(hashes[i])).is_file()]
    failed: list[str] = []
    for start in range(0, len(todo), batch_size):
        ids, arrays, sizes = [], [], []
        for image_id, path in todo[start : start + batch_size]:
            try:
                size = image_size(path)
                rgb = load_rgb(path, max_side=2 * config.max_side * STRIDE)  # as collection_features
            except ImageReadError as err:
                failed.append(err.path)
                continue
            ids.append(image_id)
            arrays.append(np.ascontiguousarray(rgb[:, ::-1]))
            sizes.append(size)
        for image_id, pyramid in zip(ids, extract_pyramids(backbone, arrays, config, sizes)):
            cache.put(mirror_hash(hashes[image_id]), pyramid)
    return failed
