"""Two discoveries, a training round and four verdict writers on one project at once,
each kind killed with SIGKILL once: nothing duplicated, no verdict lost, every
interrupted run resumable.

    python -m benchmarks.concurrency [--workdir DIR] [--iterations 2]

Builds the tiny demo (8 images, 240 x 180), runs a first discovery (k = 2) so there are
links to judge, then, all as separate ``artminer`` / Python processes on the same file:

1. four verdict writers append confirm/reject verdicts round-robin over the links,
   printing each verdict id after its commit; writer 1 is killed mid-stream;
2. discovery D1 (k = 7: new pairs to verify) starts, D2 two seconds later (it must be
   refused: one discovery per project); D1 is killed once it has committed a batch;
3. a training round starts and is killed after its first iteration;
4. D1 and the round are run again: each resumes its killed run and finishes.

Prints the figures and the checks; exit code 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRITER = """
import sys, os, itertools, time
from db import Store
project, k, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
store = Store(project)
links = [lk.link_id for lk in store.list_links(order="link_id")]
for i in itertools.count():
    if os.path.exists(stop):
        break
    vid = store.add_verdict(links[(i * 4 + k) % len(links)], ("confirm", "reject")[(i + k) % 2],
                            annotator=f"writer{k}", note=f"{k}-{i}")
    print(vid, flush=True)
    time.sleep(0.05)  # an expert's pace is seconds; 20 per second per writer is plenty
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _cli(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hitl.cli", *args], cwd=ROOT, env=_env(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_for(test, what: str, timeout: float = 600.0) -> None:
    end = time.monotonic() + timeout
    while not test():
        if time.monotonic() > end:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.2)


def _build(work: Path) -> Path:
    from db.store import Store
    from hitl.demo import DemoConfig, build_demo
    from hitl.ingest import ingest_paths

    build_demo(work, seed=1, n_images=8, n_motifs=2, config=DemoConfig(image_size=(240, 180)),
               progress=False)
    project = work / "artminer.duckdb"
    with Store(project) as store:
        ingest_paths(store, [work / "images"], metadata_csv=work / "metadata.csv", progress=False)
        store.attach_annotations(work / "ground_truth.json", "artminer")
    return project


def _runs(project: Path, kind: str) -> list:
    from db.store import Store

    with Store(project) as store:
        return store.list_runs(kind=kind)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="keep the project here (default: a temp folder)")
    parser.add_argument("--iterations", type=int, default=2, help="training iterations")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="artminer-concurrency-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    project = _build(work)
    p = str(project)
    first = _cli("discover", "--project", p, "--k", "2", "--quiet", "--device", "cpu",
                 log=work / "d0.log")
    first.wait()
    print(f"setup: 8 images, first discovery exit {first.returncode} "
          f"({time.monotonic() - t0:.0f} s)")

    stop = work / "writers.stop"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, p, str(k), str(stop)], cwd=ROOT,
                                env=_env(), stdout=subprocess.PIPE, text=True) for k in range(4)]
    time.sleep(3)
    d1 = _cli("discover", "--project", p, "--k", "7", "--quiet", "--device", "cpu",
              log=work / "d1.log")
    time.sleep(2)
    d2 = _cli("discover", "--project", p, "--k", "7", "--quiet", "--device", "cpu",
              log=work / "d2.log")
    d2.wait()
    refused = "already running" in (work / "d2.log").read_text()
    print(f"D2 started 2 s after D1: exit {d2.returncode}, refused: {refused}")

    os.kill(writers[1].pid, signal.SIGKILL)
    train = _cli("train", "--project", p, "--iterations", str(args.iterations), "--no-discover",
                 "--quiet", "--device", "cpu", log=work / "t1.log")
    d1_run = None

    def d1_committed() -> bool:
        nonlocal d1_run
        from db.store import Store

        runs = [r for r in _runs(project, "discovery") if r.params.get("k") == 7]
        if not runs:
            return False
        d1_run = runs[-1].run_id
        with Store(project) as store:
            return store.count_links(run_id=d1_run) > 0 or d1.poll() is not None

    _wait_for(d1_committed, "D1's first committed batch")
    killed_d1 = d1.poll() is None
    if killed_d1:
        os.kill(d1.pid, signal.SIGKILL)
    d1.wait()
    _wait_for(lambda: "iteration 1/" in (work / "t1.log").read_text() or train.poll() is not None,
              "the round's first iteration")
    killed_train = train.poll() is None
    if killed_train:
        os.kill(train.pid, signal.SIGKILL)
    train.wait()
    print(f"killed -9: writer 1, D1 (run {d1_run}, mid-run: {killed_d1}), "
          f"training round (mid-run: {killed_train})")

    again = _cli("discover", "--project", p, "--k", "7", "--quiet", "--device", "cpu",
                 log=work / "d1-again.log")
    again.wait()
    retrain = _cli("train", "--project", p, "--iterations", str(args.iterations), "--no-discover",
                   "--quiet", "--device", "cpu", log=work / "t2.log")
    retrain.wait()
    stop.touch()
    printed: dict[int, list[int]] = {}
    for k, w in enumerate(writers):
        out, _ = w.communicate()
        printed[k] = [int(x) for x in out.split()]
    return _report(project, work, d1_run, again.returncode, retrain.returncode, printed,
                   time.monotonic() - t0)


def _report(project: Path, work: Path, d1_run: int | None, again_rc: int, retrain_rc: int,
            printed: dict[int, list[int]], seconds: float) -> int:
    from db.store import Store

    with Store(project) as store:
        links = store.list_links(order="link_id")
        keys = Counter((lk.model_id, lk.image_a, lk.image_b, tuple(lk.box_a.as_list()),
                        tuple(lk.box_b.as_list())) for lk in links)
        pairs = Counter((lk.model_id, *sorted((lk.image_a, lk.image_b)), lk.run_id)
                        for lk in links)
        stored = {v.verdict_id for v in store.list_verdicts()}
        runs = {r.run_id: r.status for r in store.list_runs(kind="discovery")}
        rounds = [(r.round_id, r.status) for r in store.list_rounds()]
    dup_links = sum(n - 1 for n in keys.values() if n > 1)
    pair_runs = Counter((m, a, b) for m, a, b, _ in pairs)
    dup_pairs = sum(1 for n in pair_runs.values() if n > 1)
    all_printed = [v for ids in printed.values() for v in ids]
    lost = sorted(set(all_printed) - stored)
    resumed = "resumed" if d1_run is not None and f"run {d1_run} " in (
        work / "d1-again.log").read_text() else "new run"
    print(f"links {len(links)}, duplicated links {dup_links}, pairs with links from two runs "
          f"{dup_pairs}")
    print(f"verdicts committed and printed by the writers {len(all_printed)} "
          f"(per writer {[len(v) for v in printed.values()]}), in the log {len(stored)}, "
          f"lost {len(lost)}, printed twice {len(all_printed) - len(set(all_printed))}")
    print(f"D1 again: exit {again_rc}, {resumed}; discovery runs {runs}")
    print(f"training again: exit {retrain_rc}; rounds {rounds}")
    print(f"wall {seconds:.0f} s; logs in {work}")
    ok = (dup_links == 0 and dup_pairs == 0 and not lost and again_rc == 0 and retrain_rc == 0
          and resumed == "resumed" and all(s == "done" for s in runs.values())
          and rounds and all(status == "done" for _, status in rounds)
          and len(rounds) == 1)  # the killed round was resumed, not started anew
    print("checks:", "all passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
