"""Discovery with the Ray executor vs the local one, on the same images (issue 12, items 7-8).

    python -m benchmarks.executor --images DIR [--limit 60] [--workers 2] [--workdir DIR]

Ingests the first ``--limit`` images of the folder ``--images`` (e.g. ``D/images`` after
``artminer demo --out D``) into a fresh project, copies it twice, and runs one discovery
on each copy in its own subprocess: ``--executor local`` (this process) and ``--executor ray`` (a local Ray
instance with ``--workers`` one-CPU actors per stage). The local run keeps the
environment's torch threads (``OMP_NUM_THREADS``): with ``OMP_NUM_THREADS=1 --workers 1``
both runs use one core and the difference is Ray's overhead; ``--workers 2`` shows the
gain of a second core. Each run starts with an empty feature
cache. Printed per run: wall time of the whole discovery, of the feature stage (images
and their mirror images) and of pair verification (both ways), seconds per image and
milliseconds per pair, and the peak memory of the run's whole process tree (sum of PSS
over the driver and, for Ray, its GCS, raylet and worker processes, sampled every
second). Then whether both runs stored the same links, and what Ray's throughput would be
with more workers from the measured per-image and per-pair figures (a linear estimate
that ignores the shared filesystem and the driver's serial stages).

Masks and the style map are off (``--masks off --no-style``): they run in the driver
either way and would only add the same seconds to both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# ---------------------------------------------------------------- one run (the subprocess)


class TimedExecutor:
    """An executor whose two stages are timed (seconds summed per stage in ``seconds``,
    pairs summed in ``pairs``: discovery verifies twice, the shortlist's pairs and then
    the two-hop candidates)."""

    def __init__(self, inner):
        self.inner, self.seconds, self.pairs = inner, {}, 0

    def _timed(self, name, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def cache_features(self, *args):
        return self._timed("features", self.inner.cache_features, *args)

    def verify_and_store(self, *args):
        self.pairs += len(args[3])
        return self._timed("verification", self.inner.verify_and_store, *args)


def child(args: argparse.Namespace) -> None:
    from hitl.discover import DiscoverConfig, run_discovery
    from hitl.executors import LocalExecutor
    from hitl.project import open_project

    if args.executor == "ray":
        from hitl.executors.ray_executor import RayConfig, RayExecutor

        inner = RayExecutor(RayConfig(workers=args.workers))
        start = time.perf_counter()
        inner.start()  # before the project opens (see RayExecutor.start)
        ray_start = time.perf_counter() - start
    else:
        inner, ray_start = LocalExecutor(), 0.0
    executor = TimedExecutor(inner)
    start = time.perf_counter()
    store, paths = open_project(args.project)
    report = run_discovery(store, paths, DiscoverConfig(masks="off", style=False), device="cpu", progress=False,
                           executor=executor)
    wall = time.perf_counter() - start + ray_start
    if args.executor == "ray":
        inner.close()
    print(json.dumps({"wall_s": wall, "ray_start_s": ray_start, "images": report.n_images, "pairs": executor.pairs,
                      "links": report.n_links, **{f"{k}_s": v for k, v in executor.seconds.items()}}))


# ---------------------------------------------------------------- memory of a process tree


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], env: dict) -> tuple[dict, int]:
    """Run ``cmd``; returns its JSON line and the peak PSS of its process tree in bytes."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], sum(_pss_bytes(p) for p in _tree(proc.pid)))
            time.sleep(1.0)  # walking /proc costs CPU: sampling often would slow the run measured

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak[0]


# ---------------------------------------------------------------- the comparison


def _fresh_project(images: list[Path], folder: Path) -> Path:
    from db.store import Store
    from hitl.ingest import ingest_paths

    (folder / "images").mkdir(parents=True)
    for path in images:
        shutil.copy(path, folder / "images" / path.name)
    with Store(folder / "artminer.duckdb") as store:
        ingest_paths(store, [folder / "images"], progress=False)
    return folder / "artminer.duckdb"


def _links(project: Path) -> list[tuple]:
    from db.store import Store

    with Store(project) as store:
        return sorted((m.image_a, m.image_b, m.box_a.as_list(), m.box_b.as_list(), m.score, m.n_inliers)
                      for m in (lk.match for lk in store.list_links()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="a folder of images, e.g. an `artminer demo` folder's images/")
    parser.add_argument("--limit", type=int, default=60, help="first N images (sorted by name)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors per stage")
    parser.add_argument("--workdir", type=Path, help="keep the projects here (default: a temporary folder)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--executor", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--project", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.images is None or not args.images.is_dir():
        parser.error(f"--images must name a folder of images (got {args.images})")
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="artminer-executor-"))
    base = _fresh_project(images, work / "base")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    print(f"{len(images)} images from {args.images}; {os.cpu_count()} CPUs; masks and style map off")
    results = {}
    for name in ("local", "ray"):
        shutil.copytree(base.parent, work / name)
        cmd = [sys.executable, "-m", "benchmarks.executor", "--child", "--executor", name,
               "--project", str(work / name / "artminer.duckdb"), "--workers", str(args.workers)]
        result, peak = run_measured(cmd, env)
        results[name] = result
        per_image = result["features_s"] / max(1, result["images"])
        per_pair = 1000 * result["verification_s"] / max(1, result["pairs"])
        threads = os.environ.get("OMP_NUM_THREADS", "default")
        label = f"ray, {args.workers} actors" if name == "ray" else f"local, {threads} threads"
        print(f"{label:>18}: wall {result['wall_s']:6.1f} s (Ray start {result['ray_start_s']:.1f} s) | "
              f"features {result['features_s']:6.1f} s = {per_image:.2f} s/image (with its mirror image) | "
              f"verification {result['verification_s']:6.1f} s = {per_pair:.0f} ms/pair both ways "
              f"({result['pairs']} pairs) | peak memory {peak / 2**30:.2f} GiB (PSS, whole tree) | "
              f"{result['links']} links")
    same = _links(work / "local" / "artminer.duckdb") == _links(work / "ray" / "artminer.duckdb")
    print(f"same links stored by both: {same}")
    ray = results["ray"]
    overhead = ray["wall_s"] - results["local"]["wall_s"]
    print(f"Ray overhead on this machine: {overhead:+.1f} s wall ({ray['ray_start_s']:.1f} s of it starting Ray)")
    per_image = results["local"]["features_s"] / results["local"]["images"]
    per_pair = results["local"]["verification_s"] / results["local"]["pairs"]
    for workers in (1, 8, 64):
        print(f"estimate, {workers:>2} one-core workers: {workers / per_image * 3600:9.0f} images/h (features, "
              f"with mirror), {workers / per_pair * 3600:10.0f} pairs/h (verification both ways)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
