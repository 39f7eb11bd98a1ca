"""A background round's progress: tqdm redraws become log lines the training page parses back."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tqdm import tqdm

from db.store import Store
from engine.types import ModelRef
from hitl.jobs import (
    acquire_training_lock,
    read_lock,
    release_training_lock,
    running_job,
    settle_orphan_rounds,
    start_training,
    tail_log,
)
from hitl.progress import BAR_FORMAT, STARTING, LineStream, Progress, latest_progress, phase_line
from hitl.project import ProjectPaths
from hitl.views.round_history import last_round_start, round_state


def _wait_gone(paths: ProjectPaths, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while running_job(paths) is not None:
        if time.monotonic() > end:
            raise AssertionError("job still running")
        time.sleep(0.05)


def test_line_stream_turns_every_redraw_into_a_line():
    out = io.StringIO()
    stream = LineStream(out)
    stream.write("\rfeatures 1/3")
    stream.write("\rfeatures 2/3")
    stream.write("\rfeatures 3/3\n")
    stream.write("done\n")
    stream.write("\r")
    assert out.getvalue() == "features 1/3\nfeatures 2/3\nfeatures 3/3\ndone\n"


def test_a_print_after_an_open_redraw_gets_its_own_line_and_escapes_go():
    out = io.StringIO()
    stream = LineStream(out)
    stream.write("\rprogress | training | 0/200 | ETA ? | ")  # tqdm leaves the line open
    stream.write("phase | 1/5 | measuring the parent model")
    stream.write("\n")
    stream.write("\rprogress | features | 1/8 | ETA ? | \x1b[A")
    stream.write("\rprogress | features | 2/8 | ETA ? | ")
    assert out.getvalue().splitlines() == [
        "progress | training | 0/200 | ETA ? | ", "phase | 1/5 | measuring the parent model",
        "progress | features | 1/8 | ETA ? | ", "progress | features | 2/8 | ETA ? | "]


def test_tqdm_bar_lines_parse_back_to_phase_done_total():
    out = io.StringIO()
    print(phase_line(2, 5, "loading the training images"), file=out)
    bar = tqdm(total=8, desc="features", file=LineStream(out), bar_format=BAR_FORMAT, mininterval=0)
    for _ in range(3):
        bar.update(1)
    found = latest_progress(out.getvalue())
    bar.close()
    assert found.phase == "loading the training images" and (found.index, found.phases) == (2, 5)
    assert (found.step, found.done, found.total) == ("features", 3, 8)
    assert found.eta is not None and found.fraction == pytest.approx(3 / 8)


def test_a_new_phase_forgets_the_previous_bar():
    text = "\n".join([phase_line(1, 5, "measuring the parent model"),
                      "progress | features | 60/60 | ETA 00:00 | ",
                      phase_line(2, 5, "loading the training images")])
    assert latest_progress(text) == Progress("loading the training images", 2, 5)
    assert latest_progress("plain output\nwithout progress") is None
    unknown = latest_progress("progress | queries | 4/? | ETA ? | ")
    assert (unknown.total, unknown.eta, unknown.fraction) == (None, None, None)


def test_app_round_writes_progress_lines_and_keeps_its_log_when_the_child_takes_the_lock(tmp_path):
    project = tmp_path / "p.duckdb"
    project.touch()
    paths = ProjectPaths(project.resolve())
    # stands in for `artminer train`: takes the lock over, then draws a tqdm bar to stderr
    code = ("import sys, time; from pathlib import Path; from tqdm import tqdm; "
            "from hitl.jobs import *; from hitl.progress import LineStream, phase_line; "
            "from hitl.project import ProjectPaths; p = ProjectPaths(Path(sys.argv[1])); "
            "acquire_training_lock(p); sys.stderr = LineStream(sys.stderr); "
            "print(phase_line(3, 5, 'training'), file=sys.stderr); "
            "[time.sleep(0.01) for _ in tqdm(range(5), desc='training')]; "
            "print('log kept', read_lock(p).log_path is not None, flush=True); release_training_lock(p)")
    job = start_training(project, command=[sys.executable, "-c", code, str(paths.project)])
    _wait_gone(paths)
    text = tail_log(job, 200)
    assert text.splitlines()[0] == phase_line(0, 0, STARTING)  # the app's line, before the child's
    assert "log kept True" in text
    found = latest_progress(text)
    assert (found.phase, found.step, found.done, found.total) == ("training", "training", 5, 5)


def test_takeover_keeps_the_parents_log_and_start(tmp_path):
    paths = ProjectPaths((tmp_path / "p.duckdb").resolve())
    log = paths.logs / "train-x.log"  # a lock naming a log outside artminer-data/ is stale (hardening)
    log.parent.mkdir(parents=True)
    parent_job = acquire_training_lock(paths, pid=os.getppid(), log_path=log)
    child_job = acquire_training_lock(paths)  # we are the "child" of our parent process
    assert child_job.pid == os.getpid() and child_job.log_path == log
    assert read_lock(paths).log_path == log
    assert child_job.started == parent_job.started
    assert release_training_lock(paths)


def _store_with_rounds(n: int) -> Store:
    store = Store(":memory:")
    store.add_model(ModelRef("m", "m"))
    for _ in range(n):
        store.add_round("m", {})
    return store


def test_killed_round_is_settled_as_failed(tmp_path):
    paths = ProjectPaths((tmp_path / "p.duckdb").resolve())
    store = _store_with_rounds(2)
    store.update_round(1, status="done")
    assert settle_orphan_rounds(store, paths) == [2]  # no lock: nobody runs round 2
    settled = store.get_round(2)
    assert settled.status == "failed" and "process is gone" in settled.error
    assert settle_orphan_rounds(store, paths) == []


def test_running_round_of_a_live_holder_is_left_alone(tmp_path):
    paths = ProjectPaths((tmp_path / "p.duckdb").resolve())
    store = _store_with_rounds(1)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        acquire_training_lock(paths, pid=other.pid)
        assert settle_orphan_rounds(store, paths) == []
        assert store.get_round(1).status == "running"
    finally:
        other.kill()
        other.wait()


def test_counts_start_at_the_last_finished_round_and_stopped_is_named():
    store = _store_with_rounds(3)
    store.update_round(1, status="done")
    store.update_round(2, status="failed", error="stopped: signal SIGTERM")
    store.update_round(3, status="failed", error="RuntimeError: out of memory")
    rounds = store.list_rounds()
    assert last_round_start(rounds) == rounds[0].started
    assert [round_state(r) for r in rounds] == ["done", "stopped", "failed"]
    assert last_round_start(rounds[1:]) is None


def test_sigterm_unwinds_a_round_as_stopped(tmp_path):
    """The handler `artminer train` installs turns SIGTERM into `RoundStopped`."""
    code = ("import signal, time; from hitl.cli import _stop_on_sigterm; from hitl.rounds import RoundStopped\n"
            "signal.signal(signal.SIGTERM, _stop_on_sigterm)\n"
            "try:\n    print('ready', flush=True); time.sleep(60)\n"
            "except RoundStopped as err:\n    print('stopped', err, flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=60)
    assert out.strip() == "stopped signal SIGTERM"
