"""The thumbnail atlas: cells, mapping and the view that shows every point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from hitl.views.atlas import (
    MAX_ATLAS_SIDE,
    PLACEHOLDER,
    build_atlas,
    cell_size,
    hover_sprite,
    view_state,
)


def test_cell_size_fits_the_sheet():
    assert cell_size(10) == 64
    assert cell_size(10_000) == MAX_ATLAS_SIDE // 100 == 40
    assert cell_size(10_000_000) == 16
    assert math.ceil(math.sqrt(10_000)) * cell_size(10_000) <= MAX_ATLAS_SIDE


def test_atlas_cells_mapping_and_placeholder():
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    blue = Image.new("RGB", (10, 30), (0, 0, 255))
    sheet, mapping = build_atlas([red, None, blue], cell=16)
    assert sheet.size == (32, 32)  # 2 columns x 2 rows
    assert mapping["0"] == {"x": 0, "y": 0, "width": 16, "height": 8, "mask": False}
    assert mapping["1"] == {"x": 16, "y": 0, "width": 16, "height": 16, "mask": False}
    assert mapping["2"] == {"x": 0, "y": 16, "width": 5, "height": 16, "mask": False}
    pixels = np.asarray(sheet)
    assert tuple(pixels[4, 4]) == (255, 0, 0)
    assert tuple(pixels[8, 24]) == PLACEHOLDER
    assert tuple(pixels[24, 2]) == (0, 0, 255)


def test_view_state_frames_the_points():
    state = view_state([0.0, 10.0], [0.0, 4.0], width_px=800)
    assert state["target"] == [5.0, 2.0, 0.0]
    assert 2 ** state["zoom"] * 10 == pytest.approx(640)
    assert view_state([], [])["zoom"] == 0.0


def test_hover_sprite_enlarges_one_cell():
    cell = {"x": 32, "y": 16, "width": 16, "height": 8, "mask": False}
    css = hover_sprite(cell, (64, 48), side=160)  # x10
    assert css == {"hw": 160, "hh": 80, "hx": -320, "hy": -160, "sw": 640, "sh": 480}
