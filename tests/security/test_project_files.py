"""Hole 11 (part): a file that is not an ArtMiner project is bad input: exit 2 and one
line from the command line, a message (no traceback) in the app."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from hitl.cli import main
from hitl.project import ProjectFileError, open_project

APP = str(Path(__file__).resolve().parents[2] / "streamlit_app.py")


@pytest.fixture
def bad_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database")
    foreign = tmp_path / "foreign.duckdb"
    with duckdb.connect(str(foreign)) as con:
        con.execute("CREATE TABLE invoices (n INTEGER)")
    return {"text": text, "foreign": foreign}


@pytest.mark.parametrize("kind, reason", [("text", "not a valid DuckDB database file"),
                                          ("foreign", "not an ArtMiner project")])
def test_bad_project_files_exit_2_with_one_line(bad_files, kind: str, reason: str,
                                                tmp_path: Path, capsys) -> None:
    with pytest.raises(ProjectFileError, match=reason):
        open_project(bad_files[kind])
    assert main(["export", "--project", str(bad_files[kind]), "--format", "csv",
                 "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_app_shows_a_message_not_a_traceback(bad_files, monkeypatch) -> None:
    monkeypatch.setenv("ARTMINER_PROJECT", str(bad_files["text"]))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert any("Cannot open the project file" in e.value for e in at.error)
