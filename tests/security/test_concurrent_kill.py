"""Two discovery writers and four verdict writers on one file, one of each killed -9.

The processes are real and separate (`concurrent_worker.py`), writing through the real
`Store` with discovery's commit pattern. Asserted: no link is duplicated (each pair's
links come from exactly one run, even though both discoveries verified every pair), no
committed verdict is lost or doubled, and the killed discovery's run resumes and
finishes. `benchmarks/concurrency.py` runs the same with the real `artminer discover`
and `artminer train` processes (slower: a model and UMAP per process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from db import ImageRecord, Store
from engine.types import ModelRef

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from concurrent_worker import IMAGES, PAIRS, pair_matches  # noqa: E402


def _worker(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "concurrent_worker.py"), *args],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, text=True)


def _read_until(proc: subprocess.Popen, n_lines: int) -> list[str]:
    lines = []
    while len(lines) < n_lines:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
    return lines


def test_kill_9_of_a_discovery_and_a_writer_loses_and_doubles_nothing(tmp_path: Path) -> None:
    project = tmp_path / "artminer.duckdb"
    with Store(project) as store:
        store.add_images([ImageRecord(i, i * 4, f"/c/{i}.jpg", 100, 100) for i in IMAGES])
        store.add_model(ModelRef("m", "effnet-lite0"))
        seed = store.start_run("m", {"seed": True})  # links to judge, outside the pairs' runs
        store.add_links(seed, pair_matches(IMAGES[0], IMAGES[1]), mark_verified=False)
        store.finish_run(seed)
    stop = tmp_path / "stop"
    writers = [_worker("verdicts", str(project), str(k), str(stop)) for k in range(4)]
    first = _worker("discover", str(project))
    second = None
    try:
        # The second discovery starts once the first has committed, so the first cannot
        # find every pair already done by the second (a race, not a property).
        assert _read_until(first, 1) == ["batch 0"]
        second = _worker("discover", str(project))
        assert _read_until(first, 1) == ["batch 1"]
        os.kill(first.pid, signal.SIGKILL)  # mid-run, between or inside a commit
        killed_writer = _read_until(writers[1], 5)
        os.kill(writers[1].pid, signal.SIGKILL)
        tail = second.communicate(timeout=120)[0].split()
        assert tail[-1] == "done"
        again = _worker("discover", str(project))  # resumes the killed run, if left unfinished
        assert again.communicate(timeout=120)[0].split()[-1] == "done"
    finally:
        stop.touch()
        for p in (first, *([second] if second else []), *writers):
            if p.poll() is None and p is not writers[1]:
                p.wait(timeout=60)
            elif p.poll() is None:
                p.kill()
    printed = [int(x) for k, w in enumerate(writers) if k != 1 for x in w.stdout.read().split()]
    printed += [int(x) for x in killed_writer]
    with Store(project) as store:
        links = [lk for lk in store.list_links() if lk.run_id != seed]
        runs = {r.run_id: r.status for r in store.list_runs(kind="discovery")}
        log = [v.verdict_id for v in store.list_verdicts()]
        verified = store.verified_pairs("m")
    keys = Counter((lk.image_a, lk.image_b, tuple(lk.box_a.as_list())) for lk in links)
    runs_per_pair = Counter((lk.image_a, lk.image_b) for lk in links)
    assert max(keys.values()) == 1 and len(links) == 2 * len(PAIRS)  # nothing doubled, none lost
    assert set(runs_per_pair.values()) == {2}
    assert all(len({lk.run_id for lk in links if (lk.image_a, lk.image_b) == p}) == 1 for p in PAIRS)
    assert verified == set(PAIRS)
    assert set(runs.values()) == {"done"}  # the killed run was resumed and finished
    assert len(log) == len(set(log)) and set(printed) <= set(log)  # no verdict lost or doubled
    assert len(printed) == len(set(printed)) and len(printed) > 20
