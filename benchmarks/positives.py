"""Precision of each source of training positives on a project with ground truth attached.

    python -m benchmarks.positives --project DEMO/artminer.duckdb [--proposals 1000]
                                   [--shares 0,0.25,0.5,0.6] [--link-scores 0.02,0.03,0.05]

With the project's active model: mines once per vote floor (``min_vote_share``, a share
of the 36 ring votes) among shortlist neighbours, then once with the pre-issue-10
settings (floor of 1 vote, exact-cell positive, 3x3 negative exclusion, every image a
candidate), and builds weak positives from the latest discovery's unrejected links at
each score threshold. Prints pairs and precision per setting: a pair is right when both
cells lie on copies of one same motif (:mod:`hitl.positive_precision`). Also the mean
share of pairs whose positive beats the mean of its negatives (the loss then pulls the
right way).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from engine.mining import MiningConfig, PairBatch, mine_pairs
from hitl.oneshot import load_project_collection
from hitl.positive_precision import ground_truth_copies, right_pairs
from hitl.positives import expert_pairs
from hitl.project import load_model, open_project
from hitl.rounds import _latest_links, shortlist_neighbours

OLD = dict(min_vote_share=0.0, positive_search=0, negative_exclusion=1)  # the settings before issue 10


def _line(name: str, batch: PairBatch, right: torch.Tensor, bank, seconds: float | None = None) -> str:
    n = len(batch)
    precision = float(right.float().mean()) if n else float("nan")
    pos_beats = _positive_beats_negatives(batch, bank) if n else float("nan")
    took = f"  {seconds:6.1f} s" if seconds is not None else ""
    return f"{name:<44} {n:>7} {precision:>9.3f} {pos_beats:>10.3f}{took}"


def _positive_beats_negatives(batch: PairBatch, bank) -> float:
    """Share of pairs whose positive similarity beats the mean similarity to its negatives."""
    def feats(refs: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(refs), bank.levels[0].shape[1])
        for k, level in enumerate(bank.levels):
            sel = (refs[:, 1] == k).nonzero()[:, 0]
            out[sel] = level[refs[sel, 0], :, refs[sel, 2], refs[sel, 3]].float()
        return out
    keep = batch.positive_mask
    b = batch.select(keep)
    a, p = feats(b.anchor), feats(b.positive)
    n = feats(b.negatives.reshape(-1, 4)).view(len(b), b.n_negatives, -1)
    return float(((a * p).sum(-1) > torch.einsum("pc,pnc->pn", a, n).mean(1)).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--proposals", type=int, default=MiningConfig.n_proposals)
    parser.add_argument("--shares", default="0,0.25,0.5,0.6", help="vote floors to try (share of the ring)")
    parser.add_argument("--link-scores", default="0.02,0.03,0.05", help="discovery-link thresholds to try")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    store, paths = open_project(args.project)
    truth = ground_truth_copies(store)
    if not truth:
        parser.error("the project has no ground truth attached (artminer ingest --annotations FILE)")
    model = load_model(store, None, "cpu")
    bank = load_project_collection(store, paths, model, progress=False).bank
    bank.levels = [lv.float() for lv in bank.levels]
    neighbours = shortlist_neighbours(bank, 20)
    print(f"{store.count_images()} images, model {model.model_id}, {args.proposals} proposals, seed {args.seed}")
    print(f"{'source':<44} {'pairs':>7} {'precision':>9} {'pos>negs':>10}")
    base = MiningConfig(n_proposals=args.proposals)
    for share in (float(s) for s in args.shares.split(",")):
        config = replace(base, min_vote_share=share)
        start = time.perf_counter()
        batch = mine_pairs(bank, args.seed, config, neighbours=neighbours)
        name = f"mined, floor {config.min_votes} votes (share {share:g}), k=20"
        print(_line(name, batch, right_pairs(batch, bank, truth), bank, time.perf_counter() - start), flush=True)
    start = time.perf_counter()
    old = mine_pairs(bank, args.seed, replace(base, **OLD))
    print(_line("mined, before issue 10 (floor 1, exact cell, 3x3)", old, right_pairs(old, bank, truth), bank,
                time.perf_counter() - start), flush=True)
    index = {image_id: i for i, image_id in enumerate(bank.image_ids)}
    for score in (float(s) for s in args.link_scores.split(",")):
        links = [lk.match for lk in _latest_links(store, score) if lk.image_a in index and lk.image_b in index]
        batch = expert_pairs(links, [], bank, image_index=index) if links else PairBatch.empty(20)
        print(_line(f"discovery links >= {score:g} ({len(links)} links)", batch, right_pairs(batch, bank, truth), bank))


if __name__ == "__main__":
    main()
