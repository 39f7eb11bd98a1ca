"""Several writers on one project file: threads of the app, a discovery process, a reader.

Figures are printed (run with ``-s``): how many verdicts, links and reads went through.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from db import Store, StoreBusyError
from engine.types import IDENTITY_AFFINE, Box, ModelRef, PairMatch

WORKER = Path(__file__).with_name("concurrency_worker.py")
ROOT = Path(__file__).resolve().parents[2]
THREADS, PER_THREAD = 8, 250
DISCOVERY_BATCHES = 20  # x 50 links


def _spawn(mode: str, project: Path, n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(project), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


def _project(tmp_path: Path, n_links: int = 10) -> tuple[Store, list[int]]:
    store = Store(tmp_path / "artminer.duckdb")
    store.add_model(ModelRef("m", "effnet-lite0"))
    run = store.start_run("m", {})
    matches = [PairMatch("x", f"y{i}", Box(0, 0, 5, 5), Box(0, 0, 5, 5), IDENTITY_AFFINE, 1.0, 4)
               for i in range(n_links)]
    return store, store.add_links(run, matches)


def _verdict_thread(store: Store, t: int, link_ids: list[int], out: list, errors: list) -> None:
    try:
        for i in range(PER_THREAD):
            verdict = ("confirm", "reject", "unsure")[i % 3]
            vid = store.add_verdict(link_ids[i % len(link_ids)], verdict, f"expert{t}",
                                    note=f"t{t}-{i}")
            out.append(vid)
    except Exception as err:  # reported by the main thread
        errors.append(err)


def test_threads_and_processes_lose_no_verdict(tmp_path: Path) -> None:
    store, link_ids = _project(tmp_path)
    project = tmp_path / "artminer.duckdb"
    discoverer = _spawn("discover", project, DISCOVERY_BATCHES)
    reader = _spawn("read", project, 0)

    returned: list[int] = []
    errors: list[Exception] = []
    threads = [threading.Thread(target=_verdict_thread, args=(store, t, link_ids, returned, errors))
               for t in range(THREADS)]
    started = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    verdict_s = time.monotonic() - started
    threads_done = time.time()
    disc_out, disc_err = discoverer.communicate(timeout=120)
    (project.parent / "artminer.duckdb.stop").touch()
    read_out, read_err = reader.communicate(timeout=120)

    assert not errors, errors[:3]
    assert discoverer.returncode == 0, disc_err
    assert reader.returncode == 0, read_err
    logged = store.list_verdicts()
    notes = [v.note for v in logged]
    expected = {f"t{t}-{i}" for t in range(THREADS) for i in range(PER_THREAD)}
    assert len(logged) == THREADS * PER_THREAD
    assert len(set(notes)) == len(notes) and set(notes) == expected
    assert sorted(returned) == sorted(v.verdict_id for v in logged)
    discovered = store.count_links() - len(link_ids)
    assert discovered == DISCOVERY_BATCHES * 50
    assert disc_out.split()[:2] == ["done", str(discovered)]
    lead = threads_done - float(disc_out.split()[2])
    print(f"\nconcurrency: {len(logged)} verdicts from {THREADS} threads in {verdict_s:.1f} s, "
          f"each once; {discovered} links from a second process (finished {lead:+.1f} s "
          f"before the threads); {read_out.split()[1]} reads from a third")


def test_kill_minus_nine_keeps_every_committed_verdict(tmp_path: Path) -> None:
    store, _ = _project(tmp_path, n_links=1)
    project = tmp_path / "artminer.duckdb"
    store.close()
    writer = _spawn("verdicts", project, 400)  # 400-link batches between verdicts
    committed: list[int] = []
    while len(committed) < 40:
        line = writer.stdout.readline()
        assert line, f"writer stopped early: {writer.stderr.read()}"
        committed.append(int(line))
    time.sleep(0.05 + (len(committed) % 7) / 100)  # land somewhere inside the loop
    writer.send_signal(signal.SIGKILL)
    rest, _ = writer.communicate(timeout=30)
    committed += [int(x) for x in rest.split()]  # printed before the kill: committed too
    assert writer.returncode == -signal.SIGKILL

    reopened = Store(project)
    logged = {v.verdict_id: v.note for v in reopened.list_verdicts(annotator="killed")}
    missing = [vid for vid in committed if vid not in logged]
    assert not missing, f"committed verdicts lost after kill -9: {missing}"
    # A transaction cut by the kill leaves nothing: link batches are whole.
    assert (reopened.count_links() - 1) % 400 == 0
    print(f"\nkill -9: {len(committed)} verdicts reported committed, all {len(committed)} "
          f"present after reopening ({len(logged)} in the log)")


def test_in_memory_store_serves_threads(tmp_path: Path) -> None:
    store = Store(":memory:")
    store.add_model(ModelRef("m", "effnet-lite0"))
    run = store.start_run("m", {})
    link_ids = store.add_links(run, [PairMatch("x", "y", Box(0, 0, 5, 5), Box(0, 0, 5, 5),
                                               IDENTITY_AFFINE, 1.0, 4)])
    errors: list[Exception] = []
    out: list[int] = []
    threads = [threading.Thread(target=_verdict_thread, args=(store, t, link_ids, out, errors))
               for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(store.list_verdicts()) == 4 * PER_THREAD == len(set(out))


def _hold_with_duckdb_cli(project: Path, seconds: float) -> subprocess.Popen:
    """Another program (not using our lock file) holding the project open."""
    code = (f"import duckdb, time; c = duckdb.connect({str(project)!r}); print('held', flush=True);"
            f" time.sleep({seconds}); c.close()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_foreign_holder_is_waited_for_then_reported(tmp_path: Path) -> None:
    project = tmp_path / "artminer.duckdb"
    Store(project).close()
    holder = _hold_with_duckdb_cli(project, 3.0)
    try:
        with pytest.raises(StoreBusyError, match="held open by another program"):
            Store(project, busy_timeout=0.3)
        waited = time.monotonic()
        patient = Store(project, busy_timeout=30)  # retries until the holder lets go
        assert time.monotonic() - waited > 0.5 and patient.count_images() == 0
    finally:
        holder.wait(timeout=30)
