"""One-shot detection and the paper's evaluation over a folder of images.

Chains the engine's steps the way a user runs them: list the collection, load or compute
its cached feature pyramids, stack them into a bank on the device, then query.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from engine.backbone import Backbone
from engine.detect import DetectConfig, FeatureBank, detect, query_features
from engine.evaluate import EvalResult, Query, evaluate
from engine.features import FeatureConfig, FeatureFailure, collection_features
from engine.images import IMAGE_SUFFIXES, load_rgb
from engine.mirror import detect_mirrored, mirror_box
from engine.types import Box, Detection

# Prints reverse their model: by default a query also searches its mirror image
# (engine/mirror.py; benchmarks/mirror.py measures what it gains and costs).
MIRROR_QUERIES = True


def default_cache_root() -> Path:
    """Feature cache for folder collections (projects keep theirs beside the project file)."""
    if os.environ.get("ARTMINER_CACHE"):
        return Path(os.environ["ARTMINER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "artminer" / "features"


def list_images(folder: str | Path) -> list[tuple[str, Path]]:
    """(id, path) of every image under ``folder``; the id is the posix path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"collection folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [(p.relative_to(folder).as_posix(), p) for p in paths]


@dataclass
class LoadedCollection:
    bank: FeatureBank
    paths: dict[str, Path]
    failures: list[FeatureFailure]


def load_collection(backbone: Backbone, items: list[tuple[str, Path]], cache_root: Path | None,
                    feature_config: FeatureConfig = FeatureConfig(), progress: bool = True,
                    hashes: dict[str, str] | None = None) -> LoadedCollection:
    """Features of every readable image, stacked into a bank on the backbone's device."""
    feats = collection_features(backbone, items, feature_config, cache_root, progress=progress, hashes=hashes)
    device = next(backbone.parameters()).device
    # Half precision halves the bank's memory; on the CPU each chunk is matched in float32.
    bank = FeatureBank.build(feats.image_ids, feats.pyramids, device=device, dtype=torch.float16)
    return LoadedCollection(bank, dict(items), feats.failures)


def query_collection(backbone: Backbone, collection: LoadedCollection, query_path: Path, box: Box,
                     config: DetectConfig = DetectConfig(), query_id: str | None = None,
                     mirror: bool = MIRROR_QUERIES) -> list[Detection]:
    """Detections of the detail ``box`` of ``query_path`` over the collection; with
    ``mirror`` its mirror image is searched too (hits marked ``mirrored``)."""
    rgb = load_rgb(query_path)
    query = query_features(backbone, rgb, box, config.query_side, config.query_context, config.score)
    exclude = (query_id, box) if query_id is not None else None
    if not mirror:
        return detect(query, collection.bank, config, exclude=exclude)
    flipped = np.ascontiguousarray(rgb[:, ::-1])
    query_mirror = query_features(backbone, flipped, mirror_box(box, rgb.shape[1]), config.query_side,
                                  config.query_context, config.score)
    return detect_mirrored(query, query_mirror, collection.bank, config, exclude=exclude)


Reranker = Callable[[Query, list[Detection]], list[Detection]]


def evaluate_collection(backbone: Backbone, collection: LoadedCollection, queries: list[Query],
                        config: DetectConfig = DetectConfig(), progress: bool = True,
                        rerank: Reranker | None = None, mirror: bool = MIRROR_QUERIES) -> EvalResult:
    """The paper's one-shot protocol over ``queries`` whose files are in the collection."""
    missing = sorted({q.query.image for q in queries} - set(collection.paths))
    if missing:
        raise FileNotFoundError(f"{len(missing)} query image(s) not in the collection, e.g. {missing[0]}")
    bar = tqdm(total=len(queries), desc="queries", unit="q", disable=not progress)

    def run(q: Query) -> list[Detection]:
        dets = query_collection(backbone, collection, collection.paths[q.query.image], q.query.box, config,
                                query_id=q.query.image, mirror=mirror)
        bar.update(1)
        return rerank(q, dets) if rerank else dets

    result = evaluate(queries, run)
    bar.close()
    return result


def load_project_collection(store, paths, backbone: Backbone, progress: bool = True,
                            feature_config: FeatureConfig = FeatureConfig()) -> LoadedCollection:
    """The project's images (ids are the store's image ids), features cached per model
    under ``artminer-data/features``."""
    images = [img for img in store.list_images() if Path(img.path).is_file()]
    items = [(img.image_id, Path(img.path)) for img in images]
    if not items:
        raise FileNotFoundError(f"project {store.path} has no image files on disk")
    hashes = {img.image_id: img.sha256 for img in images}
    return load_collection(backbone, items, paths.features, feature_config, progress=progress, hashes=hashes)
