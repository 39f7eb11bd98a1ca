"""Fine alignment of a link's two regions: the affine, then a regularised dense flow.

The thesis slides (reference 002) align copies as RANSAC-Flow does: a coarse parametric
fit, then a local flow. The link's affine comes from stride-16 features, so it is off by
up to half a cell (8 px and more at the original resolution) and cannot follow a
copyist's local freedoms (a turned head, a redrawn contour). Steps:

1. A's box (plus a margin) is resampled to a working crop whose longer side is
   ``side`` px, and B is resampled onto the same grid through the affine;
2. both crops become *structure* images: luminance high-passed and divided by its
   local contrast, so an engraving's hatching and an oil's tones of one form look alike
   (a copy in another medium keeps edges and shapes, not tones);
3. OpenCV's DIS optical flow (Kroeger et al. 2016) runs A -> warped B and back. DIS
   rather than coarse-to-fine on backbone features: the residual after the affine is a
   few pixels, far below a 16-px feature cell, and DIS costs milliseconds on CPU;
4. regularisation, so the flow does not hallucinate where the two differ: vectors
   failing the forward-backward check get no weight, the rest are averaged by a wide
   confidence-weighted Gaussian (normalised convolution), clamped to ``max_shift``, and
   the refinement is kept only if it raises the structure images' correlation, to a
   level unrelated images do not reach.

All coordinates are original pixels; images may be downscaled *views* with a ``scale``
(view pixels per original pixel), as in ``hitl/overlay.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from engine.types import Affine, Box


@dataclass(frozen=True)
class AlignConfig:
    side: int = 256  # working crop's longer side, px: finer than the 16-px cells the affine came from
    margin: float = 0.1  # context around A's box per side, share of its size (flow needs a border)
    contrast_sigma: float = 3.0  # local contrast normalisation, working px (a few hatching periods)
    preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM  # DIS speed/accuracy trade-off (OpenCV's presets)
    fb_tolerance: float = 1.0  # forward-backward disagreement (working px) beyond which a vector is not trusted
    smooth: float = 0.05  # regularisation: Gaussian sigma of the weighted average, share of ``side``
    max_shift: float = 0.08  # largest refinement, share of ``side`` (~ a feature cell at typical sizes)
    min_gain: float = 0.01  # the refinement must raise the structure correlation by this much ...
    min_correlation: float = 0.15  # ... to at least this: a flow can always fit noise a little
    min_prior: float = 0.05  # and the affine alone must already correlate at the flow's scale

    def __post_init__(self) -> None:
        if self.side < 16:
            raise ValueError(f"AlignConfig.side must be >= 16, got {self.side}")
        for name in ("contrast_sigma", "fb_tolerance", "smooth", "max_shift"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AlignConfig.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Alignment:
    """A dense map from A's region to B.

    Attributes:
        region: the part of A that is mapped (A's box plus the margin), original pixels.
        scale: working pixels per original pixel of A.
        to_b: (h, w, 2) float32, B's original pixel (x, y) for each working pixel centre.
        affine: the link's affine, for points outside ``region``.
        flow: (h, w, 2) float32 refinement in working pixels (zeros when rejected).
        gain: structure correlation after minus before the refinement.
        refined: whether the flow was kept.
        correlation: the structure images' correlation once aligned (with the flow when
            kept, the affine alone otherwise): how well the two regions agree pixel by
            pixel, medium aside (``hitl/agreement.py`` weighs discovery's links by it).
    """

    region: Box
    scale: float
    to_b: np.ndarray
    affine: Affine
    flow: np.ndarray
    gain: float
    refined: bool
    correlation: float

    def map_points(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) A pixels -> (N, 2) B pixels: bilinear in ``to_b`` inside the region, the
        affine outside."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        out = _apply(self.affine, xy)
        h, w = self.to_b.shape[:2]
        px = (xy[:, 0] - self.region.x0) * self.scale - 0.5
        py = (xy[:, 1] - self.region.y0) * self.scale - 0.5
        inside = (px >= 0) & (py >= 0) & (px <= w - 1) & (py <= h - 1)
        if inside.any():
            maps = [self.to_b[..., k].astype(np.float32) for k in range(2)]
            sample = np.stack([px[inside], py[inside]], 1).astype(np.float32)[None]
            for k in range(2):
                out[inside, k] = cv2.remap(maps[k], sample[..., 0], sample[..., 1], cv2.INTER_LINEAR)[0]
        return out


def _apply(affine: Affine, xy: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, np.float64)
    return xy @ m[:, :2].T + m[:, 2]


def working_grid(box_a: Box, config: AlignConfig) -> tuple[Box, float, np.ndarray]:
    """A's region with margin, working px per original px, and (h, w, 2) original A
    pixel of every working pixel centre."""
    grown = Box(box_a.x0 - config.margin * box_a.width, box_a.y0 - config.margin * box_a.height,
                box_a.x1 + config.margin * box_a.width, box_a.y1 + config.margin * box_a.height)
    scale = config.side / max(grown.width, grown.height)
    w, h = max(2, round(grown.width * scale)), max(2, round(grown.height * scale))
    xs = grown.x0 + (np.arange(w) + 0.5) / scale
    ys = grown.y0 + (np.arange(h) + 0.5) / scale
    grid = np.stack(np.meshgrid(xs, ys), -1)  # (h, w, 2)
    return grown, scale, grid


def sample(image: np.ndarray, image_scale: float, points: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``image`` (H, W[, 3]) at (h, w, 2) original pixels (border: 0)."""
    maps = (points * image_scale - 0.5).astype(np.float32)
    return cv2.remap(np.ascontiguousarray(image), maps[..., 0], maps[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def structure(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """(h, w) float32 luminance, high-passed and divided by its local contrast."""
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) if rgb.ndim == 3 else rgb.astype(np.float32)
    high = grey - cv2.GaussianBlur(grey, (0, 0), sigma * 2)
    contrast = np.sqrt(cv2.GaussianBlur(high * high, (0, 0), sigma * 2)) + 2.0  # +2: flat paper stays flat
    return high / contrast


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x * 48 + 128, 0, 255).astype(np.uint8)


def correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Pearson correlation of two (h, w) images over ``valid`` pixels (0 when flat)."""
    x, y = a[valid].astype(np.float64), b[valid].astype(np.float64)
    if x.size < 16:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else 0.0


def regularise(forward: np.ndarray, backward: np.ndarray, config: AlignConfig) -> np.ndarray:
    """Forward-backward check, confidence-weighted smoothing and clamping of a flow.

    Args:
        forward: (h, w, 2) A -> B flow; backward: (h, w, 2) B -> A flow, working px.

    Returns:
        (h, w, 2) regularised forward flow.
    """
    h, w = forward.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    back = cv2.remap(backward, gx + forward[..., 0], gy + forward[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=1e3)
    weight = (np.linalg.norm(forward + back, axis=-1) < config.fb_tolerance).astype(np.float32)
    sigma = config.smooth * max(h, w)
    total = cv2.GaussianBlur(weight, (0, 0), sigma) + 1e-6
    smooth = np.stack([cv2.GaussianBlur(forward[..., k] * weight, (0, 0), sigma) / total for k in range(2)], -1)
    # Where almost nothing was trusted nearby, fade to zero rather than extrapolate.
    smooth *= np.clip(total / 0.2, 0, 1)[..., None]
    limit = config.max_shift * max(h, w)
    norm = np.linalg.norm(smooth, axis=-1, keepdims=True)
    return (smooth * np.minimum(1.0, limit / np.maximum(norm, 1e-6))).astype(np.float32)


def refine_alignment(image_a: np.ndarray, image_b: np.ndarray, box_a: Box, affine: Affine,
                     config: AlignConfig = AlignConfig(), scale_a: float = 1.0, scale_b: float = 1.0) -> Alignment:
    """The link's affine refined by a regularised DIS flow (module docstring).

    Args:
        image_a, image_b: (H, W, 3) uint8 views; ``scale_*`` view pixels per original pixel.
        box_a: A's region (original pixels); affine: A -> B (original pixels).
    """
    region, scale, grid_a = working_grid(box_a, config)
    crop_a = sample(image_a, scale_a, grid_a)
    grid_b = _apply(affine, grid_a.reshape(-1, 2)).reshape(grid_a.shape)
    crop_b = sample(image_b, scale_b, grid_b)
    inside_b = sample(np.ones(image_b.shape[:2], np.float32), scale_b, grid_b) > 0.99
    sa, sb = structure(crop_a, config.contrast_sigma), structure(crop_b, config.contrast_sigma)
    dis = cv2.DISOpticalFlow_create(config.preset)
    forward = dis.calc(_to_u8(sa), _to_u8(sb), None)
    backward = dis.calc(_to_u8(sb), _to_u8(sa), None)
    flow = regularise(forward, backward, config)
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(sb, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR)
    after = correlation(sa, warped, inside_b)
    before = correlation(sa, sb, inside_b)
    gain = after - before
    # Unrelated crops correlate near 0 once the flow's freedom is blurred away; a flow
    # can still raise their fine correlation (it hallucinates), so the prior must agree.
    blur = config.smooth * max(h, w) / 2
    prior = correlation(cv2.GaussianBlur(sa, (0, 0), blur), cv2.GaussianBlur(sb, (0, 0), blur), inside_b)
    refined = gain >= config.min_gain and after >= config.min_correlation and prior >= config.min_prior
    if not refined:
        flow = np.zeros_like(flow)
    # Working pixel p looks at A's p + flow: its B position is the affine of that A point.
    moved = grid_a + flow / scale
    to_b = _apply(affine, moved.reshape(-1, 2)).reshape(grid_a.shape).astype(np.float32)
    return Alignment(region, scale, to_b, affine, flow, float(gain), bool(refined), float(after if refined else before))


def warp_b_onto_a(image_b: np.ndarray, alignment: Alignment, scale_b: float = 1.0) -> np.ndarray:
    """(h, w, 3) B resampled onto A's working crop through the alignment."""
    return sample(image_b, scale_b, alignment.to_b.astype(np.float64))


@dataclass(frozen=True)
class AlignedCrops:
    """A's region and B warped onto it, on the alignment's working grid.

    Attributes:
        alignment: the refined alignment.
        xs, ys: (w,), (h,) A's original pixel coordinates of the grid's columns and rows.
        crop_a, aligned: (h, w, 3) uint8 A's region and B aligned onto it.
        valid: (h, w) bool, where B's image reaches.
    """

    alignment: Alignment
    xs: np.ndarray
    ys: np.ndarray
    crop_a: np.ndarray
    aligned: np.ndarray
    valid: np.ndarray


def aligned_crops(image_a: np.ndarray, image_b: np.ndarray, box_a: Box, affine: Affine,
                  config: AlignConfig = AlignConfig(), scale_a: float = 1.0, scale_b: float = 1.0) -> AlignedCrops:
    """Refine a link's alignment and resample both images onto A's working grid (views
    as (H, W, 3) uint8 arrays, ``scale_*`` view px per original px)."""
    alignment = refine_alignment(image_a, image_b, box_a, affine, config, scale_a, scale_b)
    h, w = alignment.to_b.shape[:2]
    xs = alignment.region.x0 + (np.arange(w) + 0.5) / alignment.scale
    ys = alignment.region.y0 + (np.arange(h) + 0.5) / alignment.scale
    crop_a = sample(image_a, scale_a, np.stack(np.meshgrid(xs, ys), -1))
    aligned = warp_b_onto_a(image_b, alignment, scale_b)
    valid = warp_b_onto_a(np.full(image_b.shape[:2], 255, np.uint8), alignment, scale_b) > 250
    return AlignedCrops(alignment, xs, ys, crop_a, aligned, valid)
