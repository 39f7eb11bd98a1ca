"""Does a link's aligned agreement tell copies from look-alikes? (hitl/agreement.py)

    python -m benchmarks.agreement --project P --demo DIR [--from 0.015]
                                   [--fulls 0.2,0.3] [--thresholds 0.02,0.025,0.03]

``P`` is a project over the demo ``DIR`` discovered with ``artminer discover
--agreement off`` (its links carry verification's score alone; e.g. the
``--workdir`` project of ``python -m benchmarks.sources --agreement off``). For every
link at or above ``--from`` it measures the aligned structure correlation (timed) and
prints:

* ROC AUC of true against wrong links for the verification score, the correlation
  and the weighed score (a link is *true* when both its boxes overlap, IoU > 0.3,
  copies of one pasted element: a motif or a distractor);
* pair precision and recall of the links kept at each threshold, without the weight
  and with it for each ``full`` (``AgreementConfig.full``): what the default's choice
  rests on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.sources import demo_truth
from db.store import Store
from engine.discovery_metrics import link_quality, region_labels
from engine.types import PairMatch, Region
from hitl.agreement import (
    AgreementConfig,
    ImageViews,
    agreement_weight,
    image_sources,
    link_agreement,
)


def true_links(matches: list[PairMatch], queries, unannotated) -> np.ndarray:
    """(n,) bool: both boxes on copies of one pasted element (motif or distractor)."""
    regions = [r for m in matches for r in (Region(m.image_a, m.box_a), Region(m.image_b, m.box_b))]
    labels = region_labels(regions, [*queries, *unannotated])
    return np.array([labels[Region(m.image_a, m.box_a)] != "none"
                     and labels[Region(m.image_a, m.box_a)] == labels[Region(m.image_b, m.box_b)]
                     for m in matches])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", required=True, help="a project over the demo, discovered with --agreement off")
    ap.add_argument("--demo", required=True, help="the demo folder (ground truth, template regions)")
    ap.add_argument("--from", dest="lowest", type=float, default=0.015, help="links measured: score at least this")
    ap.add_argument("--fulls", default="0.2,0.3", help="AgreementConfig.full values to compare")
    ap.add_argument("--thresholds", default="0.02,0.025,0.03", help="score thresholds to compare")
    args = ap.parse_args(argv)
    config = AgreementConfig()
    with Store(args.project) as store:
        matches = sorted((lk.match for lk in store.list_links() if lk.score >= args.lowest),
                         key=lambda m: (m.image_a, m.image_b))
        if any(m.agreement is not None for m in matches):
            raise SystemExit(f"{args.project}: its links were weighed already; discover with --agreement off")
        views = ImageViews(image_sources(store.list_images()), config.max_side)
        queries, templates, subsets, unannotated = demo_truth(store, Path(args.demo))
        sizes = {img.image_id: (img.width, img.height) for img in store.list_images()}
    start = time.perf_counter()
    corr = np.array([link_agreement(m, views, config) for m in matches])
    seconds = time.perf_counter() - start
    score = np.array([m.score for m in matches])
    truth = true_links(matches, queries, unannotated)
    print(f"{len(matches)} links >= {args.lowest} ({truth.sum()} true); alignment {seconds:.1f} s, "
          f"{1000 * seconds / max(len(matches), 1):.0f} ms per link with decoding")
    weighed = score * np.clip(corr / config.full, 0, 1)
    for name, value in (("verification score", score), ("correlation", corr), (f"weighed (full {config.full})", weighed)):
        print(f"  ROC AUC {name:24s} {roc_auc_score(truth, value):.3f}")

    def quality(keep: np.ndarray) -> str:
        q = link_quality([matches[i] for i in np.flatnonzero(keep)], queries, templates, subsets,
                         unannotated=unannotated, image_sizes=sizes)
        return (f"{q.n_links:4d} links, pair precision {q.pair_precision:.3f} ({q.repeat_pair_precision:.3f} "
                f"counting shared distractors), recall {q.pair_recall:.3f}")

    fulls = [float(v) for v in args.fulls.split(",")]
    for th in (float(v) for v in args.thresholds.split(",")):
        print(f"  >= {th}: without the weight  {quality(score >= th)}")
        for full in fulls:
            kept = np.array([s * agreement_weight(c, full) for s, c in zip(score, corr)]) >= th
            print(f"  >= {th}: weighed, full {full:<4g}  {quality(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
