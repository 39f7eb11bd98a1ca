"""Tile pyramids: built once, read back as the original's pixels at any level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.images import ImageReadError
from engine.types import Box
from hitl.tiles import build_pyramid, n_levels, open_pyramid, read_region

W, H, TILE = 1100, 700, 256


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    small = (rng.random((H // 25, W // 25, 3)) * 255).astype(np.uint8)  # smooth: JPEG keeps it
    pixels = np.asarray(Image.fromarray(small).resize((W, H), Image.Resampling.BICUBIC))
    path = tmp_path_factory.mktemp("tiles") / "scan.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def _close(a, b) -> bool:
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean() < 3  # JPEG tiles


def test_levels_halve_down_to_one_tile():
    assert n_levels(1100, 700, 256) == 4  # 1100, 550, 275, 138: the last fits one tile
    assert n_levels(200, 100, 256) == 1
    assert n_levels(20_000, 15_000, 512) == 7


def test_region_at_full_resolution_is_the_original(original, tmp_path):
    path, pixels = original
    pyramid = build_pyramid(path, tmp_path / "p", TILE)
    assert (pyramid.width, pyramid.height, pyramid.levels) == (W, H, 4)
    assert sorted(p.name for p in (tmp_path / "p" / "0").iterdir())[:2] == ["0_0.jpg", "0_1.jpg"]
    box = Box(200.0, 100.0, 700.0, 450.0)  # across four tiles
    picture, covered = read_region(pyramid, box, 0)
    assert covered == box and picture.size == (500, 350)
    assert _close(picture, pixels[100:450, 200:700])


def test_coarser_levels_are_halvings_and_boxes_clip(original, tmp_path):
    path, pixels = original
    pyramid = build_pyramid(path, tmp_path / "p", TILE)
    half = np.asarray(Image.fromarray(pixels).reduce(2))
    picture, covered = read_region(pyramid, Box(201.0, 99.0, 701.0, 451.0), 1)
    assert covered == Box(200, 98, 702, 452)  # widened to whole level-1 pixels
    assert _close(picture, half[49:226, 100:351])
    whole, covered = read_region(pyramid, Box(-50.0, -50.0, 5000.0, 5000.0), 3)
    assert covered == Box(0, 0, W, H) and whole.size == pyramid.level_size(3) == (138, 88)
    assert pyramid.level_for(0.5) == 0 and pyramid.level_for(2.5) == 1 and pyramid.level_for(100) == 3
    with pytest.raises(ValueError, match="outside"):
        read_region(pyramid, Box(2000.0, 0.0, 2100.0, 10.0), 0)
    with pytest.raises(ValueError, match="level 4"):
        read_region(pyramid, Box(0.0, 0.0, 10.0, 10.0), 4)


def test_built_once_and_unreadable_images_are_clear_errors(original, tmp_path):
    path, _ = original
    first = build_pyramid(path, tmp_path / "p", TILE)
    stamp = (tmp_path / "p" / "0" / "0_0.jpg").stat().st_mtime_ns
    assert build_pyramid(path, tmp_path / "p", TILE) == first
    assert (tmp_path / "p" / "0" / "0_0.jpg").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no work folder left behind
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="bad.jpg"):
        build_pyramid(tmp_path / "bad.jpg", tmp_path / "q", TILE)
    assert open_pyramid(tmp_path / "q") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "p"]  # nothing half-built
