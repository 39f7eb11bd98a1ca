"""Fine alignment and shared-detail masks on the demo's ground-truth copy pairs.

    python -m benchmarks.align --project DIR/artminer.duckdb --demo DIR [--limit 200]

``DIR`` is a demo built by ``artminer demo`` (it has ``ground_truth_copies.json`` with
each copy's true patch -> image affine and ``masks/`` with each copy's visible mask)
on which discovery has run (``python -m benchmarks.mirror`` leaves one in
``/tmp/artminer-mirror-bench/pairs-image``). Every link of score >= 0.02 whose two boxes
lie mostly on two copies of one motif is a ground-truth pair; for it:

- alignment error: at every 4th pixel of A's copy mask inside the link's box, the
  distance in B's original pixels between where the link maps it and where the copy's
  true transforms put it (T_B T_A^-1), for the affine alone and after the regularised
  flow (engine/align.py); median per link, then median (and mean) over links;
- mask IoU: the shared-detail polygon (engine/cosegment.py) rasterised in A against
  A's copy mask, and in B against B's; beside it the IoU of the link's plain box.

``--montage PNG`` also draws the first four links: A's region with the mask outlined
in green, B finely aligned onto it, and A in grey with the differences in red.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from db.store import Store
from engine.align import refine_alignment
from engine.backbone import create_backbone
from engine.cosegment import link_mask, rasterise
from engine.images import load_rgb
from engine.types import Box
from hitl.demo import DemoInstance, load_copies
from hitl.difference import difference_view, outline
from hitl.discover import DEFAULT_MIN_SCORE


def _homogeneous(flat: tuple[float, ...]) -> np.ndarray:
    return np.vstack([np.asarray(flat, np.float64).reshape(2, 3), [0, 0, 1]])


def true_map(a: DemoInstance, b: DemoInstance) -> np.ndarray:
    """(2, 3) A pixel -> B pixel: through the motif patch both copies were drawn from."""
    return (_homogeneous(b.transform) @ np.linalg.inv(_homogeneous(a.transform)))[:2]


def _mostly_on(box: Box, copy: DemoInstance) -> bool:
    truth = Box(*copy.box)
    ix = max(0.0, min(box.x1, truth.x1) - max(box.x0, truth.x0))
    iy = max(0.0, min(box.y1, truth.y1) - max(box.y0, truth.y0))
    return ix * iy > 0.5 * box.area


def ground_truth_links(store: Store, copies: list[tuple[DemoInstance, Path]]):
    """(link, (copy A, mask A), (copy B, mask B)) for links joining two copies of one motif."""
    names = {im.image_id: Path(im.path).name for im in store.list_images()}
    by_file: dict[str, list] = {}
    for copy, mask in copies:
        by_file.setdefault(copy.file, []).append((copy, mask))
    for link in store.list_links(min_score=DEFAULT_MIN_SCORE):
        on_a = [c for c in by_file.get(names[link.image_a], []) if _mostly_on(link.box_a, c[0])]
        on_b = [c for c in by_file.get(names[link.image_b], []) if _mostly_on(link.box_b, c[0])]
        pair = next(((ca, cb) for ca in on_a for cb in on_b if ca[0].motif == cb[0].motif), None)
        if pair:
            yield link, pair[0], pair[1]


def _iou(x: np.ndarray, y: np.ndarray) -> float:
    union = (x | y).sum()
    return float((x & y).sum() / union) if union else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--demo", required=True, help="the demo folder (ground_truth_copies.json, masks/)")
    parser.add_argument("--limit", type=int, default=200, help="at most this many ground-truth links")
    parser.add_argument("--no-features", action="store_true", help="masks from structure correlation only")
    parser.add_argument("--montage", help="also write a PNG of the first 4 links: A, aligned B, differences")
    args = parser.parse_args(argv)
    store = Store(args.project)
    copies = load_copies(args.demo)
    paths = {im.image_id: im.path for im in store.list_images()}
    backbone = None if args.no_features else create_backbone("effnet-lite0")
    errors_affine, errors_refined, refined, iou_a, iou_b, iou_box, mirrored = [], [], [], [], [], [], []
    seconds, rows = 0.0, []
    for n, (link, (copy_a, mask_a), (copy_b, mask_b)) in enumerate(ground_truth_links(store, copies)):
        if n >= args.limit:
            break
        image_a, image_b = load_rgb(paths[link.image_a]), load_rgb(paths[link.image_b])
        truth_a, truth_b = np.asarray(Image.open(mask_a)) > 0, np.asarray(Image.open(mask_b)) > 0
        box = link.box_a
        ys, xs = np.nonzero(truth_a[::4, ::4])
        points = np.stack([xs * 4 + 0.5, ys * 4 + 0.5], 1)
        points = points[(points[:, 0] >= box.x0) & (points[:, 0] < box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] < box.y1)]
        if len(points) < 10:
            continue
        start = time.perf_counter()
        alignment = refine_alignment(image_a, image_b, box, link.match.affine)
        seconds += time.perf_counter() - start
        truth = points @ true_map(copy_a, copy_b)[:, :2].T + true_map(copy_a, copy_b)[:, 2]
        affine = np.asarray(link.match.affine)
        errors_affine.append(float(np.median(np.linalg.norm(points @ affine[:, :2].T + affine[:, 2] - truth, axis=1))))
        errors_refined.append(float(np.median(np.linalg.norm(alignment.map_points(points) - truth, axis=1))))
        refined.append(alignment.refined)
        mirrored.append(link.match.mirrored)
        found = link_mask(image_a, image_b, box, link.match.affine, backbone=backbone)
        if args.montage and len(rows) < 4:
            view = difference_view(image_a, image_b, box, link.match.affine)
            a = outline(view.a, found.alignment.region, found.polygon_a, (40, 170, 90), width=3)
            rows.append(np.concatenate([np.asarray(p.resize((256, 256))) for p in (a, view.b, view.highlight)], 1))
        height, width = truth_a.shape
        iou_a.append(_iou(rasterise(found.polygon_a, width, height), truth_a))
        iou_b.append(_iou(rasterise(found.polygon_b, *truth_b.shape[::-1]), truth_b))
        box_mask = np.zeros_like(truth_a)
        box_mask[int(box.y0) : int(np.ceil(box.y1)), int(box.x0) : int(np.ceil(box.x1))] = True
        iou_box.append(_iou(box_mask, truth_a))
    store.close()
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(args.montage)
    if not errors_affine:
        print("no ground-truth links found")
        return
    ea, er = np.array(errors_affine), np.array(errors_refined)
    print(f"ground-truth links: {len(ea)} ({sum(mirrored)} mirrored); flow kept on {sum(refined)}")
    print("alignment error, px at original resolution (median over links of per-link medians; mean):")
    print(f"  affine only : {np.median(ea):6.2f}  ({ea.mean():.2f})")
    print(f"  refined     : {np.median(er):6.2f}  ({er.mean():.2f})")
    print(f"  links improved / worsened by > 0.5 px: {(er < ea - 0.5).sum()} / {(er > ea + 0.5).sum()}")
    print(f"  refinement time: {1000 * seconds / len(ea):.0f} ms per link")
    print(f"mask IoU vs the copy's visible mask (median; mean): A {np.median(iou_a):.3f} ({np.mean(iou_a):.3f}), "
          f"B {np.median(iou_b):.3f} ({np.mean(iou_b):.3f}); link box alone in A {np.median(iou_box):.3f} "
          f"({np.mean(iou_box):.3f})" + ("" if backbone else "  [structure only]"))


if __name__ == "__main__":
    main()
