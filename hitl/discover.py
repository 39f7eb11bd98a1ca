"""A discovery run: features -> shortlist -> pair verification -> graph -> clusters -> map.

Chains the engine's steps over a project and writes everything to the store as one run
with its parameters and model. Each batch of verified pairs commits with its links, so
a run killed midway resumes without re-verifying a pair, and a run after an ingest
verifies only the pairs that involve new images (the store remembers every pair a model
has verified, with or without links).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

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
    autocast_dtype,
    collection_features,
)
from engine.graph import GraphConfig, build_clusters, two_hop_pairs
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
    centre_cells,
    global_descriptors,
    look_alike_groups,
    shortlist_pairs,
    unique_pairs,
    vote_scores,
)
from engine.texture import TextureConfig, TextureWeights, collection_counts
from engine.trunk_cache import TrunkByProduct
from engine.types import PairMatch, Region
from engine.verify import VerifyConfig, both_ways, merge_twins, verify_pairs
from hitl.agreement import (
    AgreementConfig,
    ImageViews,
    image_sources,
    weigh_by_agreement,
    weigh_unmeasured_links,
)
from hitl.index import update_index
from hitl.jobs import acquire_discovery_lock, release_discovery_lock
from hitl.masks import compute_link_masks
from hitl.project import ProjectPaths, load_model
from hitl.style_map import store_style_map
from hitl.texture_counts import kept_collection_counts

if TYPE_CHECKING:
    from hitl.executors import Executor

# From this many images on, the shortlist comes from the FAISS region index (issue 12)
# instead of the exact cell votes, whose N^2 cost is ~4 min of one core at 400 images,
# ~26 min at 1,000 (twice that with the mirror images' votes) and ~4 h at 3,000
# (python -m benchmarks.shortlist --votes): at 1,000 images the votes cost about what
# verifying the shortlist does.
ANN_SHORTLIST_FROM = 1000

# Links at or above this discovery score count as found: they build the clusters, seed
# the two-hop candidates and are the default threshold of precision/recall and the review
# queue. On the authors' scale (VerifyConfig.score="authors") 0.03 is their setting for
# LTLL (LTLLCluster.sh; their code's default is 0.015), and was ours until links were
# weighed by their aligned agreement (hitl/agreement.py), which only lowers scores (0.02
# then). With the two-hop candidates (DiscoverConfig.expand) more pairs are verified and
# 0.025 keeps pair precision at 0.02's while recall rises, on the multi-source and the
# single-source demo (README, *Two-hop candidates*).
DEFAULT_MIN_SCORE = 0.025


@dataclass(frozen=True)
class DiscoverConfig:
    pairs: str = "knn"  # "knn": each image with its k most similar; "all": every pair
    k: int = 20  # neighbours per image in the shortlist
    # Rounds of two-hop candidates (engine.graph.two_hop_pairs): after the shortlist's
    # pairs, the image pairs that links at or above min_score chain through one image
    # are verified too, each image keeping its expand_k strongest; 0 = off. On the
    # multi-source demo the shortlist misses 22 of 93 ground-truth pairs, 20 of them
    # across sources; one round reaches 16 of those (README, *Two-hop candidates*).
    expand: int = 1
    expand_k: int = 10
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
    # Links weighed by how well their regions agree once finely aligned (hitl/agreement.py).
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    style: bool = True  # also the style map: images by early-layer statistics (hitl/style_map.py)
    # Keep the frozen trunk's output of every image while computing its features
    # (engine.trunk_cache.TrunkByProduct): a training round then runs only the last stage
    # and never a second full-trunk pass. Costs disk beside the feature cache (README).
    # Only where features run in float32: under bf16 autocast (CPUs with native bf16) the
    # features keep their faster path and the round fills the trunk cache itself.
    trunk_cache: bool = True

    def __post_init__(self) -> None:
        if self.mirror not in MIRROR_MODES:
            raise ValueError(f"mirror must be one of {', '.join(MIRROR_MODES)}, not {self.mirror!r}")
        if self.masks not in ("off", "structure", "features"):
            raise ValueError(f"masks must be off, structure or features, not {self.masks!r}")
        if self.expand < 0 or self.expand_k < 1:
            raise ValueError(f"expand must be >= 0 and expand_k >= 1, not {self.expand} and {self.expand_k}")

    def params(self) -> dict:
        """What makes two runs the same run (stored with it; resume keys on it)."""
        return asdict(self)


@dataclass
class DiscoverReport:
    run_id: int
    model_id: str
    n_images: int
    n_pairs: int
    n_verified_now: int  # pairs verified by this run (the rest were verified by an earlier one)
    n_links: int
    n_clusters: int
    failures: list[str]
    seconds: float
    n_two_hop: int = 0  # of n_verified_now, the two-hop candidates (DiscoverConfig.expand)


def run_discovery(store: Store, paths: ProjectPaths, config: DiscoverConfig = DiscoverConfig(),
                  model: str | None = None, device: str = "auto", progress: bool = True,
                  backbone: Backbone | None = None, executor: Executor | None = None) -> DiscoverReport:
    """Discover repeated details in the project's images with ``model`` (default: active).

    ``executor`` runs feature extraction and pair verification (``hitl.executors``: a
    Ray cluster); None: in this process.

    Raises:
        DiscoveryBusyError: another process is discovering on this project now.
    """
    acquire_discovery_lock(paths)  # one discovery per project: a live run is not resumable
    try:
        return _run_discovery(store, paths, config, model, device, progress, backbone, executor)
    finally:
        release_discovery_lock(paths)


def _run_discovery(store: Store, paths: ProjectPaths, config: DiscoverConfig, model: str | None,
                   device: str, progress: bool, backbone: Backbone | None,
                   executor: Executor | None = None) -> DiscoverReport:
    start = time.perf_counter()
    backbone = backbone or load_model(store, model, device)
    model_id = backbone.model_id
    params = config.params()
    resumed = store.resumable_run(model_id, params)
    run_id = resumed.run_id if resumed else store.start_run(model_id, params)
    try:
        images = [img for img in store.list_images() if Path(img.path).is_file()]
        hashes = {img.image_id: img.sha256 for img in images}
        if executor is not None:  # issue 12: its workers fill the caches; the steps below find them there
            executor.cache_features(backbone, [(i.image_id, i.path) for i in images], hashes, config, paths)
        by_product = (TrunkByProduct(paths.features, backbone, config.features)
                      if config.trunk_cache and _by_product_is_exact(backbone) else None)  # issue 10: one forward, two caches
        feats = collection_features(backbone, [(i.image_id, i.path) for i in images], config.features,
                                    paths.features, progress=progress, hashes=hashes, keep=False, extract=by_product)
        ids = feats.image_ids
        pyramids = CachedPyramids(FeatureCache(paths.features, model_id, config.features), hashes)
        # The one-shot region index follows the collection (new images only).
        update_index(paths, model_id, ids, pyramids, config.features)
        mirrored = _mirrored_pyramids(backbone, images, hashes, pyramids, config, paths)
        weights = texture_weights(texture_pyramids(store, paths, model_id, hashes, config.features, pyramids),
                                  config.verify.texture, ids if config.verify.texture_weight else ())
        desc = image_descriptors(ids, pyramids, config.shortlist, weights=weights)
        groups = _groups(ids, desc, config, {img.image_id: img.collection for img in images})
        pairs = _shortlist(ids, desc, config, groups,
                           lambda: collection_votes(ids, pyramids, weights, config.shortlist, mirrored))
        views = ImageViews(image_sources(images), config.agreement.max_side)

        def verify(todo: list[tuple[str, str]]) -> int:
            if executor is None:
                n = _verify_and_store(store, run_id, todo, pyramids, config, backbone, progress, weights, mirrored)
            else:  # issue 12: e.g. Ray workers, whose links come back in one transaction
                n = executor.verify_and_store(store, paths, run_id, todo, pyramids, config, backbone, progress,
                                              weights, mirrored)
            # Links an older version (or --agreement off) stored: weighed too, so one threshold fits all.
            weigh_unmeasured_links(store, model_id, views, config.agreement, config.min_score)
            return n

        done = store.verified_pairs(model_id)
        n_new = verify([p for p in pairs if tuple(sorted(p)) not in done])
        n_two_hop = _two_hop(store, model_id, set(ids), config, verify)
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
    return DiscoverReport(run_id, model_id, len(ids), len(pairs) + n_two_hop, n_new + n_two_hop,
                          len(links), n_clusters, [f"{f.path}: {f.reason}" for f in feats.failures],
                          time.perf_counter() - start, n_two_hop)


def _two_hop(store: Store, model_id: str, ids: set[str], config: DiscoverConfig,
             verify: Callable[[list[tuple[str, str]]], int]) -> int:
    """Verify ``config.expand`` rounds of two-hop candidates (pairs of ``ids`` not yet
    verified by the model); returns how many pairs were verified."""
    n_pairs = 0
    for _ in range(config.expand):
        found = [lk.match for lk in store.list_links(model_id=model_id) if lk.score >= config.min_score]
        done = store.verified_pairs(model_id)
        todo = [(a, b) for a, b, _ in two_hop_pairs(found, config.graph.overlap_iou, config.expand_k)
                if (a, b) not in done and a in ids and b in ids]
        if not todo:
            break
        n_pairs += verify(todo)
    return n_pairs


def _by_product_is_exact(backbone: Backbone) -> bool:
    """Whether the trunk cache can come with the features at no change to them: the trunk
    splits, and features run in float32 here (the by-product runs the trunk in float32,
    as training does; where features would run under bf16 or fp16 autocast, keeping them
    that way is 3x faster on the CPU and gives the same features whatever the executor)."""
    device = next(backbone.parameters()).device
    return TrunkByProduct.available(backbone) and autocast_dtype(backbone, device) is None


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
                    keep: int = 8192) -> TextureWeights:
    """An image's texture weights per level, computed once and kept (a few KB an image).

    With ``collection`` (image ids), repeats across those images count too (see
    :func:`engine.texture.collection_counts`): one pass over the collection here, O(N^2)
    up to ``config.collection_sample`` images and O(N x sample) above;
    pyramids read from a feature cache keep those counts beside it
    (:mod:`hitl.texture_counts`), where a training round reads them back.
    """
    counts: dict[str, torch.Tensor] = {}
    if len(collection) > 1 and isinstance(pyramids, CachedPyramids):
        counts = kept_collection_counts(pyramids, config, collection)
    elif len(collection) > 1:
        level = [min(config.collection_level, len(pyramids(i).levels) - 1) for i in collection]
        found = collection_counts([pyramids(i).levels[lv] for i, lv in zip(collection, level)], config,
                                  keys=list(collection))
        counts = dict(zip(collection, found))
    return TextureWeights(pyramids, config, counts, keep)


def lineage_root(store: Store, model_id: str) -> str:
    """The pretrained model a fine-tuned one descends from (itself for a pretrained one)."""
    seen = {model_id}
    version = store.get_model(model_id)
    while version is not None and version.ref.parent and version.ref.parent not in seen:
        seen.add(version.ref.parent)
        model_id, version = version.ref.parent, store.get_model(version.ref.parent)
    return model_id


def texture_pyramids(store: Store, paths: ProjectPaths, model_id: str, hashes: dict[str, str],
                     features: FeatureConfig, pyramids: CachedPyramids) -> CachedPyramids:
    """The pyramids texture weights are computed from: those of the model's lineage root
    (the pretrained backbone it was fine-tuned from) when cached for every image, else
    ``pyramids`` (the model's own).

    Repetition is a property of the images, and the texture thresholds (cosine 0.65 within
    an image, 0.75 across images) hold for pretrained features: fine-tuning spreads
    features apart, so the same script and colour bars stop counting as near-duplicates
    (multi-source demo, after one self-supervised round: template cells' median weight
    0.047 -> 0.083, scenery 0.23 -> 0.37, and links on template 4 % -> 14 %).
    """
    root = lineage_root(store, model_id)
    if root == model_id:
        return pyramids
    cache = FeatureCache(paths.features, root, features)
    if not hashes or not all(cache.path(h).is_file() for h in hashes.values()):
        return pyramids
    return CachedPyramids(cache, hashes)


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
                     weights: Callable[[str], tuple[torch.Tensor, ...]] | None, config: ShortlistConfig,
                     mirrored: Callable[[str], FeaturePyramid] | None = None) -> torch.Tensor:
    """(N, N) cell votes between the images (:func:`engine.shortlist.vote_scores`).

    Query cells at ``config.vote_level`` (or the coarsest, for short pyramids), database
    cells at that level and every coarser one; with ``config.vote_centre`` each image's
    cells are centred first (:func:`engine.shortlist.centre_cells`). Exact search: every query cell against
    every database cell, O(N^2): ~26 min of one core at 1,000 images (``ANN_SHORTLIST_FROM``).

    With ``mirrored`` (pyramids of the mirror images), the cells of each mirror image vote
    too and a pair scores the larger of its direct and mirrored votes: a print reverses
    its model, and a reversed detail's cells point at scattered places unflipped.
    """
    def query_levels(n: int) -> range:
        return range(min(config.vote_level, n - 1), min(config.vote_level, n - 1) + 1)

    def database_levels(n: int) -> range:
        return range(min(config.vote_level, n - 1), n)

    use = weights if config.texture_weight else None
    queries, database = cell_bags((pyramids(i) for i in ids), (use(i) for i in ids) if use else None,
                                  query_levels, database_levels)
    if config.vote_centre:
        queries, database = centre_cells(queries), centre_cells(database)
    votes = vote_scores(queries, database, len(ids), config.vote_neighbours, bin_cells=config.vote_bin)
    if mirrored is None:
        return votes
    # A mirror image's cells weigh as the cells they reflect (repetition is mirror-blind).
    flipped = (tuple(w.flip(-1) for w in use(i)) for i in ids) if use else None
    (mirror_queries,) = cell_bags((mirrored(i) for i in ids), flipped, query_levels)
    if config.vote_centre:
        mirror_queries = centre_cells(mirror_queries)
    return torch.maximum(votes, vote_scores(mirror_queries, database, len(ids), config.vote_neighbours,
                                            bin_cells=config.vote_bin))


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
    views = ImageViews(image_sources(store.list_images()), config.agreement.max_side)
    bar = tqdm(total=2 * len(todo), desc="verify pairs both ways", unit="pair", disable=not progress or not todo)
    # Pairs sharing image A run back to back, so its pyramid stays in the reader's memory.
    todo = sorted(todo)
    for start in range(0, len(todo), config.commit_every):
        chunk = todo[start : start + config.commit_every]
        links = verify_both_ways(chunk, pyramids, config, device, weights, mirrored, lambda: bar.update(1), views)
        store.add_links(run_id, links, verified_pairs=chunk)
    bar.close()
    return len(todo)


def verify_both_ways(chunk: Sequence[tuple[str, str]], pyramids: Callable[[str], FeaturePyramid],
                     config: DiscoverConfig, device: torch.device,
                     weights: Callable[[str], tuple[torch.Tensor, ...]] | None = None,
                     mirrored: Callable[[str], FeaturePyramid] | None = None,
                     tick: Callable[[], object] = lambda: None,
                     views: ImageViews | None = None) -> list[PairMatch]:
    """The links of some pairs, each verified A->B and B->A (``tick`` per direction done),
    weighed by their aligned agreement when ``views`` reads the images.

    One unit of work of every executor (this process, or a Ray worker: ``hitl.executors``).
    A pair's two directions go side by side (``both_ways``), in one batch.
    """
    ordered = both_ways(chunk)
    if mirrored is None:
        verified = verify_pairs(ordered, pyramids, config.verify, device, config.batch_size, weights)
    else:
        verified = verify_pairs_mirrored(ordered, pyramids, mirrored, config.verify, device,
                                         config.batch_size, weights)
    found: dict[tuple[str, str], list[PairMatch]] = {}
    for pair, matches in verified:
        found[pair] = [m for m in matches if m.score >= config.min_score / 2]
        tick()
    links = [m for a, b in chunk for m in merge_directions(found[(a, b)], found[(b, a)])]
    return links if views is None else weigh_by_agreement(links, views, config.agreement, config.min_score)


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
