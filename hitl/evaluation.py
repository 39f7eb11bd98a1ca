"""Measuring a project's model and discovery against the annotation files attached to it.

Annotation files name images by file name; the project names them by content id. This
module translates between the two and gathers every figure the paper and the issues
ask for: one-shot mAP with and without discovery-score re-ranking, precision and recall
of discovered image pairs at the default threshold, cluster purity and shortlist recall.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from db.store import Store
from engine.backbone import Backbone
from engine.discovery_metrics import (
    cluster_purity,
    ground_truth_pairs,
    pair_precision_recall,
    region_labels,
    shortlist_recall,
)
from engine.evaluate import EvalResult, Instance, Query, load_annotations
from engine.features import CachedPyramids, FeatureCache, FeatureConfig
from engine.mirror import mirror_hash
from engine.shortlist import ShortlistConfig, look_alike_groups, shortlist_pairs
from engine.texture import TextureConfig
from engine.types import Cluster
from hitl.discover import (
    DEFAULT_MIN_SCORE,
    collection_votes,
    image_descriptors,
    texture_pyramids,
    texture_weights,
)
from hitl.oneshot import LoadedCollection, evaluate_collection, load_project_collection
from hitl.project import ProjectPaths
from hitl.rerank import make_reranker


@dataclass
class ProjectEvaluation:
    model_id: str
    oneshot: dict[str, EvalResult] = field(default_factory=dict)
    discovery: dict[str, float] = field(default_factory=dict)
    shortlist_recall: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model": self.model_id,
            "oneshot": {k: {"mAP": r.mean_ap, "top1": r.top1, "per_class": r.per_class} for k, r in self.oneshot.items()},
            "discovery": self.discovery,
            "shortlist_recall": {str(k): v for k, v in self.shortlist_recall.items()},
        }


def project_queries(store: Store) -> list[Query]:
    """Queries of every attached annotation file, with file names turned into image ids."""
    by_name: dict[str, str] = {}
    for img in store.list_images():
        by_name.setdefault(Path(img.path).name, img.image_id)
    queries: list[Query] = []
    for ann in store.list_annotations():
        for q in load_annotations(ann.path):
            ids = [by_name.get(Path(i.image).name) for i in (q.query, *q.targets)]
            if ids[0] is None:
                continue  # the query image is not in the project
            targets = tuple(Instance(i, t.box) for i, t in zip(ids[1:], q.targets) if i is not None)
            if targets:
                queries.append(Query(q.motif, Instance(ids[0], q.query.box), targets))
    return queries


def evaluate_oneshot(backbone: Backbone, collection: LoadedCollection, queries: list[Query], rerank: bool,
                     progress: bool = True) -> dict[str, EvalResult]:
    """One-shot results with cosine similarity, and re-ranked by the discovery score."""
    results = {"cosine": evaluate_collection(backbone, collection, queries, progress=progress)}
    if rerank:
        results["discovery score"] = evaluate_collection(backbone, collection, queries, progress=progress,
                                                         rerank=make_reranker(backbone, collection))
    return results


def evaluate_discovery(store: Store, model_id: str, queries: list[Query]) -> dict[str, float]:
    """Pair precision/recall at the run's threshold and cluster purity of the latest run."""
    runs = [r for r in store.list_runs(model_id=model_id, kind="discovery") if r.status == "done"]
    if not runs:
        return {}
    run = runs[-1]
    min_score = float(run.params.get("min_score", DEFAULT_MIN_SCORE))
    links = [lk for lk in store.list_links(model_id=model_id) if lk.score >= min_score]
    truth = ground_truth_pairs(queries)
    precision, recall = pair_precision_recall({frozenset((lk.image_a, lk.image_b)) for lk in links}, truth)
    clusters = [Cluster(c.number, tuple(r.region for r in c.regions)) for c in store.list_clusters(run_id=run.run_id)]
    labels = region_labels([r for c in clusters for r in c.regions], queries)
    return {
        "run_id": float(run.run_id),
        "min_score": min_score,
        "links": float(len(links)),
        "pair_precision": precision,
        "pair_recall": recall,
        "clusters": float(len(clusters)),
        "cluster_purity": cluster_purity(clusters, labels) if clusters else 0.0,
    }


def evaluate_shortlist(store: Store, paths: ProjectPaths, model_id: str, queries: list[Query],
                       ks=(5, 10, 20, 50)) -> dict[int, float]:
    """Recall of ground-truth image pairs by the k-NN shortlist, from cached features."""
    images = store.list_images()
    hashes = {img.image_id: img.sha256 for img in images}
    cache = FeatureCache(paths.features, model_id, FeatureConfig())
    ids = [i for i in hashes if cache.path(hashes[i]).is_file()]
    if len(ids) < 2:
        return {}
    pyramids = CachedPyramids(cache, hashes)
    config = ShortlistConfig()
    weights = texture_weights(texture_pyramids(store, paths, model_id, {i: hashes[i] for i in ids}, FeatureConfig(),
                                               pyramids), TextureConfig(), ids)
    desc = image_descriptors(ids, pyramids, config, weights=weights)
    # Discovery's mirror-aware votes when it cached the mirror images' features.
    mirror = {i: mirror_hash(hashes[i]) for i in ids}
    mirrored = CachedPyramids(cache, mirror) if all(cache.path(h).is_file() for h in mirror.values()) else None
    votes = collection_votes(ids, pyramids, weights, config, mirrored) if config.scoring == "votes" else None
    groups = look_alike_groups(desc)
    truth = ground_truth_pairs(queries)
    return {k: shortlist_recall({frozenset((ids[i], ids[j])) for i, j, _ in
                                 shortlist_pairs(desc, replace(config, k=k), groups, votes=votes)}, truth) for k in ks}


def evaluate_project(store: Store, paths: ProjectPaths, backbone: Backbone, rerank: bool = True,
                     discovery: bool = True, progress: bool = True) -> ProjectEvaluation:
    queries = project_queries(store)
    if not queries:
        raise ValueError(f"{store.path}: no attached annotation file names images of the project "
                         "(attach one with `artminer ingest --annotations FILE`)")
    result = ProjectEvaluation(backbone.model_id)
    collection = load_project_collection(store, paths, backbone, progress=progress)
    result.oneshot = evaluate_oneshot(backbone, collection, queries, rerank, progress)
    if discovery:
        result.discovery = evaluate_discovery(store, backbone.model_id, queries)
        result.shortlist_recall = evaluate_shortlist(store, paths, backbone.model_id, queries)
    return result
