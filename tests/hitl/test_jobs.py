"""Background training jobs: one at a time, stale locks cleaned, logs tailed.

The child processes are harmless Python one-liners standing in for `artminer train`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hitl.jobs import (
    TrainingBusyError,
    acquire_training_lock,
    latest_log,
    lock_path,
    read_lock,
    release_training_lock,
    running_job,
    start_training,
    stop_training,
    tail_log,
    train_command,
)
from hitl.project import ProjectPaths


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "p.duckdb"
    path.touch()
    return path


def _paths(project: Path) -> ProjectPaths:
    return ProjectPaths(project.resolve())


def _wait_gone(paths: ProjectPaths, deadline_s: float = 30.0) -> None:
    """Poll until no job runs (a deadline only against a hang, not a timing assert)."""
    end = time.monotonic() + deadline_s
    while running_job(paths) is not None:
        if time.monotonic() > end:
            raise AssertionError("job still running")
        time.sleep(0.05)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_one_round_at_a_time_and_lock_cleared_after(project):
    paths = _paths(project)
    job = start_training(project, command=_python("import time; print('step 1', flush=True); time.sleep(1.5)"))
    running = running_job(paths)
    assert running is not None and running.pid == job.pid
    assert job.log_path.parent == paths.logs and job.log_path.name.startswith("train-")
    with pytest.raises(TrainingBusyError, match="already running"):
        start_training(project, command=_python("pass"))
    _wait_gone(paths)
    assert not lock_path(paths).exists()
    assert "step 1" in tail_log(job)
    assert latest_log(paths) == job.log_path


def test_stale_lock_of_dead_process_is_cleaned(project):
    paths = _paths(project)
    dead = subprocess.Popen(_python("pass"))
    dead.wait()
    acquire_training_lock(paths, pid=dead.pid)
    assert lock_path(paths).exists()
    assert running_job(paths) is None
    assert not lock_path(paths).exists()
    job = acquire_training_lock(paths)  # free again
    assert job.pid == os.getpid()
    assert release_training_lock(paths)


def test_reused_pid_is_stale(project):
    paths = _paths(project)
    lock_path(paths).parent.mkdir(parents=True)
    # our own (live) pid, but a start time that is not ours: the pid was reused
    lock_path(paths).write_text(json.dumps({"pid": os.getpid(), "started": "2020-01-01T00:00:00+00:00",
                                            "proc_start": "1"}))
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc: start times cannot be compared here")
    assert running_job(paths) is None


def test_cli_lock_blocks_the_app_and_only_the_holder_releases(project):
    paths = _paths(project)
    other = subprocess.Popen(_python("import time; time.sleep(30)"))
    try:
        acquire_training_lock(paths, pid=other.pid)
        with pytest.raises(TrainingBusyError):
            start_training(project, command=_python("pass"))
        with pytest.raises(TrainingBusyError):
            acquire_training_lock(paths)
        assert not release_training_lock(paths)  # not ours
        assert read_lock(paths).pid == other.pid
        assert release_training_lock(paths, pid=other.pid)
    finally:
        other.kill()
        other.wait()


def test_lock_is_reentrant_for_its_holder(project):
    paths = _paths(project)
    first = acquire_training_lock(paths)
    again = acquire_training_lock(paths, args=["--iterations", "5"])
    assert first.pid == again.pid == read_lock(paths).pid
    assert read_lock(paths).args == ("--iterations", "5")
    assert release_training_lock(paths)
    assert not release_training_lock(paths)


def test_child_started_by_the_app_takes_the_lock_over(project):
    """The `artminer train` path: the child calls acquire/release itself."""
    paths = _paths(project)
    code = ("import os, sys; from pathlib import Path; from hitl.jobs import *; "
            "from hitl.project import ProjectPaths; p = ProjectPaths(Path(sys.argv[1])); "
            "job = acquire_training_lock(p); print('got', job.pid == os.getpid(), flush=True); "
            "import time; time.sleep(0.5); print('released', release_training_lock(p), flush=True)")
    job = start_training(project, command=[*_python(code), str(paths.project)])
    _wait_gone(paths)
    deadline = time.monotonic() + 20  # the lock goes a moment before the child's last line is written
    while "released" not in tail_log(job) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "got True" in tail_log(job) and "released True" in tail_log(job)
    assert not lock_path(paths).exists()


def test_stop_training_ends_the_job(project):
    paths = _paths(project)
    job = start_training(project, command=_python("import time; time.sleep(60)"))
    stop_training(job)
    _wait_gone(paths)


def test_tail_log_keeps_last_lines_and_latest_progress_state(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "it 1/3\rit 2/3\rit 3/3\n")
    assert tail_log(log, 3).splitlines() == ["line 98", "line 99", "it 3/3"]
    assert tail_log(tmp_path / "missing.log") == ""
    assert tail_log(None) == ""


def test_train_command_runs_the_cli_verb(project):
    cmd = train_command(project, ["--iterations", "3"])
    assert cmd[1:4] == ["-m", "hitl.cli", "train"]
    assert cmd[-4:] == ["--project", str(project), "--iterations", "3"]
