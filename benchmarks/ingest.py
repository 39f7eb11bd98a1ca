"""Ingest speed: a generated folder of N images with a metadata CSV, ingested twice.

    python -m benchmarks.ingest [--n 2000] [--size 256] [--keep DIR]

Prints the time of the first ingest (hash, header read, store) and of a re-ingest,
which must add nothing. Image generation is not timed. Target: 2,000 images in under
60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from db import Store
from hitl.ingest import ingest_paths


def make_collection(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` distinct JPEGs (smooth colour noise, ``size`` px wide) in 10 subfolders + CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        small = rng.integers(0, 255, (size // 16, size // 12, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size * 4 // 3, size), Image.Resampling.BILINEAR)
        folder = root / "images" / f"box{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"work{i:05d}.jpg"
        image.save(folder / name, quality=85)
        rows.append([name, f"Work {i}", f"Artist {i % 37}", f"c. {1500 + i % 200}", "oil",
                     f"INV-{i}"])
    table = root / "metadata.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "title", "artist", "date", "medium", "inventory"])
        writer.writerows(rows)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of images")
    parser.add_argument("--size", type=int, default=256, help="image height in pixels")
    parser.add_argument("--keep", type=Path, help="build in this folder instead of a temp one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        start = time.perf_counter()
        table = make_collection(root, args.n, args.size)
        print(f"generated {args.n} images ({args.size * 4 // 3}x{args.size}) "
              f"in {time.perf_counter() - start:.1f} s (not timed below)")
        store = Store(root / "artminer.duckdb")
        start = time.perf_counter()
        first = ingest_paths(store, [root / "images"], metadata_csv=table, progress=False)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        again = ingest_paths(store, [root / "images"], metadata_csv=table, progress=False)
        again_s = time.perf_counter() - start
        titled = sum(1 for im in store.list_images() if im.title)
        print(f"ingest:    {first_s:6.2f} s  {args.n / first_s:7.0f} images/s  "
              f"added {len(first.added)}, with metadata {titled}, skipped {len(first.skipped)}")
        print(f"re-ingest: {again_s:6.2f} s  added {len(again.added)}, "
              f"duplicates {len(again.duplicates)}")


if __name__ == "__main__":
    main()
