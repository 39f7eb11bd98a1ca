"""Verification speed, both ways, on real pairs of a project: the first version's path
(``reference=True``: padded batched mutual nearest neighbours, every RANSAC group scored)
against today's (pair by pair on true sizes, all of B's levels in one product, grouped
row maxima, A's margin left out, empty RANSAC groups skipped, separable Hough smoothing;
bf16 similarity products where the CPU has native bf16) and today's exact switch
(``VerifyConfig.precision="fp32"``), in one process, with checks that they agree.

    cp -r DEMO /tmp/demo && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        python -m benchmarks.verify_speed --project /tmp/demo --pairs 40

Times ``engine.mirror.verify_pairs_mirrored`` (or ``verify_pairs`` with ``--mirror off``)
as discovery calls it at default settings (``DEMO``: a demo folder whose project discovery
has run, e.g. ``artminer demo --out DEMO && artminer discover --project DEMO/artminer.duckdb``),
on the first ``--pairs`` pairs the project's
discovery run verified, pyramids already in memory (a warm cache). Prints the median of
``--repeats`` runs of each path in ms per pair both ways, wall time and this process's
CPU time (on a shared machine the CPU time shows the cost without the waiting), and the
ratios. Work on a copy of the project: opening its store may write to it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from db.store import Store
from engine.features import CachedPyramids, FeatureCache
from engine.mirror import mirror_hash, verify_pairs_mirrored
from engine.types import PairMatch
from engine.verify import both_ways, mutual_nearest_levels, stack_pairs, verify_pairs
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

    exact = replace(config.verify, precision="fp32")

    def run(ordered: list[tuple[str, str]], reference: bool, verify=config.verify) -> dict:
        if args.mirror == "off":
            return dict(verify_pairs(ordered, pyramids, verify, device, config.batch_size, weights, reference))
        return dict(verify_pairs_mirrored(ordered, pyramids, mirrored, verify, device, config.batch_size,
                                          weights, reference))

    paths = {  # "before" in the order discovery used, (A, B) of every pair then (B, A)
        "reference (before)": lambda: run(list(pairs) + [(b, a) for a, b in pairs], True, exact),
        f"fast, {config.verify.precision} (after)": lambda: run(both_ways(pairs), False),
        "fast, fp32 (exact)": lambda: run(both_ways(pairs), False, exact),
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
    before, after, after_exact = (found[name] for name in paths)

    def links(verified: dict) -> list[PairMatch]:  # as discovery stores them (hitl.discover.verify_both_ways)
        kept = {p: [m for m in matches if m.score >= config.min_score / 2] for p, matches in verified.items()}
        return [m for a, b in pairs for m in merge_directions(kept[(a, b)], kept[(b, a)])]

    agree = sum(same_matches(before[p], after[p]) for p in before)
    agree_exact = sum(same_matches(before[p], after_exact[p]) for p in before)
    regions = sum(len(v) for v in before.values())
    print(f"pairs {len(pairs)} both ways, mirror {args.mirror}, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeats}")
    for name in paths:
        print(f"{name:24s} {statistics.median(times[name]):8.1f} ms per pair both ways, CPU "
              f"{statistics.median(cpu[name]):6.1f} ms  (wall runs: " + ", ".join(f"{v:.1f}" for v in times[name]) + ")")
    wall, used = ([statistics.median(v) for v in kind.values()] for kind in (times, cpu))
    for k, name in ((1, "after"), (2, "exact")):
        print(f"ratio, {name:17s} {wall[0] / wall[k]:8.2f}x wall, {used[0] / used[k]:.2f}x CPU")
    print(f"exact switch identical   {agree_exact}/{len(before)} directed pairs, links "
          f"{same_matches(links(before), links(after_exact))}")
    print(f"after identical          {agree}/{len(before)} directed pairs ({regions} regions before, "
          f"{sum(len(v) for v in after.values())} after)")
    print(f"links (>= {config.min_score / 2:g})         {len(links(before))} before, {len(links(after))} after")
    best = [(max((m.score for m in merge_directions(before[(a, b)], before[(b, a)])), default=0.0),
             max((m.score for m in merge_directions(after[(a, b)], after[(b, a)])), default=0.0)) for a, b in pairs]
    diffs = sorted(abs(x - y) for x, y in best)
    print(f"pair score |after - before|: median {statistics.median(diffs):.4f}, max {diffs[-1]:.4f}; pairs >= "
          f"{config.min_score:g}: {sum(x >= config.min_score for x, _ in best)} before, "
          f"{sum(y >= config.min_score for _, y in best)} after")
    same, kept, kept_low = mutual_agreement(pairs, pyramids, config.verify.margin, device)
    print(f"mutual matches           {same / kept:.3f} of the float32 ones identical in {config.verify.precision} "
          f"({kept} float32, {kept_low} {config.verify.precision}, all levels, {2 * len(pairs)} directed pairs)")


def mutual_agreement(pairs, pyramids, margin: int, device: torch.device) -> tuple[int, int, int]:
    """Mutual nearest neighbours of float32 and of the default precision's products:
    (identical, float32 count, other count), over every level of B, both ways."""
    ordered = both_ways(pairs)
    low = DiscoverConfig().verify.product_dtype()
    same = kept = kept_low = 0
    for start in range(0, len(ordered), 16):
        chunk = ordered[start : start + 16]
        batch = stack_pairs([(pyramids(a), pyramids(b), None) for a, b in chunk], chunk, device, margin=margin)
        n_b = batch.b_grid.prod(-1)[..., None]
        (index, sim, mutual), (l_index, l_sim, l_mutual) = (mutual_nearest_levels(batch, d) for d in (None, low))
        ok = mutual & batch.a_valid[:, None] & (index < n_b) & (sim > 0)
        l_ok = l_mutual & batch.a_valid[:, None] & (l_index < n_b) & (l_sim > 0)
        same += int((ok & l_ok & (index == l_index)).sum())
        kept, kept_low = kept + int(ok.sum()), kept_low + int(l_ok.sum())
    return same, kept, kept_low


if __name__ == "__main__":
    main()
