"""A discovery run: features -> shortlist -> pair verification -> graph -> clusters -> map.

Chains the engine's steps over a project and writes everything to the store as one run
with its parameters and model. Each batch of verified pairs commits with its links, so
a run killed midway resumes without re-verifying a pair, and a run after an ingest
verifies only the pairs that involve new images (the store remembers every pair a model
has verified, with or without links).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from db.store import Store
from engine.ann_index import ann_knn_graph
from engine.backbone import Backbone
from engine.embed import density_groups, image_descriptor_matrix, map_2d
from engine.features import (
    CachedPyramids,
    FeatureCache,
    FeatureConfig,
    FeaturePyramid,
    collection_features,
)
from engine.graph import GraphConfig, build_clusters
from engine.mirror import (
    MIRROR_MODES,
    cache_mirrored_features,
    flip_pyramid,
    mirror_hash,
    verify_pairs_mirrored,
)
from engine.shortlist import (
    ShortlistConfig,
    all_pairs,
    cell_bags,
    global_descriptors,
    look_alike_groups,
    shortlist_pairs,
    unique_pairs,
    vote_scores,
)
from engine.texture import TextureConfig, collection_counts, combined_weights
from engine.trunk_cache import TrunkByProduct
from engine.types import PairMatch, Region
from engine.verify import VerifyConfig, merge_twins, verify_pairs
from hitl.index import update_index
from hitl.jobs import acquire_discovery_lock, release_discovery_lock
from hitl.masks import compute_link_masks
from hitl.project import ProjectPaths, load_model
from hitl.style_map import store_style_map

# issue 12: from this many images on, the shortlist comes from the FAISS region index
# instead of the exact k-NN over all region pairs, whose N^2 cost is ~20 s of one core
# at 1,000 images and ~1.2 h at 10,000 (python -m benchmarks.shortlist).
ANN_SHORTLIST_FROM = 3000

# Links at or above this discovery score (paper eq. 2) count as found: they build the
# clusters and are the default threshold of precision/recall and the review queue.
DEFAULT_MIN_SCORE = 0.02


@dataclass(frozen=True)
class DiscoverConfig:
    pairs: str = "knn"  # "knn": each image with its k most similar; "all": every pair
    k: int = 20  # neighbours per image in the shortlist
    # Look-alike groups that cap an image's neighbours from its own group: "look" clusters
    # global appearance (works without metadata); "collection" uses the metadata where
    # every image has one and falls back to "look"; "none": no cap.
    groups: str = "look"
    min_score: float = DEFAULT_MIN_SCORE  # links below are stored but not clustered
    batch_size: int = 32  # pairs verified together on the device
    commit_every: int = 256  # pairs per store transaction (the resume granularity)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    shortlist: ShortlistConfig = field(default_factory=ShortlistConfig)
    # Mirrored copies (prints reverse their model): "image" verifies each pair against
    # the features of the flipped image too, "flip" against the flipped feature maps
    # (cheaper, approximate), "off" not at all. On the demo, recall of mirrored copy pairs
    # 0.298 / 0.213 / 0.085; verification 112 vs 51 ms per pair, "image" adds 0.48 s of
    # features per image (benchmarks/mirror.py, README).
    mirror: str = "image"
    # Shared-detail masks of found links (hitl/masks.py, engine/cosegment.py): "features"
    # adds the backbone's finer-scale similarity to the structure correlation, which
    # "structure" uses alone (fast); "off" stores none.
    masks: str = "features"
    style: bool = True  # also the style map: images by early-layer statistics (hitl/style_map.py)
    # Keep the frozen trunk's output of every image while computing its features
    # (engine.trunk_cache.TrunkByProduct): a training round then runs only the last stage
    # and never a second full-trunk pass. Costs disk beside the feature cache (README).
    trunk_cache: bool = True

    def __post_init__(self) -> None:
        if self.mirror not in MIRROR_MODES:
            raise ValueError(f"mirror must be one of {', '.join(MIRROR_MODES)}, not {self.mirror!r}")
        if self.masks not in ("off", "structure", "features"):
            raise ValueError(f"masks must be off, structure or features, not {self.masks!r}")

    def params(self) -> dict:
        """What makes two runs the same run (stored with it; resume keys on it)."""
        return asdict(self)


@dataclass
class DiscoverReport:
    run_id: int
    model_id: str
    n_images: int
    n_pairs: int
    n_verified_now: int
    n_links: int
    n_clusters: int
    failures: list[str]
    seconds: float


def run_discovery(store: Store, paths: ProjectPaths, config: DiscoverConfig = DiscoverConfig(),
                  model: str | None = None, device: str = "auto", progress: bool = True,
                  backbone: Backbone | None = None) -> DiscoverReport:
    """Discover repeated details in the project's images with ``model`` (default: active).

    Raises:
        DiscoveryBusyError: another process is discovering on this project now.
    """
    acquire_discovery_lock(paths)  # one discovery per project: a live run is not resumable
    try:
        return _run_discovery(store, paths, config, model, device, progress, backbone)
    finally:
        release_discovery_lock(paths)


def _run_discovery(store: Store, paths: ProjectPaths, config: DiscoverConfig, model: str | None,
                   device: str, progress: bool, backbone: Backbone | None) -> DiscoverReport:
    start = time.perf_counter()
    backbone = backbone or load_model(store, model, device)
    model_id = backbone.model_id
    params = config.params()
    resumed = store.resumable_run(model_id, params)
    run_id = resumed.run_id if resumed else store.start_run(model_id, params)
    try:
        images = [img for img in store.list_images() if Path(img.path).is_file()]
        hashes = {img.image_id: img.sha256 for img in images}
        by_product = (TrunkByProduct(paths.features, backbone, config.features)
                      if config.trunk_cache and TrunkByProduct.available(backbone) else None)  # issue 10: one forward, two caches
        feats = collection_features(backbone, [(i.image_id, i.path) for i in images], config.features,
                                    paths.features, progress=progress, hashes=hashes, keep=False, extract=by_product)
        ids = feats.image_ids
        pyramids = CachedPyramids(FeatureCache(paths.features, model_id, config.features), hashes)
        # The one-shot region index follows the collection (new images only).
        update_index(paths, model_id, ids, pyramids, config.features)
        mirrored = _mirrored_pyramids(backbone, images, hashes, pyramids, config, paths)
        weights = texture_weights(pyramids, config.verify.texture, ids if config.verify.texture_weight else ())
        desc = image_descriptors(ids, pyramids, config.shortlist, weights=weights)
        groups = _groups(ids, desc, config, {img.image_id: img.collection for img in images})
        pairs = _shortlist(ids, desc, config, groups, lambda: collection_votes(ids, pyramids, weights, config.shortlist))
        done = store.verified_pairs(model_id)
        todo = [p for p in pairs if tuple(sorted(p)) not in done]
        n_new = _verify_and_store(store, run_id, todo, pyramids, config, backbone, progress, weights, mirrored)
        links = [lk for lk in store.list_links(model_id=model_id) if lk.score >= config.min_score]
        if config.masks != "off":
            compute_link_masks(store, links, backbone if config.masks == "features" else None, progress=progress)
        n_clusters = _store_clusters(store, run_id, links, config.graph)
        _store_maps(store, model_id, ids, desc, links, pyramids)
        if config.style:
            store_style_map(store, backbone, progress=progress)
        store.finish_run(run_id, "done")
    except BaseException as err:
        store.finish_run(run_id, "failed", error=f"{type(err).__name__}: {err}")
        raise
    return DiscoverReport(run_id, model_id, len(ids), len(pairs), n_new, len(links), n_clusters,
                          [f"{f.path}: {f.reason}" for f in feats.failures], time.perf_counter() - start)


def image_descriptors(ids: list[str], pyramids: CachedPyramids, config: ShortlistConfig, chunk: int = 256,
                      weights: Callable[[str], tuple[torch.Tensor, ...]] | None = None) -> torch.Tensor:
    """(N, R, C) regional descriptors, computed a chunk of images at a time.

    ``weights``: an image's texture weights per level (default: computed here when the
    config asks for texture weighting).
    """
    if weights is None and config.texture_weight:
        weights = texture_weights(pyramids, TextureConfig())
    parts = [global_descriptors([pyramids(i) for i in ids[s : s + chunk]], config,
                                [weights(i) for i in ids[s : s + chunk]] if weights else None)
             for s in range(0, len(ids), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0)


def texture_weights(pyramids: Callable[[str], FeaturePyramid], config: TextureConfig, collection: Sequence[str] = (),
                    keep: int = 8192) -> Callable[[str], tuple[torch.Tensor, ...]]:
    """An image's texture weights per level, computed once and kept (a few KB an image).

    With ``collection`` (image ids), repeats across those images count too (see
    :func:`engine.texture.collection_counts`): one pass over the collection here.
    """
    counts: dict[str, torch.Tensor] = {}
    if len(collection) > 1:
        level = [min(config.collection_level, len(pyramids(i).levels) - 1) for i in collection]
        found = collection_counts([pyramids(i).levels[lv] for i, lv in zip(collection, level)], config)
        counts = dict(zip(collection, found))
    return functools.lru_cache(maxsize=keep)(
        lambda image_id: combined_weights(pyramids(image_id), counts.get(image_id), config))


def _groups(ids: list[str], desc: torch.Tensor, config: DiscoverConfig,
            collection_of: dict[str, str | None]) -> np.ndarray | None:
    """Look-alike group of each image (see ``DiscoverConfig.groups``), or None for no cap."""
    if config.groups == "none" or len(ids) < 2:
        return None
    if config.groups == "collection" and all(collection_of.get(i) for i in ids):
        names = sorted({collection_of[i] for i in ids})
        return np.array([names.index(collection_of[i]) for i in ids], dtype=np.int64)
    if config.groups not in ("look", "collection"):
        raise ValueError(f"--groups must be 'look', 'collection' or 'none', not {config.groups!r}")
    return look_alike_groups(desc)


def collection_votes(ids: Sequence[str], pyramids: Callable[[str], FeaturePyramid],
                     weights: Callable[[str], tuple[torch.Tensor, ...]] | None, config: ShortlistConfig) -> torch.Tensor:
    """(N, N) cell votes between the images (:func:`engine.shortlist.vote_scores`).

    Query cells at ``config.vote_level`` (or the coarsest, for short pyramids), database
    cells at that level and every coarser one. Exact search: every query cell against
    every database cell, fine to a few thousand images on a CPU.
    """
    def query_levels(n: int) -> range:
        return range(min(config.vote_level, n - 1), min(config.vote_level, n - 1) + 1)

    def database_levels(n: int) -> range:
        return range(min(config.vote_level, n - 1), n)

    use = weights if config.texture_weight else None
    queries, database = cell_bags((pyramids(i) for i in ids), (use(i) for i in ids) if use else None,
                                  query_levels, database_levels)
    return vote_scores(queries, database, len(ids), config.vote_neighbours)


def _shortlist(ids: list[str], desc: torch.Tensor, config: DiscoverConfig, groups: np.ndarray | None = None,
               votes: Callable[[], torch.Tensor] | None = None) -> list[tuple[str, str]]:
    if len(ids) < 2:
        return []
    if config.pairs == "all":
        index_pairs = all_pairs(len(ids))
    elif config.pairs == "knn" and len(ids) >= ANN_SHORTLIST_FROM:
        pairs, _ = unique_pairs(*ann_knn_graph(desc, config.k))
        index_pairs = [(int(i), int(j)) for i, j in pairs.tolist()]
    elif config.pairs == "knn":
        shortlist = replace(config.shortlist, k=config.k)
        scores = votes() if (shortlist.scoring == "votes" and votes is not None) else None
        index_pairs = [(i, j) for i, j, _ in shortlist_pairs(desc, shortlist, groups, votes=scores)]
    else:
        raise ValueError(f"--pairs must be 'all' or 'knn', not {config.pairs!r}")
    return [(ids[i], ids[j]) for i, j in index_pairs]


def _mirrored_pyramids(backbone: Backbone, images, hashes: dict[str, str], pyramids: CachedPyramids,
                       config: DiscoverConfig, paths: ProjectPaths) -> Callable[[str], FeaturePyramid] | None:
    """Pyramids of the mirror images for ``config.mirror`` (None when off)."""
    if config.mirror == "flip":
        return lambda image_id: flip_pyramid(pyramids(image_id))
    if config.mirror == "image":
        cache_mirrored_features(backbone, [(i.image_id, i.path) for i in images if i.image_id in hashes],
                                hashes, config.features, paths.features)
        cache = FeatureCache(paths.features, backbone.model_id, config.features)
        return CachedPyramids(cache, {i: mirror_hash(h) for i, h in hashes.items()})
    return None


def _verify_and_store(store: Store, run_id: int, todo: list[tuple[str, str]], pyramids: CachedPyramids,
                      config: DiscoverConfig, backbone: Backbone, progress: bool,
                      weights: Callable[[str], tuple[torch.Tensor, ...]] | None = None,
                      mirrored: Callable[[str], FeaturePyramid] | None = None) -> int:
    """Verify pairs in both directions, in batches; a batch's links and pairs commit together.

    Verification searches A's reference level across B's scales, so it finds a copy only
    where it is at least as large in B as in A: each pair is verified both ways and a
    region found both ways is kept once.
    """
    device = next(backbone.parameters()).device
    bar = tqdm(total=2 * len(todo), desc="verify pairs both ways", unit="pair", disable=not progress or not todo)
    # Pairs sharing image A run back to back, so its pyramid stays in the reader's memory.
    todo = sorted(todo)
    for start in range(0, len(todo), config.commit_every):
        chunk = todo[start : start + config.commit_every]
        ordered = chunk + [(b, a) for a, b in chunk]
        found: dict[tuple[str, str], list[PairMatch]] = {}
        if mirrored is None:
            verified = verify_pairs(ordered, pyramids, config.verify, device, config.batch_size, weights)
        else:
            verified = verify_pairs_mirrored(ordered, pyramids, mirrored, config.verify, device,
                                             config.batch_size, weights)
        for pair, matches in verified:
            found[pair] = [m for m in matches if m.score >= config.min_score / 2]
            bar.update(1)
        links = [m for a, b in chunk for m in merge_directions(found[(a, b)], found[(b, a)])]
        store.add_links(run_id, links, verified_pairs=chunk)
    bar.close()
    return len(todo)


def merge_directions(forward: list[PairMatch], backward: list[PairMatch], iou: float = 0.5) -> list[PairMatch]:
    """Matches of A->B plus those of B->A that are not the same region pair seen backwards."""
    return merge_twins(forward, backward, lambda f, m: f.box_a.iou(m.box_b) > iou and f.box_b.iou(m.box_a) > iou)


def _store_clusters(store: Store, run_id: int, links, graph: GraphConfig) -> int:
    result = build_clusters([lk.match for lk in links], graph)
    region_links: dict[Region, int] = {}
    for link, cluster_index in zip(links, result.match_cluster):
        if cluster_index >= 0:
            region_links.setdefault(Region(link.image_a, link.box_a), link.link_id)
            region_links.setdefault(Region(link.image_b, link.box_b), link.link_id)
    store.add_clusters(run_id, result.clusters, region_links)
    return len(result.clusters)


def _store_maps(store: Store, model_id: str, ids: list[str], desc: torch.Tensor, links, pyramids: CachedPyramids) -> None:
    """UMAP + HDBSCAN of the images, and of the detail regions of found links."""
    if not ids:
        return
    xy = map_2d(image_descriptor_matrix(desc))
    store.save_map(model_id, "image", ids, xy, density_groups(xy))
    regions = {Region(lk.image_a, lk.box_a): f"{lk.link_id}:a" for lk in links}
    regions.update({Region(lk.image_b, lk.box_b): f"{lk.link_id}:b" for lk in links})
    if len(regions) >= 2:
        vectors = np.stack([region_descriptor(pyramids(r.image_id), r) for r in regions])
        rxy = map_2d(vectors)
        store.save_map(model_id, "region", list(regions.values()), rxy, density_groups(rxy))


def region_descriptor(pyramid, region: Region) -> np.ndarray:
    """Mean of the reference-level features whose cells lie in the region, L2-normalised."""
    level = pyramid.reference.float()
    _, h, w = level.shape
    cx, cy = pyramid.cell_size(0)
    box = region.box
    c0, c1 = int(box.x0 // cx), max(int(np.ceil(box.x1 / cx)), int(box.x0 // cx) + 1)
    r0, r1 = int(box.y0 // cy), max(int(np.ceil(box.y1 / cy)), int(box.y0 // cy) + 1)
    cells = level[:, min(r0, h - 1) : min(r1, h), min(c0, w - 1) : min(c1, w)]
    return F.normalize(cells.mean(dim=(1, 2)), dim=0).numpy()
