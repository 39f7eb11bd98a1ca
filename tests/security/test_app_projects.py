"""Hole 8: the app opens only the project it was started with, or project files under the
projects folder it was started with; not any path a URL or the sidebar names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.project_fixture import build_map_project

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Path:
    return build_map_project(tmp_path_factory.mktemp("served"), n=20)


def _app(monkeypatch, started: Path, folder: Path | None = None, **params) -> AppTest:
    monkeypatch.setenv("ARTMINER_PROJECT", str(started))
    if folder is None:
        monkeypatch.delenv("ARTMINER_PROJECTS", raising=False)
    else:
        monkeypatch.setenv("ARTMINER_PROJECTS", str(folder))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["annotator"] = "tester"
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def test_a_url_cannot_open_another_file(served: Path, tmp_path: Path, monkeypatch) -> None:
    other = tmp_path / "etc" / "victim.duckdb"
    other.parent.mkdir()
    shutil.copyfile(served, other)
    at = _app(monkeypatch, served, project=str(other))
    assert not at.exception
    assert at.session_state["project_path"] == str(served.resolve())
    assert not (other.parent / "victim.duckdb.lock").exists()  # never even opened


def test_the_sidebar_cannot_open_another_file(served: Path, tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "private.duckdb"
    shutil.copyfile(served, outside)
    at = _app(monkeypatch, served)
    at.text_input(key="project_input").input(str(outside))
    at.button(key="open_project").click().run()
    assert any("Not a project this app serves" in e.value for e in at.error)
    assert at.session_state["project_path"] == str(served.resolve())


def test_projects_under_the_projects_folder_open(served: Path, tmp_path: Path,
                                                 monkeypatch) -> None:
    folder = tmp_path / "projects"
    (folder / "b").mkdir(parents=True)
    second = folder / "b" / "second.duckdb"
    shutil.copyfile(served, second)
    at = _app(monkeypatch, served, folder=folder, project=str(second))
    assert not at.exception and at.session_state["project_path"] == str(second.resolve())
    at = _app(monkeypatch, served, folder=folder, project=str(folder / ".." / "x.duckdb"))
    assert at.session_state["project_path"] == str(served.resolve())
