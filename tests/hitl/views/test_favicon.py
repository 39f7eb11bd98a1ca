"""The favicon is a local picture, never a name the browser resolves online."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from hitl.views.favicon import favicon

ROOT = Path(__file__).resolve().parents[3]


def test_favicon_is_two_coloured_frames():
    icon = favicon(64)
    assert icon.size == (64, 64) and icon.mode == "RGBA"
    pixels = np.asarray(icon)
    assert pixels[2, 2, 3] == 0  # transparent corner
    assert tuple(pixels[4, 20]) == (220, 50, 47, 255)  # red frame's top edge
    assert tuple(pixels[60, 40]) == (29, 120, 230, 255)  # blue frame's bottom edge
    with pytest.raises(ValueError, match="16 pixels"):
        favicon(8)


def test_app_entry_uses_the_local_favicon():
    tree = ast.parse((ROOT / "streamlit_app.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "attr", "") == "set_page_config"]
    (call,) = calls
    icon = next(k.value for k in call.keywords if k.arg == "page_icon")
    assert isinstance(icon, ast.Call) and getattr(icon.func, "id", "") == "favicon"
