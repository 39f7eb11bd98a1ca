"""The project's region index for one-shot queries (issue 12, two-stage detection).

One index per model, in ``artminer-data/index/<model>/<feature key>-<index key>/``
(``regions.faiss`` + ``meta.json`` naming the model it belongs to). Discovery builds it;
a later discovery or query adds the images it lacks (no rebuild); it is rebuilt from the
feature cache only when it outgrew what it was trained on. A new model (a training
round, ``--model``) gets its own index on its first discovery or query, since region
descriptors of one model mean nothing to another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.ann_index import AnnConfig, RegionIndex, two_stage_detect
from engine.backbone import Backbone
from engine.detect import DetectConfig, query_features
from engine.features import (
    CachedPyramids,
    FeatureCache,
    FeatureConfig,
    FeaturePyramid,
    collection_features,
)
from engine.mirror import merge_mirrored_detections, mirror_box
from engine.types import Box, Detection
from hitl.project import ProjectPaths


def index_dir(paths: ProjectPaths, model_id: str, features: FeatureConfig, ann: AnnConfig) -> Path:
    safe_model = model_id.replace("/", "_").replace("@", "-")
    return paths.data_dir / "index" / safe_model / f"{features.key()}-{ann.key()}"


def update_index(paths: ProjectPaths, model_id: str, image_ids: Sequence[str],
                 pyramid_of: Callable[[str], FeaturePyramid], features: FeatureConfig = FeatureConfig(),
                 ann: AnnConfig = AnnConfig(), loaded: RegionIndex | None = None) -> RegionIndex:
    """The model's index holding every image of ``image_ids``: loaded, grown, or (re)built, and saved.

    ``pyramid_of`` is only called for images the index lacks (all of them on a rebuild);
    ``loaded`` is the stored index when the caller has already read it.
    """
    folder = index_dir(paths, model_id, features, ann)
    index = loaded if loaded is not None else _load(folder, model_id)
    missing = [i for i in image_ids if index is None or i not in index]
    if not missing and index is not None:
        return index
    if index is not None and not index.needs_retraining():
        index.add(missing, [ann.regions(pyramid_of(i)) for i in missing])
        if index.needs_retraining():
            index = None  # grown past its training: retrain on everything below
    if index is None or index.needs_retraining():
        index = RegionIndex.build_streamed(image_ids, lambda i: ann.regions(pyramid_of(i)), ann)
    index.save(folder, extra={"model_id": model_id, "feature_key": features.key()})
    return index


def _load(folder: Path, model_id: str) -> RegionIndex | None:
    if not (folder / "meta.json").is_file():
        return None
    try:
        index, meta = RegionIndex.load(folder)
    except (OSError, ValueError, KeyError, RuntimeError):
        return None  # a damaged index is rebuilt, never trusted
    return index if meta.get("model_id") == model_id else None


@dataclass
class ProjectIndex:
    """What an indexed query needs: the index and read access to every image's cached pyramid."""

    index: RegionIndex
    pyramids: CachedPyramids


def open_project_index(store, paths: ProjectPaths, backbone: Backbone, features: FeatureConfig = FeatureConfig(),
                       ann: AnnConfig = AnnConfig(), progress: bool = False) -> ProjectIndex:
    """The index of ``backbone``'s model over the project's images, adding any it lacks first
    (their features are computed into the cache if they are not there yet)."""
    images = [img for img in store.list_images() if Path(img.path).is_file()]
    if not images:
        raise FileNotFoundError(f"project {store.path} has no image files on disk")
    hashes = {img.image_id: img.sha256 for img in images}
    folder = index_dir(paths, backbone.model_id, features, ann)
    known = _load(folder, backbone.model_id)
    todo = [(img.image_id, img.path) for img in images if known is None or img.image_id not in known]
    ids = [img.image_id for img in images]
    if todo:
        feats = collection_features(backbone, todo, features, paths.features, progress=progress, hashes=hashes, keep=False)
        unreadable = {image_id for image_id, _ in todo} - set(feats.image_ids)
        ids = [i for i in ids if i not in unreadable]
    pyramids = CachedPyramids(FeatureCache(paths.features, backbone.model_id, features), hashes)
    return ProjectIndex(update_index(paths, backbone.model_id, ids, pyramids, features, ann, known), pyramids)


def query_project(backbone: Backbone, project: ProjectIndex, rgb: np.ndarray, box: Box,
                  config: DetectConfig = DetectConfig(), query_id: str | None = None,
                  candidates: int | None = None, mirror: bool = True) -> list[Detection]:
    """Two-stage detection of ``box`` of ``rgb`` over the project: index candidates, then the
    dense scan; with ``mirror`` the query's mirror image too (hits marked ``mirrored``)."""
    query = query_features(backbone, rgb, box, config.query_side, config.query_context, config.score)
    exclude = (query_id, box) if query_id is not None else None
    device = next(backbone.parameters()).device
    found = two_stage_detect(query, project.index, project.pyramids, config, candidates, exclude, device)
    if not mirror:
        return found
    flipped = np.ascontiguousarray(rgb[:, ::-1])
    query_mirror = query_features(backbone, flipped, mirror_box(box, rgb.shape[1]), config.query_side,
                                  config.query_context, config.score)
    return merge_mirrored_detections(found, two_stage_detect(query_mirror, project.index, project.pyramids,
                                                             config, candidates, exclude, device), config)
