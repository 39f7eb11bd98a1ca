"""Mirrored copies on the demo: recall of mirrored ground-truth copies and the time it costs.

    python -m benchmarks.mirror [--workdir DIR] [--modes off,flip,image] [--k 20] [--device cpu]
    python -m benchmarks.mirror [--workdir DIR] --cost 60     # CPU time per pair and image

Builds the 60-image demo (seed 0, as ``artminer demo``) in ``DIR/demo`` unless it is
there, whose ``ground_truth_copies.json`` says which copies are flipped. A pair of copies
of one motif in two images is *mirrored* when exactly one of them is flipped.

Pairs: for each mirror mode a fresh copy of the project runs the whole discovery
(``hitl.discover.run_discovery``; features are computed once, before the copies, so
only the mirror image's features count in a mode's time). A copy pair is found when a
link of score >= 0.02 joins the two images with each box lying mostly (> 50 % of its
area) on that image's copy. Printed: recall of mirrored and of direct copy pairs, links,
share of links marked mirrored, and the discovery's wall time.

One-shot: every copy queries the collection (paper §5.2, top 100) with and without the
mirrored query; printed: recall of its mirrored and direct targets at IoU > 0.3 in the
top 100, mAP (the paper's protocol) and milliseconds per query.
"""

from __future__ import annotations

import argparse
import shutil
import time
from itertools import combinations
from pathlib import Path

import torch

from engine.evaluate import Instance, Query, evaluate
from engine.types import Box
from hitl.demo import DemoInstance, load_copies
from hitl.discover import DEFAULT_MIN_SCORE, DiscoverConfig, run_discovery
from hitl.oneshot import load_project_collection, query_collection
from hitl.project import load_model, open_project


def ensure_demo(workdir: Path) -> Path:
    """The demo project under ``workdir/demo`` with its features cached."""
    demo = workdir / "demo"
    if not (demo / "artminer.duckdb").is_file():
        from hitl.cli import main

        main(["demo", "--out", str(demo), "--quiet"])
    return demo


def copy_pairs(copies: list[DemoInstance]) -> list[tuple[DemoInstance, DemoInstance, bool]]:
    """(copy, copy, mirrored) for every two copies of one motif in different images."""
    return [(a, b, a.flipped != b.flipped) for a, b in combinations(copies, 2)
            if a.motif == b.motif and a.file != b.file]


def _on_copy(box: Box, copy: DemoInstance) -> bool:
    """More than half of ``box`` lies on the copy's box."""
    truth = Box(*copy.box)
    ix = max(0.0, min(box.x1, truth.x1) - max(box.x0, truth.x0))
    iy = max(0.0, min(box.y1, truth.y1) - max(box.y0, truth.y0))
    return ix * iy > 0.5 * box.area


def pair_found(links, a: DemoInstance, b: DemoInstance, names: dict[str, str]) -> bool:
    for lk in links:
        files = (names[lk.image_a], names[lk.image_b])
        if files == (a.file, b.file) and _on_copy(lk.box_a, a) and _on_copy(lk.box_b, b):
            return True
        if files == (b.file, a.file) and _on_copy(lk.box_a, b) and _on_copy(lk.box_b, a):
            return True
    return False


def pairs_benchmark(demo: Path, workdir: Path, modes: list[str], k: int, device: str) -> None:
    copies = [c for c, _ in load_copies(demo)]
    truth = copy_pairs(copies)
    n_mirrored = sum(m for _, _, m in truth)
    print(f"demo: {len(copies)} copies, {sum(c.flipped for c in copies)} flipped; "
          f"{len(truth)} copy pairs, {n_mirrored} mirrored")
    store, paths = open_project(demo / "artminer.duckdb")
    backbone = load_model(store, None, device)
    load_project_collection(store, paths, backbone, progress=False)  # features cached once, untimed
    store.close()
    print(f"{'mode':<6} {'mirrored recall':>15} {'direct recall':>13} {'links':>6} {'mirrored links':>14} {'seconds':>8}")
    for mode in modes:
        target = workdir / f"pairs-{mode}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copy(demo / "artminer.duckdb", target / "artminer.duckdb")
        shutil.copytree(demo / "artminer-data", target / "artminer-data")
        store, paths = open_project(target / "artminer.duckdb")
        start = time.perf_counter()
        run_discovery(store, paths, DiscoverConfig(k=k, mirror=mode, masks="off", style=False), progress=False, backbone=backbone)
        seconds = time.perf_counter() - start
        names = {im.image_id: Path(im.path).name for im in store.list_images()}
        links = store.list_links(min_score=DEFAULT_MIN_SCORE)
        store.close()
        found = [(m, pair_found(links, a, b, names)) for a, b, m in truth]
        recall = {flag: sum(f for m, f in found if m == flag) / max(1, sum(m == flag for m, _ in found))
                  for flag in (True, False)}
        print(f"{mode:<6} {recall[True]:>15.3f} {recall[False]:>13.3f} {len(links):>6} "
              f"{sum(lk.match.mirrored for lk in links):>14} {seconds:>8.1f}")


def oneshot_benchmark(demo: Path, device: str) -> None:
    copies = [c for c, _ in load_copies(demo)]
    store, paths = open_project(demo / "artminer.duckdb")
    backbone = load_model(store, None, device)
    collection = load_project_collection(store, paths, backbone, progress=False)
    ids = {Path(im.path).name: im.image_id for im in store.list_images()}
    store.close()
    queries = [(q, [t for t in copies if t.motif == q.motif and t is not q]) for q in copies]
    print(f"{'query':<9} {'mirrored recall@100':>19} {'direct recall@100':>17} {'mAP':>6} {'ms/query':>9}")
    protocol = {Query(q.motif, Instance(ids[q.file], Box(*q.box)),
                      tuple(Instance(ids[t.file], Box(*t.box)) for t in targets)): (q, targets)
                for q, targets in queries}
    for mirror in (False, True):
        hits: dict[bool, list[bool]] = {True: [], False: []}

        def run(p: Query, mirror: bool = mirror, hits: dict = hits) -> list:
            q, targets = protocol[p]
            dets = query_collection(backbone, collection, collection.paths[p.query.image], p.query.box,
                                    query_id=p.query.image, mirror=mirror)
            for t in targets:
                found = any(d.image_id == ids[t.file] and d.box.iou(Box(*t.box)) > 0.3 for d in dets)
                hits[q.flipped != t.flipped].append(found)
            return dets

        start = time.perf_counter()
        m_ap = evaluate(list(protocol), run).mean_ap
        ms = 1000 * (time.perf_counter() - start) / len(protocol)
        label = "+mirror" if mirror else "direct"
        print(f"{label:<9} {sum(hits[True]) / len(hits[True]):>19.3f} {sum(hits[False]) / len(hits[False]):>17.3f} "
              f"{m_ap:>6.3f} {ms:>9.0f}")


def cost_benchmark(demo: Path, n_pairs: int, n_images: int, device: str) -> None:
    """CPU seconds (process time, robust to a shared machine) of mirror awareness:
    verifying ``n_pairs`` shortlist pairs plain, with flipped feature maps and with the
    flipped images' features, and extracting the flipped features of ``n_images``."""
    from engine.features import CachedPyramids, FeatureCache, FeatureConfig, extract_pyramid
    from engine.images import load_rgb
    from engine.mirror import flip_pyramid, verify_pairs_mirrored
    from engine.verify import verify_pairs

    store, paths = open_project(demo / "artminer.duckdb")
    backbone = load_model(store, None, device)
    images = store.list_images()
    store.close()
    hashes = {im.image_id: im.sha256 for im in images}
    pyramids = CachedPyramids(FeatureCache(paths.features, backbone.model_id, FeatureConfig()), hashes)
    ids = [im.image_id for im in images]
    pairs = [(ids[i], ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids))][:: max(1, len(ids) // 2)]
    pairs = pairs[:n_pairs]
    start = time.process_time()
    for im in images[:n_images]:  # as cache_mirrored_features: decode, flip, extract
        flipped = load_rgb(im.path, max_side=1280)[:, ::-1].copy()
        extract_pyramid(backbone, flipped, FeatureConfig())
    per_image = (time.process_time() - start) / n_images
    mirrored = {i: flip_pyramid(pyramids(i)) for i in ids}  # stands in for the cached flipped features
    for i in ids:
        pyramids(i)
    runs = {
        "plain": lambda: list(verify_pairs(pairs, pyramids, device=device)),
        "mirror": lambda: list(verify_pairs_mirrored(pairs, pyramids, mirrored.__getitem__, device=device)),
    }
    cost = {}
    for name, run in runs.items():
        start = time.process_time()
        run()
        cost[name] = 1000 * (time.process_time() - start) / len(pairs)
    print(f"CPU time: verification {cost['plain']:.0f} ms per pair plain, {cost['mirror']:.0f} ms with its "
          f"mirror ({len(pairs)} pairs, either mirror mode: the same work once the pyramid is there); "
          f"features of a flipped image {per_image:.2f} s (mode image only; {n_images} images)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/artminer-mirror-bench")
    parser.add_argument("--modes", default="off,flip,image")
    parser.add_argument("--k", type=int, default=20, help="shortlist neighbours per image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-pairs", action="store_true")
    parser.add_argument("--skip-oneshot", action="store_true")
    parser.add_argument("--cost", type=int, default=0, help="only the CPU cost on this many pairs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    workdir = Path(args.workdir)
    demo = ensure_demo(workdir)
    if args.cost:
        cost_benchmark(demo, args.cost, 8, args.device)
        return
    if not args.skip_oneshot:
        oneshot_benchmark(demo, args.device)
    if not args.skip_pairs:
        pairs_benchmark(demo, workdir, args.modes.split(","), args.k, args.device)


if __name__ == "__main__":
    main()
