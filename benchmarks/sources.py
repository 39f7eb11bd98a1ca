"""Discovery across sources: does it find the copies, or the pages' layout?

    python -m benchmarks.sources [--demo DIR] [--sources 4] [--images 60] [--shortlist-only]
                                 [--scoring distinctive|max] [--groups look|collection|none]
                                 [--texture-weight | --no-texture-weight] [--k 20] [--expand 1] [--agreement structure|off]
                                 [--json]

Builds the multi-source demo (``artminer demo --sources N``: a manuscript, a print album, a
photo archive and museum photographs whose motifs are copied across sources) unless
``--demo`` names one already built, and prints:

* shortlist recall of ground-truth pairs at k = 5/10/20/50, within one source and across
  sources, for the first version's max-region score and the distinctive-region score;
* with verification (not ``--shortlist-only``): a fresh discovery run with the options
  given, its time per stage, and the links above the default threshold judged against
  the ground truth *and* the template regions the generator drew (script, ornament,
  colour bars): link precision, pair precision and recall (within / across sources),
  and the share of links that land on template.

The demo's template boxes are in ``template_regions.json`` beside its ground truth, and
every pasted element (copies and distractors) in ``ground_truth_copies.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from db.store import Store
from engine.discovery_metrics import (
    ground_truth_pairs,
    link_quality,
    located_recall,
    shortlist_recall,
)
from engine.evaluate import Instance, Query
from engine.features import (
    CachedPyramids,
    FeatureCache,
    FeatureConfig,
    collection_features,
)
from engine.mirror import cache_mirrored_features, mirror_hash
from engine.shortlist import (
    ShortlistConfig,
    cell_bags,
    cell_image_best,
    centre_cells,
    look_alike_groups,
    shortlist_pairs,
)
from engine.texture import TextureConfig
from engine.types import Box
from hitl.agreement import AGREEMENT_MODES, AgreementConfig
from hitl.demo import COPIES_FILE
from hitl.discover import (
    DEFAULT_MIN_SCORE,
    DiscoverConfig,
    collection_votes,
    image_descriptors,
    run_discovery,
    texture_weights,
)
from hitl.evaluation import project_queries
from hitl.project import ProjectPaths, load_model

KS = (5, 10, 20, 50)
THRESHOLDS = (0.01, 0.02, 0.025, 0.03, 0.05)


def csls(score: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Image-level hubness correction (CSLS, Conneau et al. 2018): ``2 s_ij - r_i - r_j``,
    r_i the mean of image i's ``k`` best scores; images voted for by everyone drop."""
    r = score.clone().fill_diagonal_(-torch.inf).topk(min(k, len(score) - 1), dim=1).values.mean(1)
    return (2 * score - r[:, None] - r[None, :]).fill_diagonal_(0.0)


def rank_fusion(score: torch.Tensor, c: float = 5.0) -> torch.Tensor:
    """``1/(c + rank of j for i) + 1/(c + rank of i for j)``: the pair's rank from both sides."""
    rank = score.clone().fill_diagonal_(-torch.inf).argsort(1, descending=True).argsort(1).float()
    return (1 / (c + rank) + 1 / (c + rank.T)).fill_diagonal_(0.0)


def common_neighbours(score: torch.Tensor, t: int = 10, weight: float = 0.02) -> torch.Tensor:
    """Second-order score: the votes (scaled to max 1) plus ``weight`` per image both hold
    among their ``t`` best (two copies of a motif share the motif's other copies)."""
    rank = score.clone().fill_diagonal_(-torch.inf).argsort(1, descending=True).argsort(1)
    near = (rank < t).float().fill_diagonal_(0.0)
    near = ((near + near.T) > 0).float()
    return (score / score.max().clamp_min(1e-12) + weight * near @ near).fill_diagonal_(0.0)


@dataclass(frozen=True)
class Variant:
    """One shortlist of the table: its config, look-alike groups (None, "look",
    "collection"), whether mirror images vote, and a post-processing of the (N, N) votes."""

    config: ShortlistConfig
    groups: str | None = None
    mirror: bool = False
    post: Callable[[torch.Tensor], torch.Tensor] | None = None


VOTES = ShortlistConfig()  # today's default: centred cells, look-alike cap 50 %
S3 = replace(VOTES, vote_centre=False, same_group_share=0.75)  # session 3's default
# Shortlists compared: the first version's, session 3's default with each look-alike cap,
# the variants of it tried for issue 9 item 2, and today's default (README, *Discovery
# across sources*).
SHORTLISTS = {
    "max region (first version)": Variant(ShortlistConfig(grids=(1, 8), scoring="max", texture_weight=False)),
    "distinctive regions": Variant(ShortlistConfig(scoring="distinctive")),
    "cell votes summed, no cap": Variant(replace(S3, vote_bin=0.0)),
    "cell votes in one Hough bin": Variant(S3),
    "Hough votes + mirror, no cap": Variant(S3, mirror=True),
    "Hough votes + mirror, look cap": Variant(S3, "look", mirror=True),  # session 3's default
    "Hough votes + mirror, coll. cap": Variant(S3, "collection", mirror=True),
    "S3, look cap 50 %": Variant(replace(S3, same_group_share=0.5), "look", mirror=True),
    "S3, coll. cap 10 %": Variant(replace(S3, same_group_share=0.1), "collection", mirror=True),
    "S3, query cells level 2": Variant(replace(S3, vote_level=2), "look", mirror=True),
    "S3, query cells level 4": Variant(replace(S3, vote_level=4), "look", mirror=True),
    "S3, top-1 cell votes": Variant(replace(S3, vote_neighbours=1), "look", mirror=True),
    "S3, top-10 cells vote": Variant(replace(S3, vote_neighbours=10), "look", mirror=True),
    "S3 + image hubness (CSLS)": Variant(S3, "look", mirror=True, post=csls),
    "S3 + rank from both sides": Variant(S3, "look", mirror=True, post=rank_fusion),
    "S3 + common neighbours": Variant(S3, "look", mirror=True, post=common_neighbours),
    "S3, cells centred": Variant(replace(S3, vote_centre=True), "look", mirror=True),
    "centred, look cap 50 % (default)": Variant(VOTES, "look", mirror=True),  # discovery's default
    "centred, look cap 50 %, + CSLS": Variant(VOTES, "look", mirror=True, post=csls),
}


def build(out: Path, n_sources: int, n_images: int) -> Path:
    from hitl.demo import build_demo

    build_demo(out, n_images=n_images, n_sources=n_sources, progress=False)
    return fresh_project(out, out)


def fresh_project(demo: Path, out: Path) -> Path:
    """A new project over ``demo``'s images (no runs, no links); its feature cache reused."""
    from hitl.ingest import ingest_paths

    if demo != out:
        for name in ("images", "metadata.csv", "ground_truth.json", "template_regions.json", COPIES_FILE, "masks"):
            (shutil.copytree if (demo / name).is_dir() else shutil.copy)(demo / name, out / name)
        if (demo / "artminer-data" / "features").is_dir():  # content-addressed: safe to share
            shutil.copytree(demo / "artminer-data" / "features", out / "artminer-data" / "features")
    with Store(out / "artminer.duckdb") as store:
        ingest_paths(store, [out / "images"], metadata_csv=out / "metadata.csv", progress=False)
        store.attach_annotations(out / "ground_truth.json", "artminer", label="demo ground truth")
    return out


def demo_truth(store: Store, demo: Path) -> tuple[list, dict[str, list[Box]], dict[str, set], list]:
    """Queries (image ids), template boxes per image id, named subsets of the
    ground-truth pairs (within one source / across sources, mirrored / not mirrored: a
    pair is mirrored when every motif it shares is flipped in exactly one of its images),
    and the distractors as queries of their own classes (pasted copies outside the GT)."""
    images = store.list_images()
    id_of = {Path(img.path).name: img.image_id for img in images}
    raw = json.loads((demo / "template_regions.json").read_text())
    templates = {id_of[f]: [Box(*b) for _, b in regions] for f, regions in raw.items() if f in id_of}
    queries = project_queries(store)
    truth = ground_truth_pairs(queries)
    source_of = {img.image_id: img.collection or "" for img in images}
    flipped: dict[tuple[str, str], bool] = {}
    distractors: dict[str, list[Instance]] = {}
    for inst in json.loads((demo / COPIES_FILE).read_text()):
        if inst["file"] not in id_of:
            continue
        if inst.get("kind", "motif") == "motif":
            flipped[(id_of[inst["file"]], inst["motif"])] = inst["flipped"]
        else:
            distractors.setdefault(inst["motif"], []).append(Instance(id_of[inst["file"]], Box(*inst["box"])))
    motifs_of: dict[str, set[str]] = {}
    for image, motif in flipped:
        motifs_of.setdefault(image, set()).add(motif)

    def mirrored(pair) -> bool:
        a, b = sorted(pair)
        return all(flipped[(a, m)] != flipped[(b, m)] for m in motifs_of[a] & motifs_of[b])

    within = {p for p in truth if len({source_of[i] for i in p}) == 1}
    mirror = {p for p in truth if mirrored(p)}
    subsets = {"within": within, "across": truth - within, "mirrored": mirror, "not mirrored": truth - mirror}
    unannotated = [Query(name, group[0], tuple(group[1:])) for name, group in distractors.items() if len(group) > 1]
    return queries, templates, subsets, unannotated


def shortlist_table(store: Store, paths: ProjectPaths, demo: Path, device: str) -> dict:
    backbone = load_model(store, None, device)
    images = store.list_images()
    hashes = {img.image_id: img.sha256 for img in images}
    feats = collection_features(backbone, [(i.image_id, i.path) for i in images], FeatureConfig(),
                                paths.features, progress=True, hashes=hashes, keep=False)
    ids = feats.image_ids
    pyramids = CachedPyramids(FeatureCache(paths.features, backbone.model_id, FeatureConfig()), hashes)
    cache_mirrored_features(backbone, [(i.image_id, i.path) for i in images], hashes, FeatureConfig(), paths.features)
    mirrored = CachedPyramids(FeatureCache(paths.features, backbone.model_id, FeatureConfig()),
                              {i: mirror_hash(h) for i, h in hashes.items()})
    _, _, subsets, _ = demo_truth(store, demo)
    collection_of = {img.image_id: img.collection or "" for img in images}
    names = sorted(set(collection_of.values()))
    by_collection = np.array([names.index(collection_of[i]) for i in ids])
    rows = {}
    start = time.perf_counter()
    weights = texture_weights(pyramids, TextureConfig(), ids)  # as discovery computes them
    weights(ids[0])
    weight_seconds = time.perf_counter() - start
    cached: dict[tuple, tuple[torch.Tensor, float]] = {}  # rows that differ only after the votes share them
    for name, variant in SHORTLISTS.items():
        start = time.perf_counter()
        config = variant.config
        desc = image_descriptors(ids, pyramids, config, weights=weights if config.texture_weight else None)
        votes = None
        if config.scoring == "votes":
            key = (config.vote_level, config.vote_neighbours, config.vote_bin, config.vote_centre,
                   config.texture_weight, variant.mirror)
            if key in cached:
                start -= cached[key][1]  # a row's time includes its votes, computed once
            else:
                cached[key] = (collection_votes(ids, pyramids, weights, config, mirrored if variant.mirror else None),
                               time.perf_counter() - start)
            votes = cached[key][0]
            votes = variant.post(votes) if variant.post else votes
        groups = variant.groups
        group = None if groups is None else (look_alike_groups(desc) if groups == "look" else by_collection)
        row = {}
        for k in KS:
            pairs = {frozenset((ids[i], ids[j])) for i, j, _ in
                     shortlist_pairs(desc, replace(config, k=k), group, votes=votes)}
            row[k] = {**{sub: shortlist_recall(pairs, truth) for sub, truth in subsets.items()}, "pairs": len(pairs)}
        rows[name] = {"recall": row, "seconds": time.perf_counter() - start}
    located = located_table(store, demo, ids, pyramids, mirrored, weights, subsets)
    return {"texture_weights_seconds": weight_seconds, "ground_truth_pairs": {sub: len(t) for sub, t in subsets.items()},
            "shortlist": rows, "located": located}


def located_table(store: Store, demo: Path, ids: list[str], pyramids, mirrored, weights, subsets: dict[str, set]) -> dict:
    """Recall at each k of :func:`engine.discovery_metrics.located_recall`: image pairs
    ranked by the cells of their copies alone (level-3 cells whose centre lies in a box of
    a motif the pair shares; each cell's best cosine in each image at levels 3 and coarser,
    mirror images' cells included, as the default votes), raw and with hubness removed,
    on the cells as they are and centred (:func:`engine.shortlist.centre_cells`)."""
    level = VOTES.vote_level
    flipped = (tuple(w.flip(-1) for w in weights(i)) for i in ids)
    queries, database = cell_bags((pyramids(i) for i in ids), (weights(i) for i in ids),
                                  lambda n: range(level, level + 1), lambda n: range(level, n))
    (mirror_queries,) = cell_bags((mirrored(i) for i in ids), flipped, lambda n: range(level, level + 1))
    bests = {}
    for name, centre in (("", False), (", centred", True)):
        q, d, m = (centre_cells(b) for b in (queries, database, mirror_queries)) if centre else (
            queries, database, mirror_queries)
        bests[name] = torch.maximum(cell_image_best(q, d, len(ids)), cell_image_best(m, d, len(ids))).numpy()
    id_of = {Path(img.path).name: img.image_id for img in store.list_images()}
    index = {image_id: n for n, image_id in enumerate(ids)}
    boxes: dict[int, list[tuple[str, list[float]]]] = {}
    for inst in json.loads((demo / COPIES_FILE).read_text()):
        if inst.get("kind", "motif") == "motif" and inst["file"] in id_of:
            boxes.setdefault(index[id_of[inst["file"]]], []).append((inst["motif"], inst["box"]))
    x, y, owner = queries.centre[:, 0].numpy(), queries.centre[:, 1].numpy(), queries.owner.numpy()

    def cells(image: int, motifs: set[str]) -> np.ndarray:
        inside = np.zeros(len(owner), dtype=bool)
        for motif, (x0, y0, x1, y1) in boxes.get(image, []):
            if motif in motifs:
                inside |= (owner == image) & (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        return np.nonzero(inside)[0]

    out = {}
    for cells_name, best in bests.items():
        for hubness in (False, True):
            row = {}
            for k in KS:
                row[k] = {}
                for sub, truth in subsets.items():
                    copies = []
                    for pair in truth:
                        a, b = (index[i] for i in sorted(pair))
                        shared = {m for m, _ in boxes.get(a, [])} & {m for m, _ in boxes.get(b, [])}
                        copies.append((a, b, cells(a, shared), cells(b, shared)))
                    row[k][sub] = located_recall(best, copies, k, hubness)
            out[f"copy located (oracle){cells_name}{', hubness removed' if hubness else ''}"] = row
    return out


def discovery_table(store: Store, paths: ProjectPaths, demo: Path, config: DiscoverConfig, device: str) -> dict:
    start = time.perf_counter()
    report = run_discovery(store, paths, config, device=device, progress=True)
    seconds = time.perf_counter() - start
    return {"config": {"mirror": config.mirror, "pairs": config.pairs, "scoring": config.shortlist.scoring, "groups": config.groups, "k": config.k,
                       "expand": config.expand, "expand_k": config.expand_k,
                       "texture_weight": config.verify.texture_weight, "min_score": config.min_score,
                       "agreement": config.agreement.mode},
            "pairs_verified": report.n_pairs, "two_hop_pairs": report.n_two_hop, "seconds": seconds, "seconds_per_image": seconds / report.n_images,
            "quality": quality_table(store, demo, report.model_id)}


def quality_table(store: Store, demo: Path, model_id: str | None = None) -> dict:
    """Link quality of the project's links at each threshold of ``THRESHOLDS``."""
    queries, templates, subsets, unannotated = demo_truth(store, demo)
    links = [lk.match for lk in store.list_links(model_id=model_id)]
    sizes = {img.image_id: (img.width, img.height) for img in store.list_images()}
    return {th: asdict(link_quality([m for m in links if m.score >= th], queries, templates, subsets,
                                    unannotated=unannotated, image_sizes=sizes)) for th in THRESHOLDS}


def print_tables(result: dict) -> None:
    gt = result["shortlist"]["ground_truth_pairs"]
    subs = list(gt)
    print("ground-truth pairs: " + ", ".join(f"{n} {sub}" for sub, n in gt.items()))
    print(f"shortlist recall ({' / '.join(subs)}) [pairs] at k = " + ", ".join(map(str, KS)))
    for name, row in result["shortlist"]["shortlist"].items():
        recall = {int(k): v for k, v in row["recall"].items()}  # JSON keys are strings
        cells = "  ".join("/".join(f"{recall[k][sub]:.2f}" for sub in subs) + f" [{recall[k]['pairs']}]" for k in KS)
        print(f"  {name:40s} {cells}   ({row['seconds']:.1f} s)")
    for name, row in result["shortlist"].get("located", {}).items():
        recall = {int(k): v for k, v in row.items()}
        print(f"  {name:40s} " + "  ".join("/".join(f"{recall[k][sub]:.2f}" for sub in subs) + " [-]" for k in KS))
    if "discovery" in result:
        d = result["discovery"]
        print(f"discovery {d['config']}: {d['pairs_verified']} pairs verified ({d.get('two_hop_pairs', 0)} two-hop), "
              f"{d['seconds']:.0f} s ({d['seconds_per_image']:.2f} s/image)")
        print_quality(d["quality"])


def print_quality(quality: dict) -> None:
    for th, q in quality.items():
        by = ", ".join(f"{sub} {v:.2f}" for sub, v in q["recall_by"].items())
        print(f"  >= {th}: {q['n_links']} links, {q['n_true']} true (precision {q['link_precision']:.3f}; "
              f"+{q['n_repeat']} joining one distractor's copies: {q['repeat_precision']:.3f}), "
              f"{q['template_share']:.1%} on template or page layout; pairs: precision {q['pair_precision']:.3f} "
              f"({q['repeat_pair_precision']:.3f} counting pairs that share a distractor), "
              f"recall {q['pair_recall']:.3f} ({by})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", help="an already built multi-source demo folder (reused, not modified)")
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shortlist-only", action="store_true")
    ap.add_argument("--scoring", default=ShortlistConfig.scoring, choices=("votes", "distinctive", "max"))
    ap.add_argument("--groups", default="look", choices=("look", "collection", "none"))
    ap.add_argument("--texture-weight", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--expand", type=int, default=DiscoverConfig.expand,
                    help="rounds of two-hop candidates verified after the shortlist (0: off)")
    ap.add_argument("--expand-k", type=int, default=DiscoverConfig.expand_k)
    ap.add_argument("--pairs", default="knn", choices=("knn", "all"), help="all: verify every pair (the ceiling)")
    ap.add_argument("--mirror", default=DiscoverConfig.mirror, choices=("image", "flip", "off"),
                    help="mirror-aware verification (engine/mirror.py)")
    ap.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE)
    ap.add_argument("--agreement", default=AgreementConfig.mode, choices=AGREEMENT_MODES,
                    help="weigh links by their aligned agreement (hitl/agreement.py) or not")
    ap.add_argument("--first-version", action="store_true",
                    help="the first version's discovery: max-region shortlist on grids 1+8x8, no look-alike cap, "
                         "no texture weighting (the 'before' of the README's table)")
    ap.add_argument("--evaluate", metavar="DEMO_DIR",
                    help="only judge the links already in DEMO_DIR/artminer.duckdb (a project built by this benchmark)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", help="keep the project here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.evaluate:
        with Store(Path(args.evaluate) / "artminer.duckdb") as store:
            quality = quality_table(store, Path(args.evaluate))
        json.dump(quality, sys.stdout, indent=1) if args.json else print_quality(quality)
        return 0
    if args.workdir:
        shutil.rmtree(args.workdir, ignore_errors=True)
        Path(args.workdir).mkdir(parents=True)
    with (contextlib.nullcontext(args.workdir) if args.workdir else tempfile.TemporaryDirectory()) as tmp:
        if args.demo:  # a fresh project over a copy: discovery writes runs and links
            work = fresh_project(Path(args.demo), Path(tmp) / "demo")
        else:
            work = build(Path(tmp) / "demo", args.sources, args.images)
        project = work / "artminer.duckdb"
        paths = ProjectPaths(project)
        with Store(project) as store:
            result = {"shortlist": shortlist_table(store, paths, work, args.device)}
            if not args.shortlist_only:
                config = DiscoverConfig(pairs=args.pairs, k=args.k, expand=args.expand, expand_k=args.expand_k,
                                        groups=args.groups, min_score=args.min_score,
                                        mirror=args.mirror, agreement=AgreementConfig(mode=args.agreement))
                config = replace(config, shortlist=replace(config.shortlist, scoring=args.scoring),
                                 verify=replace(config.verify, texture_weight=args.texture_weight))
                if args.first_version:
                    config = replace(config, groups="none", expand=0, verify=replace(config.verify, texture_weight=False),
                                     mirror="off", masks="off", style=False,
                                     shortlist=SHORTLISTS["max region (first version)"].config)
                result["discovery"] = discovery_table(store, paths, work, config, args.device)
    if args.json:
        json.dump(result, sys.stdout, indent=1, default=str)
        print()
    else:
        print_tables(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
