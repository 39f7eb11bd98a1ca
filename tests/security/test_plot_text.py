"""Hole 6: no user-supplied string reaches a plotly figure as markup.

Known answers for the helper, then the real Map page (AppTest) coloured by artist and by
medium on a project whose metadata holds plotly's renderable HTML subset: every string in
the figure's JSON that came from metadata is escaped.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from db import Store
from hitl.plot_text import plot_lines, plot_text
from tests.app.project_fixture import build_map_project

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")
MARKUP = ['<a href="javascript:alert(1)">x</a>', "<b>bold</b>", '<span style="font-size:99px">s</span>']


def test_plot_text_known_answers() -> None:
    assert plot_text('<a href="j">x</a>') == "&lt;a href=&quot;j&quot;&gt;x&lt;/a&gt;"
    assert plot_text("Bruegel & sons") == "Bruegel &amp; sons"
    assert plot_text(1567) == "1567"
    assert plot_lines(["<b>t</b>", None, "", "c. 1560"]) == "&lt;b&gt;t&lt;/b&gt;<br>c. 1560"


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


@pytest.mark.parametrize("by", ["artist", "medium"])
def test_map_figure_shows_markup_as_text(tmp_path: Path, monkeypatch, by: str) -> None:
    project = build_map_project(tmp_path, n=30)
    with Store(project) as store:
        images = store.list_images()
        store.update_image_metadata([replace(im, artist=MARKUP[i % 3], medium=MARKUP[i % 3],
                                             title=MARKUP[(i + 1) % 3])
                                     for i, im in enumerate(images)])
    monkeypatch.setenv("ARTMINER_PROJECT", str(project))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["annotator"] = "tester"
    at.switch_page("pages/map.py").run()
    at.selectbox(key="map_colour").select(by).run()
    assert not at.exception
    (chart,) = at.get("plotly_chart")
    strings = _strings(json.loads(chart.proto.spec))
    names = {s for s in strings if "&lt;" in s}
    assert any(plot_text(MARKUP[0]) in s for s in names)  # the legend and hover are there ...
    for s in strings:  # ... and no metadata markup is left raw anywhere
        assert "<a " not in s and "<b>" not in s and "<span" not in s, s
