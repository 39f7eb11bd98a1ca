"""Known-answer tests of the review pictures: boxes, crops and the aligned overlay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.types import IDENTITY_AFFINE, Box
from hitl.views.overlay import aligned_pair, blend, crop_region, draw_boxes, fit_size, warp_onto
from hitl.views.thumbnails import jpeg_bytes, load_view, thumbnail


def _texture(w: int = 200, h: int = 150, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 10, w // 10, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def _forward(image_a: Image.Image, affine, size: tuple[int, int]) -> Image.Image:
    """B such that B(affine(p)) = A(p): sample A at the inverse affine of each B pixel."""
    m = np.array([list(affine[0]), list(affine[1]), [0, 0, 1]], dtype=np.float64)
    inv = np.linalg.inv(m)[:2].ravel()
    return image_a.transform(size, Image.Transform.AFFINE, tuple(inv), resample=Image.Resampling.BILINEAR)


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_warp_brings_b_back_onto_a():
    a = _texture()
    affine = ((1.5, 0.0, 30.0), (0.0, 1.5, 12.0))  # B is A enlarged 1.5x and shifted
    b = _forward(a, affine, (400, 300))
    box_a = Box(40, 30, 120, 100)
    crop_a, warped = aligned_pair(a, 1.0, b, 1.0, box_a, affine, side=160)
    assert crop_a.size == warped.size == (160, 140)
    assert _diff(crop_a, warped) < 6  # resampling noise only
    wrong = warp_onto(b, box_a, IDENTITY_AFFINE, size=crop_a.size)
    assert _diff(crop_a, wrong) > 4 * _diff(crop_a, warped)


def test_warp_uses_the_view_scale_of_b():
    a = _texture()
    affine = ((1.0, 0.0, 20.0), (0.0, 1.0, 10.0))
    b = _forward(a, affine, (260, 200))
    half_b = b.resize((130, 100), Image.Resampling.BILINEAR)  # a downscaled view of B
    box_a = Box(30, 30, 130, 110)
    crop_a = crop_region(a, box_a, 1.0, side=100)
    warped = warp_onto(half_b, box_a, affine, scale_b=0.5, size=crop_a.size)
    assert _diff(crop_a, warped) < 12  # half resolution blurs, but it lines up


def test_crop_region_known_pixels():
    img = Image.new("RGB", (100, 80), (0, 0, 0))
    img.paste((255, 0, 0), (20, 10, 60, 50))  # a red square exactly at the box
    crop = crop_region(img, Box(20, 10, 60, 50), side=64)
    assert crop.size == (64, 64)
    assert np.asarray(crop)[2:-2, 2:-2, 0].min() > 240
    # a view at half size with scale 0.5 gives the same picture
    half = img.resize((50, 40), Image.Resampling.NEAREST)
    assert _diff(crop, crop_region(half, Box(20, 10, 60, 50), 0.5, side=64)) < 10
    with_margin = crop_region(img, Box(20, 10, 60, 50), side=64, margin=0.5)
    assert np.asarray(with_margin)[0, 0].tolist() == [0, 0, 0]


def test_draw_boxes_outlines_in_view_pixels():
    view = Image.new("RGB", (50, 40), (255, 255, 255))
    out = draw_boxes(view, [Box(20, 20, 60, 60)], scale=0.5, width=1)
    px = np.asarray(out)
    assert px[10, 15].tolist() == [230, 57, 70]  # top-left corner of the scaled box
    assert px[20, 20].tolist() == [255, 255, 255]  # inside untouched
    assert np.asarray(view).min() == 255  # the input is not modified


def test_blend_and_its_checks():
    black, white = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (255, 255, 255))
    assert np.asarray(blend(black, white, 0.5)).mean() == pytest.approx(127, abs=1)
    assert np.asarray(blend(black, white, 0.0)).max() == 0
    with pytest.raises(ValueError, match="opacity"):
        blend(black, white, 1.5)
    with pytest.raises(ValueError, match="cannot blend"):
        blend(black, Image.new("RGB", (5, 4)), 0.5)


def test_fit_size():
    assert fit_size(200, 100, 50) == (50, 25)
    assert fit_size(10, 40, 20) == (5, 20)
    with pytest.raises(ValueError):
        fit_size(0, 10, 20)


def test_load_view_and_thumbnail(tmp_path):
    path = tmp_path / "a.png"
    _texture(400, 300).save(path)
    view, scale = load_view(path, 100)
    assert view.size == (100, 75) and scale == pytest.approx(0.25)
    thumb = thumbnail(path, [Box(0, 0, 200, 150)], side=100)
    assert thumb.size == (100, 75)
    assert jpeg_bytes(thumb)[:2] == b"\xff\xd8"


def test_load_view_of_missing_file_names_it(tmp_path):
    from engine.images import ImageReadError

    with pytest.raises(ImageReadError, match="missing.jpg"):
        load_view(tmp_path / "missing.jpg", 100)
