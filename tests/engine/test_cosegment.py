"""Masks of the shared detail: a synthetic pair with a known shared shape."""

import cv2
import numpy as np
import pytest

from engine.cosegment import MaskConfig, clean_mask, link_mask, local_correlation, rasterise
from engine.types import Box
from tests.conftest import textured

AFFINE = np.array([[0.95, 0.05, 25.0], [-0.05, 0.95, 20.0]])  # A -> B
CENTRE, RADIUS = (160, 120), 60  # the shared disk in A


def _pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A, B (another texture with A's disk pasted through the affine), A's disk mask."""
    a = textured(2, 480, 640)[::2, ::2].copy()  # (240, 320)
    yy, xx = np.mgrid[0:240, 0:320]
    disk = (xx + 0.5 - CENTRE[0]) ** 2 + (yy + 0.5 - CENTRE[1]) ** 2 < RADIUS**2
    b = textured(9, 560, 720)[::2, ::2].copy()  # (280, 360), unrelated
    warped = cv2.warpAffine(a, AFFINE, (360, 280), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(disk.astype(np.uint8), AFFINE, (360, 280), flags=cv2.INTER_NEAREST) > 0
    b[inside] = warped[inside]
    return a, b, disk


def test_known_shared_disk_is_recovered_in_a_and_b():
    """With strict thresholds the disk comes back better than its box would (IoU 0.785);
    the defaults, set for copies across media, let the mask spill a little further."""
    a, b, disk = _pair()
    box = Box(CENTRE[0] - RADIUS, CENTRE[1] - RADIUS, CENTRE[0] + RADIUS, CENTRE[1] + RADIUS)
    loose = rasterise(link_mask(a, b, box, tuple(map(tuple, AFFINE))).polygon_a, 320, 240)
    assert (loose & disk).sum() / (loose | disk).sum() > 0.65 and (loose & disk).sum() > 0.95 * disk.sum()
    found = link_mask(a, b, box, tuple(map(tuple, AFFINE)), config=MaskConfig(threshold=0.35, component_evidence=0.45))
    got = rasterise(found.polygon_a, 320, 240)
    assert (got & disk).sum() / (got | disk).sum() > 0.8
    in_b = rasterise(found.polygon_b, 360, 280)
    truth_b = cv2.warpAffine(disk.astype(np.uint8), AFFINE, (360, 280), flags=cv2.INTER_NEAREST) > 0
    assert (in_b & truth_b).sum() / (in_b | truth_b).sum() > 0.75


def test_nothing_shared_gives_no_mask():
    a, _, _ = _pair()
    other = textured(11, 280, 360)
    found = link_mask(a, other, Box(100, 60, 220, 180), tuple(map(tuple, AFFINE)))
    assert found.mask.mean() < 0.05


def test_local_correlation_known_answers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 40)).astype(np.float32)
    assert np.allclose(local_correlation(x, 2 * x + 1, 3.0)[5:-5, 5:-5], 1.0, atol=1e-3)
    assert np.allclose(local_correlation(x, -x, 3.0)[5:-5, 5:-5], -1.0, atol=1e-3)


def test_clean_mask_fills_holes_and_drops_specks():
    raw = np.zeros((50, 50), bool)
    raw[10:40, 10:40] = True
    raw[20:25, 20:25] = False  # a hole
    raw[2, 45] = True  # a speck
    out = clean_mask(raw, MaskConfig(open_radius=1, close_radius=1))
    assert out[22, 22] and not out[2, 45] and out[11:39, 11:39].all()


def test_rasterise_a_square():
    square = [(10.0, 10.0), (20.0, 10.0), (20.0, 20.0), (10.0, 20.0)]
    got = rasterise(square, 30, 30)
    assert abs(int(got.sum()) - 100) <= 21 and got[15, 15] and not got[5, 5]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="feature_weight"):
        MaskConfig(feature_weight=2)
