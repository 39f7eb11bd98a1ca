"""Hole 9: a hand-written lock file is data, not trust.

Its log must lie in the project's data folder (else the lock is invalid, hence stale),
and "Stop this round" signals only a training process, never the pid a lock names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hitl.jobs import (
    Job,
    _process_start,
    latest_log,
    lock_path,
    read_lock,
    running_job,
    stop_training,
    tail_log,
)
from hitl.project import ProjectPaths


@pytest.fixture
def paths(tmp_path: Path) -> ProjectPaths:
    paths = ProjectPaths((tmp_path / "artminer.duckdb").resolve())
    paths.data_dir.mkdir(parents=True)
    return paths


def _write_lock(paths: ProjectPaths, **fields) -> None:
    data = {"pid": os.getpid(), "started": "2026-01-01T00:00:00+00:00",
            "proc_start": _process_start(os.getpid()), **fields}
    lock_path(paths).write_text(json.dumps(data))


def test_a_lock_naming_a_log_outside_the_project_is_stale(paths: ProjectPaths,
                                                          tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    _write_lock(paths, log=str(secret))
    assert read_lock(paths) is None
    os.utime(lock_path(paths), (0, 0))  # not being written right now
    assert running_job(paths) is None and not lock_path(paths).exists()
    _write_lock(paths, log=str(paths.data_dir / "logs" / ".." / ".." / "secret.txt"))
    assert read_lock(paths) is None  # '..' does not get out either
    _write_lock(paths, log=str(paths.logs / "train-1.log"))
    assert read_lock(paths).log_path == paths.logs / "train-1.log"


@pytest.mark.parametrize("pid", [0, 1, -1])
def test_a_lock_naming_pid_0_1_or_negative_is_stale(paths: ProjectPaths, pid: int) -> None:
    _write_lock(paths, pid=pid)
    assert read_lock(paths) is None


def test_stop_signals_only_a_training_process(paths: ProjectPaths) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                                 start_new_session=True)
    try:
        time.sleep(0.2)
        crafted = Job(bystander.pid, datetime.now(UTC),
                      None, ("train",), _process_start(bystander.pid))
        assert stop_training(crafted) is False
        time.sleep(0.2)
        assert bystander.poll() is None  # still alive: not signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_latest_log_ignores_planted_links(paths: ProjectPaths, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    paths.logs.mkdir()
    (paths.logs / "train-20200101T000000Z.log").write_text("iteration 1/2\n")
    (paths.logs / "train-29990101T000000Z.log").symlink_to(secret)
    last = latest_log(paths)
    assert last.name == "train-20200101T000000Z.log" and "private" not in tail_log(last)
