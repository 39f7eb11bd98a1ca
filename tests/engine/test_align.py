"""Fine alignment: a synthetic pair with a known warp (affine plus a smooth local bend)."""

import cv2
import numpy as np
import pytest

from engine.align import (
    AlignConfig,
    correlation,
    refine_alignment,
    regularise,
    sample,
    structure,
    warp_b_onto_a,
    working_grid,
)
from engine.types import Box
from tests.conftest import textured

SIZE = (320, 240)  # (W, H) of both images
AFFINE = np.array([[0.9, -0.1, 30.0], [0.1, 0.9, 10.0]])  # A -> B, the link's coarse fit
BOX_A = Box(60, 50, 260, 200)


def _bend(q: np.ndarray) -> np.ndarray:
    """A smooth local displacement (up to 5 px) of B's pixels, (N, 2) -> (N, 2)."""
    return np.stack([5 * np.sin(q[:, 1] / 40.0), 4 * np.cos(q[:, 0] / 50.0)], 1)


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A, and B(q) = A(S(q)) with S = affine^-1 + bend: A -> B is the affine only roughly."""
    a = textured(seed, SIZE[1] * 2, SIZE[0] * 2)[::2, ::2].copy()  # texture of 4-px cells
    inverse = cv2.invertAffineTransform(AFFINE)
    qx, qy = np.meshgrid(np.arange(SIZE[0]) + 0.5, np.arange(SIZE[1]) + 0.5)
    q = np.stack([qx.ravel(), qy.ravel()], 1)
    source = q @ inverse[:, :2].T + inverse[:, 2] + _bend(q)
    maps = (source - 0.5).astype(np.float32).reshape(SIZE[1], SIZE[0], 2)
    b = cv2.remap(a, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return a, b


def _true_b(x: np.ndarray) -> np.ndarray:
    """Where A's points x land in B: solve x = affine^-1(q) + bend(q) by fixed point."""
    q = x @ AFFINE[:, :2].T + AFFINE[:, 2]
    for _ in range(30):
        q = (x - _bend(q)) @ AFFINE[:, :2].T + AFFINE[:, 2]
    return q


def _inner_points() -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(80, 240, 17), np.linspace(70, 180, 12))
    return np.stack([xs.ravel(), ys.ravel()], 1)


def test_refinement_recovers_a_known_warp():
    a, b = _pair()
    points = _inner_points()
    truth = _true_b(points)
    affine_error = np.linalg.norm(points @ AFFINE[:, :2].T + AFFINE[:, 2] - truth, axis=1)
    alignment = refine_alignment(a, b, BOX_A, tuple(map(tuple, AFFINE)))
    assert alignment.refined and alignment.gain > 0.05
    refined_error = np.linalg.norm(alignment.map_points(points) - truth, axis=1)
    assert np.median(affine_error) > 3.0  # the bend the affine cannot follow
    assert np.median(refined_error) < 1.0 and np.median(refined_error) < 0.3 * np.median(affine_error)


def test_an_exact_affine_stays_put():
    a, _ = _pair()
    b = cv2.warpAffine(a, AFFINE, SIZE, flags=cv2.INTER_LINEAR)
    alignment = refine_alignment(a, b, BOX_A, tuple(map(tuple, AFFINE)))
    points = _inner_points()
    exact = points @ AFFINE[:, :2].T + AFFINE[:, 2]
    assert np.median(np.linalg.norm(alignment.map_points(points) - exact, axis=1)) < 0.5


def test_unrelated_images_are_not_bent():
    """Regularisation: nothing shared, so no flow is kept and the affine stands."""
    a, _ = _pair(0)
    other = textured(5, SIZE[1], SIZE[0])
    alignment = refine_alignment(a, other, BOX_A, tuple(map(tuple, AFFINE)))
    points = _inner_points()
    exact = points @ AFFINE[:, :2].T + AFFINE[:, 2]
    moved = np.linalg.norm(alignment.map_points(points) - exact, axis=1)
    assert not alignment.refined and moved.max() < 1e-3


def test_correlation_says_how_well_the_aligned_regions_agree():
    a, b = _pair()
    exact = cv2.warpAffine(a, AFFINE, SIZE, flags=cv2.INTER_LINEAR)
    affine = tuple(map(tuple, AFFINE))
    assert refine_alignment(a, exact, BOX_A, affine).correlation > 0.9
    bent = refine_alignment(a, b, BOX_A, affine)  # the flow recovers the bend: agreement after it
    assert bent.refined and bent.correlation > 0.7
    unrelated = refine_alignment(a, textured(5, SIZE[1], SIZE[0]), BOX_A, affine)
    assert abs(unrelated.correlation) < 0.15


def test_map_points_outside_the_region_use_the_affine():
    a, b = _pair()
    alignment = refine_alignment(a, b, BOX_A, tuple(map(tuple, AFFINE)))
    far = np.array([[5.0, 5.0], [315.0, 235.0]])
    assert np.allclose(alignment.map_points(far), far @ AFFINE[:, :2].T + AFFINE[:, 2])


def test_warp_b_onto_a_matches_a_after_refinement():
    a, b = _pair()
    alignment = refine_alignment(a, b, BOX_A, tuple(map(tuple, AFFINE)))
    warped = warp_b_onto_a(b, alignment)
    crop_a = sample(a, 1.0, working_grid(BOX_A, AlignConfig())[2])
    valid = np.zeros(warped.shape[:2], bool)
    valid[8:-8, 8:-8] = True
    s = AlignConfig().contrast_sigma
    assert correlation(structure(crop_a, s), structure(warped, s), valid) > 0.8


def test_regularise_drops_inconsistent_vectors_and_clamps():
    forward = np.zeros((64, 64, 2), np.float32)
    forward[..., 0] = 3.0
    backward = -forward  # consistent: a uniform 3-px shift survives
    out = regularise(forward, backward, AlignConfig())
    assert np.allclose(out[16:48, 16:48, 0], 3.0, atol=0.05)
    wild = regularise(forward * 100, backward, AlignConfig())  # nothing consistent: no flow
    assert np.abs(wild).max() < 1e-3
    huge = regularise(forward * 10, -forward * 10, AlignConfig(fb_tolerance=100))
    assert np.linalg.norm(huge, axis=-1).max() <= AlignConfig().max_shift * 64 + 1e-4


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="side"):
        AlignConfig(side=4)
    with pytest.raises(ValueError, match="smooth"):
        AlignConfig(smooth=0)
