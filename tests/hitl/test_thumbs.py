"""Thumbnails are written once into the project's data folder and read back from there."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from db.records import ImageRecord
from hitl.project import ProjectPaths
from hitl.thumbs import ensure_thumbnails, open_thumbnail, thumb_path


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
