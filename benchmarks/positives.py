"""Precision of each source of training positives on a project with ground truth attached.

    python -m benchmarks.positives --project DEMO/artminer.duckdb [--seeds 0,1,2]
                                   [--shares 0.5,0.6] [--link-scores 0.02,0.03,0.05]
                                   [--proposal-weights 0.3,0.5,0.7] [--squares 6,12] [--expert-links 150]

With the project's active model: mines once per vote floor (``min_vote_share``, a share
of the 36 ring votes) among shortlist neighbours, with uniform proposals (the paper),
per texture-weight floor of the proposals, per positive square, then once with the pre-issue-10
settings (1,000 proposals, floor of 1 vote, P12 exact-cell positives, 3x3 negative
exclusion, every image a candidate), pooling the pairs of every seed, and builds weak positives from the latest discovery's unrejected links at
each score threshold. Then the expert's pairs: the ``--expert-links`` best links of the
latest discovery, judged by the simulated expert of ``benchmarks.loop`` (confirm when
both boxes lie on copies of one motif), turned into pairs several ways: cells sampled
anywhere in box A at any level (before), where the texture weight is >= 0.5, the links'
heaviest stored inliers paired with their own other ends, and cells near the inliers
mapped through the affine. ``pos>negs`` tells easy positives (already matched) apart. Prints pairs and precision per setting: a pair is right when both
cells lie on copies of one same motif (:mod:`hitl.positive_precision`). Also the mean
share of pairs whose positive beats the mean of its negatives (the loss then pulls the
right way).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from benchmarks.loop import is_true_link
from engine.mining import MiningConfig, PairBatch, mine_pairs, proposal_weights
from hitl.discover import DEFAULT_MIN_SCORE
from hitl.oneshot import load_project_collection
from hitl.positive_precision import ground_truth_copies, right_pairs
from hitl.positives import ExpertPairConfig, expert_pairs
from hitl.project import load_model, open_project
from hitl.rounds import _latest_links, shortlist_neighbours

# The mining settings before issue 10 (searched in every image, not the shortlist).
OLD = dict(n_proposals=1000, min_vote_share=0.0, positive_square=12, positive_search=0, negative_exclusion=1)


def _line(name: str, batch: PairBatch, right: torch.Tensor, bank, seconds: float | None = None) -> str:
    n = len(batch)
    precision = float(right.float().mean()) if n else float("nan")
    pos_beats = _positive_beats_negatives(batch, bank) if n else float("nan")
    took = f"  {seconds:6.1f} s" if seconds is not None else ""
    return f"{name:<52} {n:>7} {precision:>9.3f} {pos_beats:>10.3f}{took}"


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
    parser.add_argument("--seeds", default="0,1,2", help="mining rounds pooled per setting (seeds)")
    parser.add_argument("--shares", default="0.5,0.6", help="vote floors to try (share of the ring)")
    parser.add_argument("--link-scores", default="0.02,0.03,0.05", help="discovery-link thresholds to try")
    parser.add_argument("--proposal-weights", default="0.3,0.5,0.7",
                        help="texture-weight floors of the proposals to try (MiningConfig.min_proposal_weight)")
    parser.add_argument("--squares", default="6,12", help="positive squares to try (P6 ... P12, the paper's)")
    parser.add_argument("--expert-links", type=int, default=150,
                        help="best links of the latest discovery the simulated expert judges (0: skip)")
    parser.add_argument("--skip-mining", action="store_true", help="only the link-based sources")
    parser.add_argument("--time-mining", action="store_true",
                        help="only time one default mining (seed 0; shortlist and texture weights computed before)")
    args = parser.parse_args(argv)
    store, paths = open_project(args.project)
    truth = ground_truth_copies(store)
    if not truth:
        parser.error("the project has no ground truth attached (artminer ingest --annotations FILE)")
    model = load_model(store, None, "cpu")
    bank = load_project_collection(store, paths, model, progress=False).bank
    bank.levels = [lv.float() for lv in bank.levels]
    neighbours = shortlist_neighbours(bank, 20)
    seeds = [int(v) for v in args.seeds.split(",")]
    if args.time_mining:
        weights = proposal_weights(bank, 0)
        start, cpu = time.perf_counter(), time.process_time()
        batch = mine_pairs(bank, 0, MiningConfig(n_proposals=args.proposals), neighbours=neighbours, weights=weights)
        print(f"mine_pairs: {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU, "
              f"{len(batch)} pairs, {store.count_images()} images, {torch.get_num_threads()} threads")
        return
    print(f"{store.count_images()} images, model {model.model_id}, {args.proposals} proposals, seeds {seeds}")
    print(f"{'source':<52} {'pairs':>7} {'precision':>9} {'pos>negs':>10}")
    base = MiningConfig(n_proposals=args.proposals)
    settings = [(f"mined, floor {replace(base, min_vote_share=float(v)).min_votes} votes (share {float(v):g}), k=20",
                 replace(base, min_vote_share=float(v)), neighbours) for v in args.shares.split(",")]
    uniform = replace(base, texture_proposals=False)
    settings.append((f"mined, uniform proposals (paper), floor {base.min_votes}, P{base.positive_square}", uniform, neighbours))
    settings += [(f"mined, proposals of texture weight >= {float(v):g}", replace(base, min_proposal_weight=float(v)),
                  neighbours) for v in args.proposal_weights.split(",")]
    settings += [(f"mined, default proposals, P{int(v)} square", replace(base, positive_square=int(v)), neighbours)
                 for v in args.squares.split(",")]
    settings.append(("mined, before issue 10 (P12, floor 1, exact cell, 3x3)", replace(uniform, **OLD), None))
    for name, config, nbrs in ([] if args.skip_mining else settings):
        start = time.perf_counter()
        batch = PairBatch.cat([mine_pairs(bank, seed, config, neighbours=nbrs) for seed in seeds])
        print(_line(name, batch, right_pairs(batch, bank, truth), bank, time.perf_counter() - start), flush=True)
    index = {image_id: i for i, image_id in enumerate(bank.image_ids)}
    for score in (float(s) for s in args.link_scores.split(",")):
        links = [lk.match for lk in _latest_links(store, score) if lk.image_a in index and lk.image_b in index]
        batch = expert_pairs(links, [], bank, image_index=index) if links else PairBatch.empty(20)
        print(_line(f"discovery links >= {score:g} ({len(links)} links)", batch, right_pairs(batch, bank, truth), bank))
    if args.expert_links > 0:
        _expert_lines(store, bank, truth, index, args.expert_links)


def _expert_lines(store, bank, truth, index: dict[str, int], n_links: int) -> None:
    """Precision of the simulated expert's confirmed links' pairs, per way of placing the cells."""
    run = next((r for r in reversed(store.list_runs(kind="discovery")) if store.count_links(run_id=r.run_id)), None)
    if run is None:
        print("expert: no discovery run with links")
        return
    links = [lk for lk in store.list_links(run_id=run.run_id, min_score=DEFAULT_MIN_SCORE, limit=n_links, inliers=True)
             if lk.image_a in index and lk.image_b in index]
    confirmed = [lk.match for lk in links if is_true_link(lk, truth)]
    with_points = sum(bool(m.inliers) for m in confirmed)
    print(f"expert: {len(links)} best links >= {DEFAULT_MIN_SCORE:g}, {len(confirmed)} true (confirmed), "
          f"{with_points} of them with inlier points")
    before = ExpertPairConfig(inliers="off", min_texture_weight=0.0, anchor_levels=None)
    ways = [("expert, anywhere in box A, all levels (before)", before),
            ("expert, box A, texture weight >= 0.5, all levels", replace(before, min_texture_weight=0.5)),
            ("expert, 16 heaviest inliers' own pairs, all levels", replace(before, inliers="exact")),
            ("expert, 16 heaviest inliers' own pairs, level 0", replace(before, inliers="exact", anchor_levels=(0,))),
            ("expert, inliers' cells through the affine, level 0", replace(before, inliers="near", inlier_radius=0,
                                                                              anchor_levels=(0,))),
            ("expert, within 1 cell of inliers, level 0", replace(before, inliers="near", anchor_levels=(0,))),
            ("expert, within 1 cell of inliers, all levels", replace(before, inliers="near")),
            ("expert, within 2 cells of inliers, all levels", replace(before, inliers="near", inlier_radius=2)),
            ("expert, default", ExpertPairConfig())]
    for name, config in ways:
        batch = expert_pairs(confirmed, [], bank, config, image_index=index) if confirmed else PairBatch.empty(20)
        print(_line(name, batch, right_pairs(batch, bank, truth), bank), flush=True)


if __name__ == "__main__":
    main()
