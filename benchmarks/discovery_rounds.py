"""Discovery quality of every model of a demo project's lineage: does a round improve DISCOVERY?

    python -m benchmarks.discovery_rounds DIR [DIR ...] [--threshold T] [--counts 100 200 300 400 600]

``DIR`` is a demo project folder (``artminer demo --out DIR``, or an arm's folder of
:mod:`benchmarks.loop`) whose rounds re-discovered with their models. For the root model
(round 0) and every round's new model, the links of that model's latest discovery run are
judged against the demo's ground truth (:func:`benchmarks.sources.demo_truth`,
:func:`engine.discovery_metrics.link_quality`), as ``benchmarks.sources`` judges a run:

* at the threshold (default: discovery's, ``hitl.discover.DEFAULT_MIN_SCORE``): links, true links, pair precision,
  pair recall (across / within sources);
* at equal link counts: the top ``N`` links by score, whatever their score, for each ``N``
  of ``--counts`` — a model whose scores shift up or down as a whole changes how many links
  pass a fixed threshold, so only equal counts compare the ranking itself.

Also per model, the links among its top ``max(counts)`` that join an image pair the
simulated expert rejected a link of (what a round with hard negatives should push down),
and pair recall over the ground-truth pairs nobody reviewed (``unreviewed``): what the
round found beyond the links the expert already judged.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.sources import demo_truth
from db.records import CONFIRM, REJECT
from db.store import Store
from engine.discovery_metrics import LinkQuality, ground_truth_pairs, link_quality
from hitl.discover import DEFAULT_MIN_SCORE

PROJECT = "artminer.duckdb"
COUNTS = (100, 200, 300, 400, 600)  # equal-count comparison (links at the default threshold on the demo: ~250-360)


@dataclass(frozen=True)
class ModelQuality:
    label: str  # "round 0" (the root) or "round r"
    model_id: str
    at_threshold: LinkQuality
    top: dict[int, LinkQuality]  # N -> quality of the top N links
    rejected_pairs_in_top: int  # links of the top max(N) on image pairs with a rejected link
    reviewed_pairs: int  # image pairs with a verdict (confirm or reject) when measured


def lineage_models(store: Store) -> list[tuple[str, str]]:
    """(label, model id): the first round's parent as round 0, then each finished round's new model."""
    rounds = [r for r in store.list_rounds() if r.status == "done" and r.new_model]
    if not rounds:
        runs = store.list_runs(kind="discovery", status="done")
        return [("round 0", runs[0].model_id)] if runs else []
    return [("round 0", rounds[0].parent_model)] + [(f"round {i}", r.new_model) for i, r in enumerate(rounds, 1)]


def latest_links(store: Store, model_id: str) -> list:
    """Links of the model's latest finished discovery run, best score first ([] when it has none)."""
    runs = [r for r in store.list_runs(model_id=model_id, kind="discovery") if r.status == "done"]
    return store.list_links(run_id=runs[-1].run_id) if runs else []


def measure_models(folder: Path, counts: Sequence[int] = COUNTS,
                   threshold: float = DEFAULT_MIN_SCORE) -> list[ModelQuality]:
    """Discovery quality of every model of the project's lineage that has its own discovery run."""
    with Store(folder / PROJECT) as store:
        queries, templates, subsets, unannotated = demo_truth(store, folder)
        sizes = {img.image_id: (img.width, img.height) for img in store.list_images()}
        reviewed = store.list_links(status=[CONFIRM, REJECT])
        rejected = {frozenset((lk.image_a, lk.image_b)) for lk in reviewed if lk.status == REJECT}
        judged = {frozenset((lk.image_a, lk.image_b)) for lk in reviewed}
        n_reviewed = len(judged)
        subsets = {**subsets, "unreviewed": ground_truth_pairs(queries) - judged}
        out = []
        for label, model_id in lineage_models(store):
            links = latest_links(store, model_id)
            if not links:
                continue
            matches = [lk.match for lk in links]  # best first

            def quality(ms):
                return link_quality(ms, queries, templates, subsets, unannotated=unannotated, image_sizes=sizes)

            top = {n: quality(matches[:n]) for n in counts}
            in_rejected = sum(frozenset((m.image_a, m.image_b)) in rejected for m in matches[: max(counts)])
            out.append(ModelQuality(label, model_id, quality([m for m in matches if m.score >= threshold]), top,
                                    in_rejected, n_reviewed))
    return out


def format_rows(rows: Sequence[ModelQuality], threshold: float = DEFAULT_MIN_SCORE) -> str:
    """One line per model at the threshold, then one per model with P/R at each equal count."""
    lines = [f"{'model':<9} {'id':<22} {'>= ' + format(threshold, 'g'):>8} {'true':>5} {'pair P':>7} "
             f"{'pair R':>7} {'across':>7} {'within':>7} {'unreviewed':>10}"]
    for r in rows:
        q = r.at_threshold
        lines.append(f"{r.label:<9} {r.model_id[:22]:<22} {q.n_links:>8} {q.n_true:>5} {q.pair_precision:>7.3f} "
                     f"{q.pair_recall:>7.3f} {q.recall_by.get('across', 0.0):>7.3f} {q.recall_by.get('within', 0.0):>7.3f} "
                     f"{q.recall_by.get('unreviewed', 0.0):>10.3f}")
    if rows:
        counts = sorted(rows[0].top)
        lines.append("equal link counts, pair precision / recall (across / within / unreviewed) of the top N links:")
        lines.append(f"{'model':<9} " + " ".join(f"{'N = ' + str(n):>31}" for n in counts)
                     + f" {'rejected-pair links':>20}")
        for r in rows:
            cells = [f"{q.pair_precision:.3f} / {q.pair_recall:.3f} ({q.recall_by.get('across', 0.0):.2f}/"
                     f"{q.recall_by.get('within', 0.0):.2f}/{q.recall_by.get('unreviewed', 0.0):.2f})"
                     for q in (r.top[n] for n in counts)]
            lines.append(f"{r.label:<9} " + " ".join(f"{c:>31}" for c in cells)
                         + f" {r.rejected_pairs_in_top:>20}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="demo project folders (an arm's folder of benchmarks.loop)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_MIN_SCORE)
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    args = parser.parse_args(argv)
    if any(n < 1 for n in args.counts):
        parser.error("--counts must be >= 1")
    for folder in args.folders:
        rows = measure_models(Path(folder), args.counts, args.threshold)
        print(f"{folder}:")
        print(format_rows(rows, args.threshold) if rows else "  no discovery run")


if __name__ == "__main__":
    main()
