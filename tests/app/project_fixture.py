"""Small ready-to-review projects for the app tests, built without the heavy engine.

`build_app_project` draws a 12-image demo collection (`hitl.demo`), ingests it, and
writes what a discovery run would have written, from the demo's ground truth: true
links between copies of one motif (good scores), a few false links (low scores), one
cluster per motif and the image and region maps. One title is hostile text, so the
tests can check that metadata is never rendered as HTML or Markdown.

`build_map_project` writes a project whose map has ``n`` points (no image files), for
timing the map page.

To run the browser test on the real pipeline instead, point `ARTMINER_TEST_PROJECT`
at a project made by ``artminer demo`` + ``artminer discover`` (see test_browser.py).
"""

from __future__ import annotations

import csv
from itertools import combinations
from pathlib import Path

import numpy as np

from db.records import ImageRecord
from db.store import Store
from engine.types import Box, Cluster, ModelRef, PairMatch, Region
from hitl.demo import build_demo
from hitl.ingest import ingest_paths
from hitl.views.query_links import box_affine

MODEL = "effnet-lite0"
HOSTILE_TITLE = "<script>alert('x')</script> **bold** <b>tag</b>"


def build_app_project(root: Path, n_images: int = 12, seed: int = 0) -> Path:
    """A project file under ``root`` with links, clusters and maps; returns its path."""
    demo = build_demo(root / "demo", seed=seed, n_images=n_images, n_motifs=4, progress=False)
    _make_title_hostile(demo.metadata)
    project = root / "artminer.duckdb"
    store = Store(project)
    ingest_paths(store, [demo.images_dir], metadata_csv=demo.metadata, progress=False)
    ids = {Path(im.path).name: im.image_id for im in store.list_images()}
    store.add_model(ModelRef(MODEL, MODEL))
    store.set_active_model(MODEL)
    run = store.start_run(MODEL, {"min_score": 0.02, "fixture": True})
    true, false = _matches(demo.instances, ids)
    link_ids = store.add_links(run, true + false)
    clusters, region_links = _clusters(true, link_ids)
    store.add_clusters(run, clusters, region_links)
    store.finish_run(run)
    _maps(store, sorted(ids.values()), link_ids, seed)
    store.close()
    return project


def build_map_project(root: Path, n: int = 10_000, seed: int = 0) -> Path:
    """A project whose image map has ``n`` points spread over 20 groups (no image files)."""
    root.mkdir(parents=True, exist_ok=True)
    project = root / "map.duckdb"
    store = Store(project)
    rng = np.random.default_rng(seed)
    artists = [f"Artist {i}" for i in range(30)]
    store.add_images(ImageRecord(f"{i:016x}", f"{i:064x}", f"/nowhere/{i}.jpg", 400, 300,
                                 title=f"Artwork {i}", artist=artists[i % 30], date=str(1500 + i % 200),
                                 year=1500 + i % 200, medium="oil") for i in range(n))
    store.add_model(ModelRef(MODEL, MODEL))
    store.set_active_model(MODEL)
    store.finish_run(store.start_run(MODEL, {}))
    groups = rng.integers(-1, 20, n)
    xy = rng.normal(size=(n, 2)) + np.stack([np.cos(groups), np.sin(groups)], 1) * 4
    store.save_map(MODEL, "image", [f"{i:016x}" for i in range(n)], xy, groups)
    store.close()
    return project


def _make_title_hostile(metadata: Path) -> None:
    rows = list(csv.DictReader(metadata.open(encoding="utf-8")))
    rows[0]["title"] = HOSTILE_TITLE
    with metadata.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _matches(instances, ids: dict[str, str]) -> tuple[list[PairMatch], list[PairMatch]]:
    """True links: every pair of copies of a motif; false: a few pairs of unrelated copies."""
    true = []
    for motif in sorted({i.motif for i in instances}):
        copies = [i for i in instances if i.motif == motif]
        for k, (a, b) in enumerate(combinations(copies, 2)):
            box_a, box_b = Box(*a.box), Box(*b.box)
            score = round(0.3 - 0.02 * k - 0.01 * len(true) / 10, 4)
            affine = box_affine(box_a, box_b)
            true.append(PairMatch(ids[a.file], ids[b.file], box_a, box_b, affine, score, 40 - k,
                                  inliers=_grid_points(box_a, affine), agreement=0.61))
    false = []
    for k, (a, b) in enumerate(zip(instances[::3], instances[1::3])):
        if a.motif != b.motif and a.file != b.file:
            box_a, box_b = Box(*a.box), Box(*b.box)
            false.append(PairMatch(ids[a.file], ids[b.file], box_a, box_b,
                                   box_affine(box_a, box_b), 0.015 + 0.001 * k, 6))
    return true, false


def _grid_points(box: Box, affine) -> tuple[tuple[float, float, float, float], ...]:
    """A 4 x 4 grid of points inside ``box`` and their images under ``affine``: the
    inliers verification would have stored (the false links get none, like old links)."""
    (a, b, c), (d, e, f) = affine
    xs = np.linspace(box.x0, box.x1, 6)[1:-1]
    ys = np.linspace(box.y0, box.y1, 6)[1:-1]
    return tuple((float(x), float(y), a * x + b * y + c, d * x + e * y + f) for y in ys for x in xs)


def _clusters(true: list[PairMatch], link_ids: list[int]):
    """One cluster per connected group of true links (= per motif here)."""
    region_links: dict[Region, int] = {}
    groups: list[set[Region]] = []
    for match, link_id in zip(true, link_ids):
        ra, rb = Region(match.image_a, match.box_a), Region(match.image_b, match.box_b)
        region_links.setdefault(ra, link_id)
        region_links.setdefault(rb, link_id)
        touching = [g for g in groups if ra in g or rb in g]
        merged = set().union(*touching, {ra, rb})
        groups = [g for g in groups if g not in touching] + [merged]
    clusters = [Cluster(i, tuple(sorted(g, key=lambda r: (r.image_id, r.box.as_list()))))
                for i, g in enumerate(groups)]
    return clusters, region_links


def _maps(store: Store, image_ids: list[str], link_ids: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.normal(size=(len(image_ids), 2))
    store.save_map(MODEL, "image", image_ids, xy, [i % 3 for i in range(len(image_ids))])
    regions = [f"{k}:{side}" for k in link_ids for side in "ab"]
    store.save_map(MODEL, "region", regions, rng.normal(size=(len(regions), 2)),
                   [i % 4 for i in range(len(regions))])
