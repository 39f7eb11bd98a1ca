"""Hole 13: counts must be positive whole numbers, and export will not write into a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from db import Store
from hitl.cli import EXIT_BAD_INPUT, main


@pytest.mark.parametrize("argv", [
    ["detect", "q.jpg", "--box", "0,0,1,1", "--collection", ".", "--top-k", "0"],
    ["detect", "q.jpg", "--box", "0,0,1,1", "--collection", ".", "--top-k", "-1"],
    ["detect", "q.jpg", "--box", "0,0,1,1", "--collection", ".", "--top-k", "1e20"],
    ["detect", "q.jpg", "--box", "0,0,1,1", "--collection", ".", "--rerank-top", "-5"],
    ["discover", "--k", "0"],
    ["train", "--iterations", "-3"],
    ["ingest", "x", "--download-deadline", "0"],
    ["ingest", "x", "--max-download-mb", "nan"],
])
def test_bad_counts_are_usage_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "error: argument" in capsys.readouterr().err


def test_export_into_a_folder_is_refused_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    project = tmp_path / "p.duckdb"
    Store(project).close()
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", "--project", str(project), "--format", "csv", "--out", str(out)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert list(tmp_path.glob("*.part")) == [] and list(out.iterdir()) == []
