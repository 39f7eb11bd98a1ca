"""Texture weighting's collection counts, computed once per collection and features, kept on disk.

:func:`engine.texture.collection_counts` compares every cell of every image with every
cell of every other image up to ``TextureConfig.collection_sample`` images (O(N^2): 84 s
at 300 images on two loaded cores), and with a reference sample of the images above that
(O(N x sample)). Discovery computes them with the features of the lineage's root, and a
round mines with the same features (``hitl.rounds.RoundConfig.mine_with = "root"``): the
counts are kept beside those features so the round reads them back instead of computing
them again.

Kept in ``<feature cache dir>/collection-counts-<key>.pt`` (the feature cache's folder
names the model and the feature config):

* up to the sample size (exact counts), the key hashes the texture config's collection
  fields and the content hashes of the collection's images, so a collection with an
  image more or less, or other thresholds, computes and keeps its own;
* above it, the key hashes the collection fields and the reference level
  (:func:`engine.texture.reference_level`), and the file keeps the reference images and
  each image's count over them. An image whose membership depends on itself alone
  (:func:`engine.texture.in_reference`) lets a grown collection update those counts: only
  new images are compared with the whole reference, and the kept images with the new
  reference images (O(added x sample), not O(N x sample)). A reference image that left
  the collection, or a new level (the collection doubled), computes them anew.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.features import CachedPyramids
from engine.texture import (
    TextureConfig,
    collection_counts,
    reference_counts,
    reference_level,
    sampled_reference,
    scale_to_collection,
)


def _config_blob(config: TextureConfig) -> dict:
    return {"threshold": config.collection_threshold, "softness": config.collection_softness,
            "level": config.collection_level}


def counts_path(pyramids: CachedPyramids, config: TextureConfig, collection: Sequence[str]) -> Path:
    """Where the exact counts of ``collection`` (image ids) under ``config`` are kept."""
    blob = json.dumps({**_config_blob(config), "images": sorted(pyramids.hashes[i] for i in collection)})
    return pyramids.cache.dir / f"collection-counts-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"


def sampled_counts_path(pyramids: CachedPyramids, config: TextureConfig, level: int) -> Path:
    """Where the counts over the reference sample at ``level`` are kept (any collection)."""
    blob = json.dumps({**_config_blob(config), "reference_level": level})
    return pyramids.cache.dir / f"collection-counts-sampled-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"


def kept_collection_counts(pyramids: CachedPyramids, config: TextureConfig,
                           collection: Sequence[str]) -> dict[str, torch.Tensor]:
    """image id -> its collection count (:func:`engine.texture.collection_counts` at
    ``config.collection_level``), read from disk when kept, else computed and kept."""
    collection = list(collection)
    if len(collection) < 2:
        return {}
    ids_of: dict[str, str] = {}
    for i in collection:
        ids_of.setdefault(pyramids.hashes[i], i)
    hashes = list(ids_of)
    picked = sampled_reference(hashes, config.collection_sample)  # the rule collection_counts draws by
    if picked is None:
        by_hash = _exact(pyramids, config, collection)
    else:
        level = reference_level(len(hashes), config.collection_sample)
        by_hash = _sampled(pyramids, config, ids_of, level, sorted(hashes[j] for j in picked))
    return {i: by_hash[pyramids.hashes[i]] for i in collection}


def _map(pyramids: CachedPyramids, config: TextureConfig, image_id: str) -> torch.Tensor:
    levels = pyramids(image_id).levels
    return levels[min(config.collection_level, len(levels) - 1)]


def _exact(pyramids: CachedPyramids, config: TextureConfig, collection: list[str]) -> dict[str, torch.Tensor]:
    path = counts_path(pyramids, config, collection)
    by_hash = _read(path)
    if by_hash is None or not all(pyramids.hashes[i] in by_hash for i in collection):
        found = collection_counts([_map(pyramids, config, i) for i in collection], config,
                                  keys=[pyramids.hashes[i] for i in collection])
        by_hash = {pyramids.hashes[i]: c for i, c in zip(collection, found)}
        _write(path, by_hash)
    return by_hash


def _sampled(pyramids: CachedPyramids, config: TextureConfig, ids_of: dict[str, str], level: int,
             reference: list[str]) -> dict[str, torch.Tensor]:
    """Counts over the reference sample, the kept ones updated for the images added since."""
    path = sampled_counts_path(pyramids, config, level)
    kept = _read(path) or {}
    kept_reference, raw = set(kept.get("reference", ())), kept.get("raw", {})
    if not kept_reference <= set(reference) or not isinstance(raw, dict):
        kept_reference, raw = set(), {}  # a reference image left the collection (or the file is odd): start again
    raw = {h: c for h, c in raw.items() if h in ids_of}
    added = [h for h in reference if h not in kept_reference]
    if added and raw:  # the kept images meet the new reference images
        old = sorted(raw)
        more = reference_counts([_map(pyramids, config, ids_of[h]) for h in old],
                                [_map(pyramids, config, ids_of[h]) for h in added], [None] * len(old), config)
        raw.update({h: raw[h] + m for h, m in zip(old, more)})
    new = [h for h in ids_of if h not in raw]
    if new:
        position = {h: r for r, h in enumerate(reference)}
        found = reference_counts([_map(pyramids, config, ids_of[h]) for h in new],
                                 [_map(pyramids, config, ids_of[h]) for h in reference],
                                 [position.get(h) for h in new], config)
        raw.update(zip(new, found))
    if added or new:
        _write(path, {"reference": reference, "raw": raw})
    members = set(reference)
    return {h: scale_to_collection(raw[h], len(ids_of), len(reference), h in members) for h in ids_of}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes never share a half file
    torch.save(data, tmp)
    tmp.replace(path)  # atomic: a kill while writing leaves no half file to trust


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable file is recomputed, whatever broke it
        return None
    return data if isinstance(data, dict) else None
