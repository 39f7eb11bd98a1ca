"""Verification speed, both ways, on real pairs of a project: the first version's path
(``reference=True``: padded batched mutual nearest neighbours, every RANSAC group scored)
against today's (pair-by-pair mutual nearest neighbours on true sizes, the level-0 block
shared by a pair's two directions, empty RANSAC groups skipped), in one process, with a
check that they agree.

    cp -r /work/demo-ms /tmp/demo && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        python -m benchmarks.verify_speed --project /tmp/demo --pairs 40

Times ``engine.mirror.verify_pairs_mirrored`` (or ``verify_pairs`` with ``--mirror off``)
as discovery calls it at default settings, on the first ``--pairs`` pairs the project's
discovery run verified, pyramids already in memory (a warm cache). Prints the median of
``--repeats`` runs of each path in ms per pair both ways, wall time and this process's
CPU time (on a shared machine the CPU time shows the cost without the waiting), and the
ratios. Work on a copy of the project: opening its store may write to it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from db.store import Store
from engine.features import CachedPyramids, FeatureCache
from engine.mirror import mirror_hash, verify_pairs_mirrored
from engine.types import PairMatch
from engine.verify import both_ways, verify_pairs
from hitl.discover import DiscoverConfig, merge_directions, texture_weights


def same_matches(one: list[PairMatch], other: list[PairMatch], tol: float = 1e-5) -> bool:
    """Same regions: boxes, inlier counts and points equal, scores and affines within ``tol``."""
    return len(one) == len(other) and all(
        x.box_a == y.box_a and x.box_b == y.box_b and x.n_inliers == y.n_inliers and x.mirrored == y.mirrored
        and x.inliers == y.inliers and abs(x.score - y.score) <= tol
        and all(abs(u - v) <= tol for ru, rv in zip(x.affine, y.affine) for u, v in zip(ru, rv))
        for x, y in zip(one, other))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, required=True, help="a COPY of a project folder (discovery run)")
    parser.add_argument("--model", default="effnet-lite0")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mirror", choices=("image", "off"), default="image")
    args = parser.parse_args()

    config = DiscoverConfig()
    store = Store(args.project / "artminer.duckdb")
    hashes = {im.image_id: im.sha256 for im in store.list_images()}
    pairs = sorted(store.verified_pairs(args.model))[: args.pairs]
    if not pairs:
        raise SystemExit(f"no pairs verified with {args.model} in {args.project}")
    cache = FeatureCache(args.project / "artminer-data" / "features", args.model, config.features)
    pyramids = CachedPyramids(cache, hashes)
    mirrored = CachedPyramids(cache, {i: mirror_hash(h) for i, h in hashes.items()})
    weights = texture_weights(pyramids, config.verify.texture, list(hashes))
    for a, b in pairs:  # warm: every pyramid and weight in memory before timing
        for name in (a, b):
            pyramids(name), mirrored(name), weights(name)
    device = torch.device("cpu")

    def run(ordered: list[tuple[str, str]], reference: bool) -> dict:
        if args.mirror == "off":
            return dict(verify_pairs(ordered, pyramids, config.verify, device, config.batch_size, weights, reference))
        return dict(verify_pairs_mirrored(ordered, pyramids, mirrored, config.verify, device, config.batch_size,
                                          weights, reference))

    paths = {  # "before" in the order discovery used, (A, B) of every pair then (B, A)
        "reference (before)": lambda: run(list(pairs) + [(b, a) for a, b in pairs], True),
        "fast (after)": lambda: run(both_ways(pairs), False),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    found: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved, so both paths see the same machine load
        for name, path in paths.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            found[name] = path()
            times[name].append((time.perf_counter() - start) * 1000 / len(pairs))
            cpu[name].append((time.process_time() - start_cpu) * 1000 / len(pairs))
    before, after = (found[name] for name in paths)

    def links(verified: dict) -> list[PairMatch]:  # as discovery stores them (hitl.discover.verify_both_ways)
        kept = {p: [m for m in matches if m.score >= config.min_score / 2] for p, matches in verified.items()}
        return [m for a, b in pairs for m in merge_directions(kept[(a, b)], kept[(b, a)])]

    agree = sum(same_matches(before[p], after[p]) for p in before)
    regions = sum(len(v) for v in before.values())
    print(f"pairs {len(pairs)} both ways, mirror {args.mirror}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats}")
    for name in paths:
        print(f"{name:24s} {statistics.median(times[name]):8.1f} ms per pair both ways, CPU "
              f"{statistics.median(cpu[name]):6.1f} ms  (wall runs: " + ", ".join(f"{v:.1f}" for v in times[name]) + ")")
    wall, used = ([statistics.median(v) for v in kind.values()] for kind in (times, cpu))
    print(f"ratio                    {wall[0] / wall[1]:8.2f}x wall, {used[0] / used[1]:.2f}x CPU")
    print(f"identical results        {agree}/{len(before)} directed pairs ({regions} regions before, "
          f"{sum(len(v) for v in after.values())} after)")
    print(f"identical links          {same_matches(links(before), links(after))} "
          f"({len(links(before))} links before, {len(links(after))} after)")


if __name__ == "__main__":
    main()
