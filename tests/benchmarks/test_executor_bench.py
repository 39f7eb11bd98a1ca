"""benchmarks/executor.py: its measuring helpers on a tiny process tree (the discovery runs
themselves are the benchmark, minutes long)."""

from __future__ import annotations

import os
import sys

import pytest

from benchmarks.executor import TimedExecutor, _tree, run_measured


def test_run_measured_returns_the_last_json_line_and_the_trees_peak_memory():
    # A parent holding ~64 MB and a child process holding ~64 MB more, alive together.
    code = ("import json, subprocess, sys, time; a = bytearray(64 << 20); "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; b = bytearray(64 << 20); time.sleep(2.5)']); "
            "time.sleep(2.5); c.wait(); print('noise'); print(json.dumps({'ok': 1}))")
    result, peak = run_measured([sys.executable, "-c", code], dict(os.environ))
    assert result == {"ok": 1}
    assert peak > 100 << 20  # both processes counted


def test_run_measured_reports_a_failed_run():
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_measured([sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))


def test_tree_holds_the_process_itself():
    assert _tree(os.getpid())[0] == os.getpid()



def test_timed_executor_sums_every_call_of_a_stage():
    # Discovery verifies twice (the shortlist's pairs, then the two-hop candidates).
    class Inner:
        def verify_and_store(self, *args):
            return len(args[3])

    timed = TimedExecutor(Inner())
    assert timed.verify_and_store(None, None, None, [("a", "b"), ("a", "c")]) == 2
    first = timed.seconds["verification"]
    timed.verify_and_store(None, None, None, [("b", "c")])
    assert timed.pairs == 3 and timed.seconds["verification"] >= first
