"""Texture weighting's collection counts, computed once per collection and features, kept on disk.

:func:`engine.texture.collection_counts` compares every cell of every image with every
cell of every other image: O(N^2) in images (84 s at 300 images on two loaded cores,
~35 min projected at 1,500: issue 10's largest cost of a training round). Discovery
computes them with the features of the lineage's root, and a round mines with the same
features (``hitl.rounds.RoundConfig.mine_with = "root"``): the counts are kept beside
those features so the round reads them back instead of computing them again.

Kept in ``<feature cache dir>/collection-counts-<key>.pt`` (the feature cache's folder
names the model and the feature config); the key hashes the texture config's
collection fields and the content hashes of the collection's images, so a collection
with an image more or less, or other thresholds, computes and keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from engine.features import CachedPyramids
from engine.texture import TextureConfig, collection_counts


def counts_path(pyramids: CachedPyramids, config: TextureConfig, collection: Sequence[str]) -> Path:
    """Where the counts of ``collection`` (image ids) under ``config`` are kept."""
    blob = json.dumps({"threshold": config.collection_threshold, "softness": config.collection_softness,
                       "level": config.collection_level,
                       "images": sorted(pyramids.hashes[i] for i in collection)})
    return pyramids.cache.dir / f"collection-counts-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.pt"


def kept_collection_counts(pyramids: CachedPyramids, config: TextureConfig,
                           collection: Sequence[str]) -> dict[str, torch.Tensor]:
    """image id -> its collection count (:func:`engine.texture.collection_counts` at
    ``config.collection_level``), read from disk when kept, else computed and kept."""
    collection = list(collection)
    if len(collection) < 2:
        return {}
    path = counts_path(pyramids, config, collection)
    by_hash = _read(path)
    if by_hash is None or not all(pyramids.hashes[i] in by_hash for i in collection):
        level = [min(config.collection_level, len(pyramids(i).levels) - 1) for i in collection]
        found = collection_counts([pyramids(i).levels[lv] for i, lv in zip(collection, level)], config)
        by_hash = {pyramids.hashes[i]: c for i, c in zip(collection, found)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes never share a half file
        torch.save(by_hash, tmp)
        tmp.replace(path)  # atomic: a kill while writing leaves no half file to trust
    return {i: by_hash[pyramids.hashes[i]] for i in collection}


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable file is recomputed, whatever broke it
        return None
    return data if isinstance(data, dict) else None
