"""Masks of the shared detail: what of A's region is repeated in B, pixel by pixel.

SegSwap (thesis slides, reference 002) learns this co-segmentation; here it is built
without training from what a verified, finely aligned link already gives:

1. evidence of sharing at every pixel of A's working crop (:mod:`engine.align`):
   the local correlation of A's and aligned B's structure images (a Gaussian window),
   and, when a backbone is given, the cosine similarity of the two crops' features at a
   finer scale than discovery's (cells of ``feature_cell`` working px), upsampled;
2. support: the link's box (the inliers' bounding box) weighs evidence inside it over
   the margin around it;
3. threshold, then clean: morphological opening and closing, holes filled, components
   smaller than ``min_area`` of the crop or of weak mean evidence dropped;
4. the mask's outline as a polygon in A's original pixels, and mapped through the
   alignment into B's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from engine.align import (
    AlignConfig,
    Alignment,
    aligned_crops,
    structure,
)
from engine.types import Affine, Box


@dataclass(frozen=True)
class MaskConfig:
    window: float = 6.0  # sigma of the local correlation window, working px (~ a motif's stroke detail)
    feature_cell: int = 8  # finer feature scale: working px per cell (discovery's cells are ~16-30 px)
    feature_weight: float = 0.5  # share of feature similarity in the evidence (rest: structure correlation)
    # Evidence above which a pixel is shared. 0.25 and 0.35 below: the best of a sweep on
    # the demo's 18 direct ground-truth links (mask IoU 0.71 median vs 0.58 at 0.35/0.45).
    threshold: float = 0.25
    margin_weight: float = 0.8  # evidence outside the link's box is scaled by this (less support)
    open_radius: int = 2  # working px: removes specks
    close_radius: int = 6  # working px: bridges hatching gaps
    min_area: float = 0.02  # components smaller than this share of the crop are dropped
    component_evidence: float = 0.35  # a kept component's mean evidence (noise passes the pixel threshold in places)

    def __post_init__(self) -> None:
        if not 0 <= self.feature_weight <= 1:
            raise ValueError(f"MaskConfig.feature_weight must be in [0, 1], got {self.feature_weight}")
        if self.window <= 0 or self.feature_cell < 1:
            raise ValueError("MaskConfig.window must be > 0 and feature_cell >= 1")


def local_correlation(sa: np.ndarray, sb: np.ndarray, sigma: float) -> np.ndarray:
    """(h, w) Pearson correlation of two (h, w) images in a Gaussian window, in [-1, 1]."""
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
    ma, mb = blur(sa), blur(sb)
    cov = blur(sa * sb) - ma * mb
    va, vb = blur(sa * sa) - ma * ma, blur(sb * sb) - mb * mb
    return (cov / np.sqrt(np.maximum(va * vb, 1e-6))).clip(-1, 1).astype(np.float32)


@torch.no_grad()
def feature_similarity(backbone, crop_a: np.ndarray, crop_b: np.ndarray, cell: int) -> np.ndarray:
    """(h, w) cosine similarity of the two crops' backbone features on a grid of ``cell``
    working px, upsampled bilinearly. The crops are (h, w, 3) uint8 of one size."""
    from engine.features import embed_cells, rgb_to_tensor  # lazy: keeps this module light

    h, w = crop_a.shape[:2]
    shape = (max(1, round(h / cell)), max(1, round(w / cell)))
    feats = embed_cells(backbone, torch.cat([rgb_to_tensor(crop_a), rgb_to_tensor(crop_b)]), shape)
    sim = (feats[0] * feats[1]).sum(0)[None, None]  # (1, 1, h', w'), features are L2-normalised
    return F.interpolate(sim, size=(h, w), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


def shared_evidence(crop_a: np.ndarray, aligned_b: np.ndarray, valid: np.ndarray, box_mask: np.ndarray,
                    config: MaskConfig, contrast_sigma: float, backbone=None) -> np.ndarray:
    """(h, w) float32 evidence that a pixel of A's crop is repeated in aligned B."""
    evidence = local_correlation(structure(crop_a, contrast_sigma), structure(aligned_b, contrast_sigma),
                                 config.window)
    if backbone is not None and config.feature_weight > 0:
        sim = feature_similarity(backbone, crop_a, aligned_b, config.feature_cell)
        evidence = (1 - config.feature_weight) * evidence + config.feature_weight * sim
    evidence = np.where(box_mask, evidence, evidence * config.margin_weight)
    return np.where(valid, evidence, -1.0).astype(np.float32)


def clean_mask(raw: np.ndarray, config: MaskConfig) -> np.ndarray:
    """Open, close, fill holes, drop small components: (h, w) bool -> (h, w) bool."""
    def disk(r: int) -> np.ndarray:
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))

    mask = raw.astype(np.uint8)
    if config.open_radius > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk(config.open_radius))
    if config.close_radius > 0:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disk(config.close_radius))
    mask = ndimage.binary_fill_holes(mask > 0)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= config.min_area * mask.size
    keep[0] = False
    return keep[labels]


def shared_mask(crop_a: np.ndarray, aligned_b: np.ndarray, valid: np.ndarray, box_mask: np.ndarray,
                config: MaskConfig = MaskConfig(), contrast_sigma: float = 3.0, backbone=None) -> np.ndarray:
    """(h, w) bool mask of what A's crop shares with aligned B (module docstring).

    Args:
        crop_a, aligned_b: (h, w, 3) uint8, pixel for pixel aligned.
        valid: (h, w) bool, where B reaches; box_mask: (h, w) bool, the link's box.
    """
    evidence = shared_evidence(crop_a, aligned_b, valid, box_mask, config, contrast_sigma, backbone)
    mask = clean_mask(evidence > config.threshold, config)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    strong = np.asarray(ndimage.mean(evidence, labels, index=np.arange(1, n + 1))) >= config.component_evidence
    return np.concatenate([[False], strong])[labels]


def mask_polygon(mask: np.ndarray, alignment: Alignment, tolerance: float = 1.5) -> list[tuple[float, float]]:
    """The outline of the mask's largest component in A's original pixels ([] if empty).

    ``tolerance``: Douglas-Peucker simplification, working px.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    outline = cv2.approxPolyDP(max(contours, key=cv2.contourArea), tolerance, True)[:, 0].astype(np.float64)
    if len(outline) < 3:
        return []
    # Contour points are pixel indices: their centres are at +0.5 working px.
    x = alignment.region.x0 + (outline[:, 0] + 0.5) / alignment.scale
    y = alignment.region.y0 + (outline[:, 1] + 0.5) / alignment.scale
    return [(float(a), float(b)) for a, b in zip(x, y)]


def polygon_to_b(polygon: list[tuple[float, float]], alignment: Alignment) -> list[tuple[float, float]]:
    """A polygon of A's original pixels mapped into B through the alignment."""
    if not polygon:
        return []
    return [(float(x), float(y)) for x, y in alignment.map_points(np.array(polygon))]


def rasterise(polygon: list[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """(height, width) bool: pixels whose centre lies inside the polygon (original pixels)."""
    out = np.zeros((height, width), np.uint8)
    if len(polygon) >= 3:
        pts = np.round((np.array(polygon) - 0.5) * 8).astype(np.int32)  # 3 fractional bits
        cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=3)
    return out.astype(bool)


@dataclass(frozen=True)
class LinkMask:
    """The shared detail of a link: polygons in A's and B's original pixels, the mask on
    A's working crop and the alignment it was found with."""

    polygon_a: list[tuple[float, float]]
    polygon_b: list[tuple[float, float]]
    mask: np.ndarray
    alignment: Alignment


def link_mask(image_a: np.ndarray, image_b: np.ndarray, box_a: Box, affine: Affine,
              align_config: AlignConfig = AlignConfig(), config: MaskConfig = MaskConfig(),
              backbone=None, scale_a: float = 1.0, scale_b: float = 1.0) -> LinkMask:
    """Align a link's regions (:func:`engine.align.refine_alignment`) and segment what
    they share. Images are (H, W, 3) uint8 views, ``scale_*`` view px per original px."""
    crops = aligned_crops(image_a, image_b, box_a, affine, align_config, scale_a, scale_b)
    alignment, xs, ys = crops.alignment, crops.xs, crops.ys
    crop_a, aligned, valid = crops.crop_a, crops.aligned, crops.valid
    box_mask = ((xs >= box_a.x0) & (xs < box_a.x1))[None, :] & ((ys >= box_a.y0) & (ys < box_a.y1))[:, None]
    mask = shared_mask(crop_a, aligned, valid, box_mask, config, align_config.contrast_sigma, backbone)
    polygon = mask_polygon(mask, alignment)
    return LinkMask(polygon, polygon_to_b(polygon, alignment), mask, alignment)
