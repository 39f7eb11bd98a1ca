"""Re-ranking one-shot detections by the discovery score (paper Table 1, 2nd column).

The query box's features are verified against each of the top detections' images with
the pair procedure (Hough + RANSAC affine); a detection takes the score S (eq. 2) of the
verified region that lands on it, and hits are ranked by S, then by cosine similarity.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.backbone import Backbone
from engine.evaluate import Query
from engine.features import FeatureConfig, FeaturePyramid, extract_pyramids
from engine.images import image_size, load_rgb
from engine.mirror import flip_pyramid, mirror_box
from engine.types import Box, Detection
from engine.verify import VerifyConfig, verify_pair
from hitl.oneshot import LoadedCollection


def rerank(query_pyramid: FeaturePyramid, box: Box, detections: list[Detection], collection: LoadedCollection,
           top_n: int = 50, config: VerifyConfig = VerifyConfig()) -> list[Detection]:
    """The first ``top_n`` detections re-ordered by discovery score; the rest follow."""
    index = {image_id: i for i, image_id in enumerate(collection.bank.image_ids)}
    device = collection.bank.levels[0].device
    head, tail = detections[:top_n], detections[top_n:]
    verified: dict[tuple[str, bool], list] = {}
    # A mirrored hit is verified from the mirror image of the query (its feature maps
    # flipped: engine/mirror.py's cheap mode), since verification fits direct affines only.
    mirrored_query = flip_pyramid(query_pyramid) if any(d.mirrored for d in head) else None
    mirrored_box = mirror_box(box, query_pyramid.image_size[0])
    for image_id, mirrored in dict.fromkeys((d.image_id, d.mirrored) for d in head):
        target = collection.bank.pyramid(index[image_id])
        source, region = (mirrored_query, mirrored_box) if mirrored else (query_pyramid, box)
        verified[image_id, mirrored] = verify_pair(source, target, "query", image_id, config, region, device)
    rescored = [(_score_on(d, verified[d.image_id, d.mirrored]), d) for d in head]
    rescored.sort(key=lambda pair: (-pair[0], -pair[1].score))
    return [replace(d, score=s if s > 0 else 0.0) for s, d in rescored] + [replace(d, score=0.0) for d in tail]


def _score_on(detection: Detection, matches) -> float:
    """Best S of the verified regions that land on the detection."""
    best = 0.0
    for m in matches:
        cx, cy = m.box_b.center
        box = detection.box
        if (box.x0 <= cx <= box.x1 and box.y0 <= cy <= box.y1) or m.box_b.iou(box) > 0.3:
            best = max(best, m.score)
    return best


def query_pyramid(backbone: Backbone, collection: LoadedCollection, query_path: Path, query_id: str | None,
                  feature_config: FeatureConfig = FeatureConfig()) -> FeaturePyramid:
    """The query image's pyramid: from the bank when it is in the collection."""
    if query_id is not None and query_id in collection.bank.image_ids:
        return collection.bank.pyramid(collection.bank.image_ids.index(query_id))
    rgb = load_rgb(query_path, max_side=2 * 16 * feature_config.max_side)
    return next(extract_pyramids(backbone, [rgb], feature_config, [image_size(query_path)]))


def rerank_detections(backbone: Backbone, collection: LoadedCollection, query_path: Path, box: Box,
                      detections: list[Detection], top_n: int = 50, query_id: str | None = None) -> list[Detection]:
    pyramid = query_pyramid(backbone, collection, query_path, query_id)
    return rerank(pyramid, box, detections, collection, top_n)


def make_reranker(backbone: Backbone, collection: LoadedCollection, top_n: int = 50):
    """A function (query, detections) -> re-ranked detections, for the evaluation loop."""

    def run(q: Query, detections: list[Detection]) -> list[Detection]:
        path = collection.paths[q.query.image]
        return rerank_detections(backbone, collection, path, q.query.box, detections, top_n, q.query.image)

    return run
