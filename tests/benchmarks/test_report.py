"""benchmarks/report.py: the README's figure table is the one the checked-in JSON renders to."""

from __future__ import annotations

import json

import pytest

from benchmarks.report import END, JSON_PATH, README, START, render, rewrite_readme

REPORT = {"measured": "2026-01-01 00:00 UTC", "machine": "x86_64, 2 CPU cores, load average 1.0",
          "command": "python -m benchmarks.report --project artminer.duckdb", "images": 60, "queries": 43,
          "model": "effnet-lite0", "oneshot_map": 0.449, "oneshot_top1": 0.721, "oneshot_map_rerank": 0.41,
          "per_class": {"cat": 0.5, "dog": 0.398}, "discovery": {}, "shortlist_recall": {"5": 0.32, "10": 0.54},
          "eval_seconds": 95}


def test_readme_table_matches_the_checked_in_report():
    block = render(json.loads(JSON_PATH.read_text()))
    assert block in README.read_text(), "README figures are stale: run python -m benchmarks.report --from-json"


def test_render_known_answer_and_rewrite_between_markers():
    block = render(REPORT)
    assert block.startswith(START) and block.endswith(END)
    assert "| one-shot mAP on the demo (IoU > 0.3), top-1 | **0.449**, top-1 0.721 |" in block
    assert "| one-shot AP per class | cat 0.500, dog 0.398 |" in block
    assert "| shortlist recall of ground-truth pairs, k = 5 / 10 | 0.32 / 0.54 |" in block
    text = f"intro\n{START}\nold\n{END}\noutro\n"
    assert rewrite_readme(text, block) == f"intro\n{block}\noutro\n"
    with pytest.raises(ValueError, match="block"):
        rewrite_readme("no markers here", block)
