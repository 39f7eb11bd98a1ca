"""Where the exact blocked k-NN shortlist stops being fast (issue 12, item 6).

    python -m benchmarks.shortlist [--sizes 250 500 1000 2000] [--k 20]

Times :func:`engine.shortlist.knn_graph` (exact: max cosine over all region pairs, one
matmul per block) on random L2-normalised descriptors of the default shape (65 regions
x 112 channels; random content costs the same as real), prints seconds per size, and
extrapolates the N^2 cost to 10,000 / 100,000 / 1,000,000 images from the largest
size measured. Then the same with :func:`engine.ann_index.ann_knn_graph` (FAISS
region index), with both searches' recall of the true neighbours, on *clustered* synthetic
descriptors (each image a noisy copy of one of N/5 prototypes, so neighbours exist).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from engine.ann_index import ann_knn_graph
from engine.shortlist import ShortlistConfig, knn_graph


def _planted_recall(neighbours: torch.Tensor, owner: torch.Tensor) -> float:
    """Share of each image's same-prototype images (its true neighbours) among its k neighbours."""
    found = total = 0
    for i, row in enumerate(neighbours.tolist()):
        mates = set((owner == owner[i]).nonzero().flatten().tolist()) - {i}
        found += len(mates & set(row))
        total += len(mates)
    return found / max(1, total)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--channels", type=int, default=112)
    args = parser.parse_args(argv)
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
