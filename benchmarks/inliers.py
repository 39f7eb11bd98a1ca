"""Stored inlier points of a project's links: how many, and do they follow their link's affine?

    python -m benchmarks.inliers --project DIR/artminer.duckdb

For every link with points (``PairMatch.inliers``, schema v6), the median distance between
B's point and A's point mapped by the link's affine, in reference-level cells of B (the
longer side / 40), separately for direct and mirrored links (mirrored points are flipped
into B's frame by `engine.mirror.unmirror_match`: a wrong flip shows as residuals of half
an image). Links found before v6 have no points and are counted apart.
"""

from __future__ import annotations

import argparse

import numpy as np

from db.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    args = parser.parse_args()
    store = Store(args.project)
    sizes = {im.image_id: (im.width, im.height) for im in store.list_images()}
    residuals: dict[bool, list[float]] = {False: [], True: []}
    without, points = 0, 0
    for link in store.list_links(inliers=True):
        found = np.array(link.match.inliers)
        if not len(found):
            without += 1
            continue
        points += len(found)
        mapped = np.c_[found[:, :2], np.ones(len(found))] @ np.array(link.match.affine).T
        cell_b = max(sizes[link.image_b]) / 40
        residuals[link.match.mirrored].append(float(np.median(np.linalg.norm(mapped - found[:, 2:], axis=1))) / cell_b)
    n = sum(len(r) for r in residuals.values())
    print(f"{n + without} links: {n} with points ({points / max(n, 1):.1f} per link on average, "
          f"{points * 16 / 1e6:.2f} MB as float32), {without} without (found before schema v6)")
    for mirrored, found in residuals.items():
        if found:
            r = np.array(found)
            print(f"  {'mirrored' if mirrored else 'direct'} links ({len(r)}): median residual under the link's "
                  f"affine {np.median(r):.2f} B cells (95th percentile {np.percentile(r, 95):.2f}); "
                  f"{np.mean(r < 2):.1%} under 2 cells")


if __name__ == "__main__":
    main()
