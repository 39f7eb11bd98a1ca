"""Holes 3-5: decompression bombs, wrong-typed VIA files, CSV formula injection."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.hostile_server import png_bomb
from db import ImageRecord, Store
from engine.images import DEFAULT_MAX_PIXELS, ImageReadError, load_rgb, max_pixels
from engine.types import Box, ModelRef, PairMatch
from hitl.export import export_links
from hitl.formats.csv_safe import safe_cell
from hitl.formats.image_files import MAX_PIXELS_SETTING
from hitl.ingest import BadImage, ingest_paths, probe_image, via_regions
from hitl.project import open_project
from hitl.views.view_export import export_view


def _picture(path: Path, size: tuple[int, int], fmt: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)
    return path


# ---------------------------------------------------------------------- hole 3: bombs


def test_png_bomb_is_refused_at_ingest_with_a_note(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")
    good = _picture(tmp_path / "good.jpg", (40, 30))
    assert bomb.stat().st_size < 200_000
    with Store(tmp_path / "p.duckdb") as store:
        report = ingest_paths(store, [str(bomb), str(good)], progress=False)
    assert len(report.added) == 1
    ((source, reason),) = [(s.source, s.reason) for s in report.skipped]
    assert source.endswith("bomb.png")
    assert "30000x30000 = 900,000,000 pixels is over" in reason and f"{DEFAULT_MAX_PIXELS:,}" in reason


def test_png_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="pixel limit"):
        load_rgb(bomb, max_side=256)  # the thumbnail and feature path


def test_the_pixel_limit_is_a_project_setting(tmp_path: Path) -> None:
    image = _picture(tmp_path / "img.png", (100, 80))
    project = tmp_path / "p.duckdb"
    with Store(project) as store:
        store.set_setting(MAX_PIXELS_SETTING, "5000")
        report = ingest_paths(store, [str(image)], progress=False)
    assert report.added == () and "over the project's 5,000-pixel limit" in report.skipped[0].reason
    store, _ = open_project(project)  # opening a project makes decoding obey it too
    try:
        assert max_pixels() == 5000
        with pytest.raises(ImageReadError, match="5,000-pixel limit"):
            load_rgb(image)
    finally:
        store.close()
        open_project(tmp_path / "default.duckdb", create=True)[0].close()
    assert max_pixels() == DEFAULT_MAX_PIXELS
    with pytest.raises(BadImage, match="10,000-pixel limit"):
        probe_image(_picture(tmp_path / "big.png", (200, 100)), max_pixels=10_000)


def test_large_jpegs_decode_reduced(tmp_path: Path) -> None:
    """JPEG ``draft`` decodes at 1/8 scale: the pixel limit applies to what is decoded."""
    jpeg = _picture(tmp_path / "big.jpg", (1600, 1200))
    png = _picture(tmp_path / "big.png", (1600, 1200))
    small = load_rgb(jpeg, max_side=200, pixel_limit=150_000)  # drafted to 400x300, then resized
    assert small.shape == (150, 200, 3)
    with pytest.raises(ImageReadError, match="pixel limit"):
        load_rgb(png, max_side=200, pixel_limit=150_000)  # PNG has no reduced decode


# ---------------------------------------------------------------------- hole 4: VIA types


@pytest.mark.parametrize("entry, problem", [
    ({"filename": "a.jpg", "regions": "rect"}, "regions is a str"),
    ({"filename": "a.jpg", "regions": 7}, "regions is a int"),
    ({"filename": "a.jpg", "regions": ["not an object"]}, "must be an object, not a str"),
    ({"filename": "a.jpg", "regions": [{"shape_attributes": "rect"}]}, "shape_attributes is not"),
    ({"filename": "a.jpg", "regions": [{"shape_attributes": {"name": "rect", "x": "1", "y": 0,
                                                             "width": 5, "height": 5}}]},
     "x is '1', not a number"),
    ({"filename": "a.jpg", "regions": [{"shape_attributes": {
        "name": "polygon", "all_points_x": 3, "all_points_y": [1]}}]}, "not a list of numbers"),
    ({"filename": "a.jpg", "regions": [{"shape_attributes": {"name": "rect", "x": 0, "y": 0,
                                                             "width": 5, "height": 5},
                                        "region_attributes": ["x"]}]},
     "region_attributes is not an object"),
    ({"filename": 12, "regions": []}, "without a filename"),
])
def test_wrong_typed_via_entries_are_notes(entry: dict, problem: str) -> None:
    good = {"filename": "b.jpg", "regions": [{"shape_attributes": {
        "name": "rect", "x": 1, "y": 2, "width": 3, "height": 4}, "region_attributes": {}}]}
    doc = {"_via_img_metadata": {"a": entry, "b": good}}
    found, problems = via_regions(doc, "v.json")
    assert [(name, box) for name, box, _, _ in found] == [("b.jpg", Box(1, 2, 4, 6))]
    assert len(problems) == 1 and problem in problems[0]


def test_wrong_typed_via_file_does_not_stop_ingest(tmp_path: Path) -> None:
    via = tmp_path / "v.json"
    via.write_text(json.dumps({"_via_img_metadata": {"a": {"filename": "a.jpg", "regions": "x"}}}))
    image = _picture(tmp_path / "a.jpg", (20, 20))
    with Store(tmp_path / "p.duckdb") as store:
        report = ingest_paths(store, [str(image), str(via)], progress=False)
    assert len(report.added) == 1 and any("regions is a str" in n for n in report.notes)


# ---------------------------------------------------------------------- hole 5: CSV injection

HOSTILE = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
           "\tleading tab", "\rcarriage"]


def test_safe_cell_known_answers() -> None:
    assert [safe_cell(v) for v in HOSTILE] == ["'" + v for v in HOSTILE]
    assert [safe_cell(v) for v in ("-0.5", "+3", "1e-3", "plain", "", 7, None)] == [
        "-0.5", "+3", "1e-3", "plain", "", 7, None]
    assert safe_cell(safe_cell("=1+1")) == "'=1+1"  # idempotent


@pytest.fixture
def hostile_project() -> tuple[Store, list[int]]:
    store = Store(":memory:")
    images = [ImageRecord(image_id=k * 16, sha256=k * 64, path=f"/c/{k}.jpg", width=100,
                          height=100, title=HOSTILE[i]) for i, k in enumerate("ab")]
    store.add_images(images)
    store.add_model(ModelRef("m", "effnet-lite0"))
    run = store.start_run("m", {})
    aff = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
    ids = store.add_links(run, [PairMatch("a" * 16, "b" * 16, Box(1, 1, 9, 9), Box(2, 2, 8, 8),
                                          aff, 0.5, 9)])
    store.add_verdict(ids[0], "confirm", HOSTILE[3], note=HOSTILE[4])
    return store, ids


def _cells(text: str) -> dict[str, str]:
    (row,) = list(csv.DictReader(io.StringIO(text)))
    return row


def test_csv_export_neutralises_formulas(hostile_project, tmp_path: Path) -> None:
    store, _ = hostile_project
    export_links(store, "csv", tmp_path / "links.csv")
    row = _cells((tmp_path / "links.csv").read_text(encoding="utf-8"))
    assert row["title_a"] == "'" + HOSTILE[0] and row["title_b"] == "'" + HOSTILE[1]
    assert row["annotator"] == "'" + HOSTILE[3] and row["note"] == "'" + HOSTILE[4]
    assert row["box_a_x0"] == "1" and row["score"] == "0.5"


def test_propagation_csv_download_neutralises_formulas(hostile_project) -> None:
    store, ids = hostile_project
    row = _cells(export_view(store, "csv", ids).decode("utf-8"))
    assert row["title_a"] == "'" + HOSTILE[0] and row["annotator"] == "'" + HOSTILE[3]
