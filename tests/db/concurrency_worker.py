"""A second process for the concurrency tests: writes or reads one project file.

Usage: ``python concurrency_worker.py MODE PROJECT [N]`` with MODE

* ``discover``: one run writing N batches of 50 links, as a discovery run does;
* ``read``: reads links and statuses until the file ``PROJECT.stop`` appears;
* ``verdicts``: appends verdicts on link 1 forever, printing each committed id, and
  between them commits large link batches, so a kill often lands mid-transaction.

Prints ``done <count> <unix time>`` at the end (except ``verdicts``, which is killed).
"""

from __future__ import annotations

import os
import sys
import time

from db import Store
from engine.types import IDENTITY_AFFINE, Box, PairMatch

BATCH = 50


def _matches(batch: int, n: int) -> list[PairMatch]:
    return [
        PairMatch(f"a{batch:04d}", f"b{i:04d}", Box(0, 0, 10 + i, 10), Box(1, 1, 11, 11),
                  IDENTITY_AFFINE, 0.5, 8)
        for i in range(n)
    ]


def discover(store: Store, batches: int) -> int:
    run = store.start_run("m", {"worker": "discover"})
    for b in range(batches):
        store.add_links(run, _matches(b, BATCH), verified_pairs=[(f"a{b:04d}", f"c{b:04d}")])
    store.finish_run(run)
    return batches * BATCH


def read(store: Store, stop_file: str) -> int:
    reads = 0
    while not os.path.exists(stop_file):
        store.list_links(limit=20)
        store.status_counts()
        reads += 1
    return reads


def verdicts(store: Store, big_batch: int) -> None:
    run = store.start_run("m", {"worker": "verdicts"})
    i = 0
    while True:
        vid = store.add_verdict(1, "confirm", annotator="killed", note=f"k{i}")
        print(vid, flush=True)  # printed only after the commit returned
        store.add_links(run, _matches(i, big_batch))
        i += 1


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    store = Store(path)
    if mode == "discover":
        count = discover(store, n)
        print("done", count, f"{time.time():.3f}", flush=True)
    elif mode == "read":
        count = read(store, path + ".stop")
        print("done", count, f"{time.time():.3f}", flush=True)
    elif mode == "verdicts":
        verdicts(store, n)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
