"""Where the exact blocked k-NN shortlist stops being fast (issue 12, item 6).

    python -m benchmarks.shortlist [--sizes 250 500 1000 2000] [--k 20]
    python -m benchmarks.shortlist --votes [--sizes 50 100 200]

Times :func:`engine.shortlist.knn_graph` (exact: max cosine over all region pairs, one
matmul per block) on random L2-normalised descriptors of the default shape (65 regions
x 112 channels; random content costs the same as real), prints seconds per size, and
extrapolates the N^2 cost to 10,000 / 100,000 / 1,000,000 images from the largest
size measured. Then the same with :func:`engine.ann_index.ann_knn_graph` (FAISS
region index), with both searches' recall of the true neighbours, on *clustered* synthetic
descriptors (each image a noisy copy of one of N/5 prototypes, so neighbours exist).

``--votes`` times the default shortlist instead, discovery's cell votes
(:func:`engine.shortlist.vote_scores`): every level-3 cell of each image (20 x 15) against
every cell of levels 3-6 of all others, cells centred per image (the default),
summed and in one Hough bin, with the N^2
extrapolation (random cells of the demo's shapes cost what real ones cost).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from engine.ann_index import ann_knn_graph
from engine.features import FeaturePyramid
from engine.shortlist import ShortlistConfig, cell_bags, centre_cells, knn_graph, vote_scores


def _planted_recall(neighbours: torch.Tensor, owner: torch.Tensor) -> float:
    """Share of each image's same-prototype images (its true neighbours) among its k neighbours."""
    found = total = 0
    for i, row in enumerate(neighbours.tolist()):
        mates = set((owner == owner[i]).nonzero().flatten().tolist()) - {i}
        found += len(mates & set(row))
        total += len(mates)
    return found / max(1, total)


# The demo's level shapes (480 x 360 images): levels 3-6 of the 7-level pyramid.
VOTE_SHAPES = ((15, 20), (12, 16), (10, 13), (8, 10))


def time_votes(sizes: list[int], channels: int) -> None:
    """Seconds of :func:`vote_scores` (summed, then Hough bins) per collection size."""
    g = torch.Generator().manual_seed(0)
    config = ShortlistConfig()
    seconds = {}
    for n in sizes:
        pyramids = [FeaturePyramid(tuple(F.normalize(torch.randn(channels, h, w, generator=g), dim=0)
                                         for h, w in VOTE_SHAPES), (480, 360)) for _ in range(n)]
        queries, database = cell_bags(pyramids, None, lambda k: range(1), lambda k: range(k))
        for name, bins in (("summed", 0.0), ("one Hough bin", config.vote_bin)):
            start, cpu = time.perf_counter(), time.process_time()
            q, d = (centre_cells(queries), centre_cells(database)) if config.vote_centre else (queries, database)
            vote_scores(q, d, n, config.vote_neighbours, bin_cells=bins)  # centring counted, as discovery does it
            seconds[(n, name)] = time.perf_counter() - start
            print(f"cell votes ({name}), {n:>6} images   {seconds[(n, name)]:7.1f} s wall, "
                  f"{time.process_time() - cpu:7.1f} s CPU ({len(queries.features)} x {len(database.features)} cells)")
    largest = max(sizes)
    for n in (1_000, 3_000, 10_000):
        print(f"extrapolated, {n:>6} images  ~{seconds[(largest, 'one Hough bin')] * (n / largest) ** 2 / 60:.0f} min "
              f"(N^2 from {largest}; twice that with the mirror images' votes)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--channels", type=int, default=112)
    parser.add_argument("--votes", action="store_true", help="time the cell-vote shortlist (discovery's default)")
    args = parser.parse_args(argv)
    if args.votes:
        time_votes(args.sizes or [50, 100, 200], args.channels)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
        return
    args.sizes = args.sizes or [250, 500, 1000, 2000]
    regions = ShortlistConfig().n_regions
    g = torch.Generator().manual_seed(0)
    seconds = {}
    for n in args.sizes:
        prototypes = torch.randn(max(1, n // 5), regions, args.channels, generator=g)
        owner = torch.randint(len(prototypes), (n,), generator=g)
        desc = F.normalize(prototypes[owner] + 0.7 * torch.randn(n, regions, args.channels, generator=g), dim=2)
        start, cpu = time.perf_counter(), time.process_time()
        exact, _ = knn_graph(desc, args.k, device="cpu")
        seconds[n] = time.perf_counter() - start
        print(f"exact k-NN, {n:>7} images   {seconds[n]:8.1f} s wall, {time.process_time() - cpu:8.1f} s CPU "
              f"({regions} regions x {args.channels} channels, k={args.k})")
        start, cpu = time.perf_counter(), time.process_time()
        approx, _ = ann_knn_graph(desc, args.k)
        wall = time.perf_counter() - start
        print(f"index k-NN, {n:>7} images   {wall:8.1f} s wall, {time.process_time() - cpu:8.1f} s CPU")
        print(f"recall of same-prototype images: exact {_planted_recall(exact, owner):.3f}, "
              f"index {_planted_recall(approx, owner):.3f}; of the exact top-{args.k}: "
              f"{sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)) / exact.numel():.3f}")
    largest = max(seconds)
    for n in (10_000, 100_000, 1_000_000):
        print(f"extrapolated, {n:>9} images  ~{seconds[largest] * (n / largest) ** 2 / 3600:.1f} h (N^2 from {largest})")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
