"""Hole 7: two discoveries on one project cannot duplicate data.

The store drops the links of a pair that another transaction already recorded as
verified; and a second discovery process is refused while one runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from db import ImageRecord, Store
from engine.types import Box, ModelRef, PairMatch
from hitl.discover import run_discovery
from hitl.jobs import DiscoveryBusyError, lock_path, running_job
from hitl.project import ProjectPaths

ROOT = Path(__file__).resolve().parents[2]
AFF = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))


def _store() -> Store:
    store = Store(":memory:")
    store.add_images([ImageRecord(k * 16, k * 64, f"/c/{k}.jpg", 100, 100) for k in "abc"])
    store.add_model(ModelRef("m", "effnet-lite0"))
    return store


def _match(a: str, b: str, x: float = 1.0) -> PairMatch:
    return PairMatch(a * 16, b * 16, Box(x, 1, x + 9, 9), Box(2, 2, 8, 8), AFF, 0.5, 9)


def test_a_pair_verified_by_another_run_gets_no_second_links() -> None:
    store = _store()
    first, second = store.start_run("m", {}), store.start_run("m", {})
    ab, bc = ("a" * 16, "b" * 16), ("b" * 16, "c" * 16)
    assert len(store.add_links(first, [_match("a", "b")], verified_pairs=[ab])) == 1
    # the second run verified the same pair (and a new one) at the same time
    ids = store.add_links(second, [_match("b", "a"), _match("a", "b", 3.0), _match("b", "c")],
                          verified_pairs=[ab[::-1], bc])
    assert len(ids) == 1
    assert [(lk.image_a[0], lk.image_b[0], lk.run_id) for lk in store.list_links(order="link_id")] \
        == [("a", "b", first), ("b", "c", second)]
    assert store.verified_pairs("m") == {ab, bc}


def test_links_outside_verification_are_all_stored() -> None:
    """Imports and confirmed query hits name no verified pairs: nothing is dropped."""
    store = _store()
    run = store.start_run("m", {})
    store.add_links(run, [_match("a", "b")], verified_pairs=[("a" * 16, "b" * 16)])
    assert len(store.add_links(run, [_match("a", "b", 5.0)], mark_verified=False)) == 1
    assert store.count_links() == 2


def test_a_second_discovery_is_refused_while_one_runs(tmp_path: Path) -> None:
    project = tmp_path / "artminer.duckdb"
    Store(project).close()
    paths = ProjectPaths(project.resolve())
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from hitl.jobs import acquire_discovery_lock; "
         "from hitl.project import ProjectPaths; "
         "acquire_discovery_lock(ProjectPaths(Path(sys.argv[1]))); print('held', flush=True); "
         "time.sleep(30)", str(paths.project)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with Store(project) as store, pytest.raises(DiscoveryBusyError, match="already running"):
            run_discovery(store, paths, progress=False)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while running_job(paths, "discover.lock") is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # the killed holder's lock is stale now
    assert not lock_path(paths, "discover.lock").exists()
