"""Thumbnails are written once into the project's data folder and read back from there."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from db.records import ImageRecord
from engine.types import Box
from hitl.project import ProjectPaths
from hitl.thumbs import (
    ensure_region_crops,
    ensure_thumbnails,
    open_thumbnail,
    region_crop_path,
    thumb_path,
)


def test_thumbnails_made_once_and_unreadable_ones_skipped(tmp_path: Path):
    Image.new("RGB", (400, 200), (10, 200, 30)).save(tmp_path / "a.jpg")
    paths = ProjectPaths(tmp_path / "p.duckdb")
    images = [ImageRecord("a", "a", str(tmp_path / "a.jpg"), 400, 200),
              ImageRecord("gone", "g", str(tmp_path / "missing.jpg"), 10, 10)]
    found = ensure_thumbnails(paths, images, side=64)
    assert found == {"a": thumb_path(paths, "a", 64), "gone": None}
    thumb = open_thumbnail(found["a"])
    assert thumb.size == (64, 32)
    stamp = found["a"].stat().st_mtime_ns
    (tmp_path / "a.jpg").unlink()  # the original is not read again
    assert ensure_thumbnails(paths, images[:1], side=64)["a"].stat().st_mtime_ns == stamp
    assert open_thumbnail(None) is None


def test_region_crops_show_the_region_and_are_made_once(tmp_path: Path):
    picture = Image.new("RGB", (400, 200), (255, 255, 255))
    picture.paste((200, 30, 30), (100, 50, 200, 150))  # a red square: the detail
    picture.save(tmp_path / "a.png")
    paths = ProjectPaths(tmp_path / "p.duckdb")
    image = ImageRecord("a", "a", str(tmp_path / "a.png"), 400, 200)
    gone = ImageRecord("gone", "g", str(tmp_path / "missing.jpg"), 10, 10)
    regions = [(image, Box(100, 50, 200, 150)), (image, Box(0, 0, 100, 50)), (gone, Box(0, 0, 5, 5))]
    found = ensure_region_crops(paths, regions, side=32)
    assert found == [region_crop_path(paths, "a", Box(100, 50, 200, 150), 32),
                     region_crop_path(paths, "a", Box(0, 0, 100, 50), 32), None]
    red, white = open_thumbnail(found[0]), open_thumbnail(found[1])
    assert red.size == (32, 32) and white.size == (32, 16)
    assert red.getpixel((16, 16))[0] > 180 and red.getpixel((16, 16))[1] < 80  # the detail itself
    assert min(white.getpixel((16, 8))) > 230
    stamp = found[0].stat().st_mtime_ns
    (tmp_path / "a.png").unlink()  # made once: the original is not read again
    assert ensure_region_crops(paths, regions[:1], side=32)[0].stat().st_mtime_ns == stamp
