"""A separate process for `test_concurrent_kill.py`: writes one project file.

``python concurrent_worker.py discover PROJECT``
    Discovery's write pattern (`hitl.discover`): resume the unfinished run with these
    params or start one, skip pairs the model has verified, and commit each batch of
    pairs with its links (`Store.add_links(..., verified_pairs=batch)`); prints
    ``batch N`` after each commit and ``run R done`` at the end.
``python concurrent_worker.py verdicts PROJECT K STOP_FILE``
    Appends verdicts round-robin over the links, printing each id after its commit,
    until ``STOP_FILE`` exists.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from db import Store
from engine.types import IDENTITY_AFFINE, Box, PairMatch

IMAGES = [f"{c * 16}" for c in "abcdefghij"]
PAIRS = [(a, b) for i, a in enumerate(IMAGES) for b in IMAGES[i + 1:]]  # 45 pairs
PARAMS = {"pairs": "all", "worker": "discover"}
BATCH = 3


def pair_matches(a: str, b: str) -> list[PairMatch]:
    """Two links per pair, as verification finds (deterministic: the same in every run)."""
    return [PairMatch(a, b, Box(x, 0, x + 10, 10), Box(0, x, 10, x + 10), IDENTITY_AFFINE, 0.5, 8)
            for x in (0.0, 20.0)]


def discover(store: Store) -> None:
    resumed = store.resumable_run("m", PARAMS)
    run = resumed.run_id if resumed else store.start_run("m", PARAMS)
    done = store.verified_pairs("m")
    todo = [p for p in PAIRS if p not in done]
    for n, start in enumerate(range(0, len(todo), BATCH)):
        batch = todo[start:start + BATCH]
        store.add_links(run, [m for a, b in batch for m in pair_matches(a, b)], verified_pairs=batch)
        print(f"batch {n}", flush=True)
        time.sleep(0.1)  # verification takes time between commits
    store.finish_run(run)
    print(f"run {run} done", flush=True)


def verdicts(store: Store, k: int, stop: str) -> None:
    links = [lk.link_id for lk in store.list_links(order="link_id")]
    for i in itertools.count():
        if os.path.exists(stop):
            return
        vid = store.add_verdict(links[(4 * i + k) % len(links)], ("confirm", "reject")[i % 2],
                                annotator=f"writer{k}", note=f"{k}-{i}")
        print(vid, flush=True)
        time.sleep(0.02)


if __name__ == "__main__":
    mode, project = sys.argv[1], sys.argv[2]
    with Store(project) as store:
        if mode == "discover":
            discover(store)
        else:
            verdicts(store, int(sys.argv[3]), sys.argv[4])
