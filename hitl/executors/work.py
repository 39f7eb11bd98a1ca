"""The units of work an executor hands out, runnable in any process that sees the data folder.

Two stages of discovery are embarrassingly parallel: features (per image) and pair
verification (per pair). Their units here need no store: a feature unit reads image
files and writes the feature cache; a verification unit reads the feature cache and
writes one Parquet shard (``hitl.executors.shards``). Both run the same engine code as
discovery in one process, so every executor stores the same links.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.backbone import Backbone
from engine.features import (
    CachedPyramids,
    FeatureCache,
    FeatureConfig,
    FeaturePyramid,
    collection_features,
)
from engine.mirror import cache_mirrored_features, flip_pyramid, mirror_hash
from engine.texture import TextureConfig, TextureWeights
from hitl.agreement import ImageViews
from hitl.discover import DiscoverConfig, verify_both_ways
from hitl.executors.shards import Pair, Shard, write_shard

# ---------------------------------------------------------------- features


def features_todo(items: Sequence[tuple[str, str]], hashes: dict[str, str], cache: FeatureCache,
                  mirror: bool) -> list[tuple[str, str]]:
    """The (image_id, path) items whose pyramid (or mirror image's pyramid) is not cached yet."""
    return [(i, p) for i, p in items
            if not cache.path(hashes[i]).is_file() or (mirror and not cache.path(mirror_hash(hashes[i])).is_file())]


def cache_features(backbone: Backbone, items: Sequence[tuple[str, str]], hashes: dict[str, str],
                   config: FeatureConfig, cache_root: str | Path, mirror: bool) -> list[str]:
    """Compute and cache the pyramids of ``items`` (and of their mirror images); returns
    the paths that could not be read."""
    found = collection_features(backbone, items, config, cache_root, progress=False, hashes=hashes, keep=False)
    failed = [f.path for f in found.failures]
    if mirror:
        readable = set(found.image_ids)
        failed += cache_mirrored_features(backbone, [(i, p) for i, p in items if i in readable], hashes,
                                          config, cache_root)
    return failed


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class VerifySetup:
    """What every verification unit of a run shares: sent once to each worker, so a
    shard itself is only its pair list.

    Attributes:
        cache: the feature cache (its folder must be readable by every worker).
        config: the run's discovery config (verification, mirror mode, min score, batch size).
        hashes: image id -> content hash (the feature cache's key), every image of the run.
        texture: the texture weighting's config, or None for no weights.
        counts: image id -> (h, w) collection count (``engine.texture.collection_counts``):
            the one input of the texture weights that needs the whole collection, so the
            driver computes it once (~1 kB an image).
        device: "cpu" or "cuda", the worker's device.
    """

    cache: FeatureCache
    config: DiscoverConfig
    hashes: dict[str, str]
    texture: TextureConfig | None = None
    counts: dict[str, torch.Tensor] = field(default_factory=dict)
    device: str = "cpu"
    images: dict[str, tuple[str, int]] = field(default_factory=dict)


def verify_setup(pyramids: CachedPyramids, config: DiscoverConfig, weights: Callable | None,
                 device: str = "cpu", images: dict[str, tuple[str, int]] | None = None) -> VerifySetup:
    """The setup of a run from what discovery holds: its pyramid reader, texture weights
    and the images' (path, width), read to weigh links by their aligned agreement."""
    if weights is not None and not isinstance(weights, TextureWeights):
        raise TypeError("a distributed executor needs the texture weights as engine.texture.TextureWeights")
    return VerifySetup(pyramids.cache, config, dict(pyramids.hashes), weights.config if weights else None,
                       dict(weights.counts) if weights else {}, device, dict(images or {}))


def _mirrored(mode: str, pyramids: CachedPyramids) -> Callable[[str], FeaturePyramid] | None:
    """The mirror images' pyramids, as discovery builds them (its ``_mirrored_pyramids``)."""
    if mode == "flip":
        return lambda image_id: flip_pyramid(pyramids(image_id))
    if mode == "image":
        return CachedPyramids(pyramids.cache, {i: mirror_hash(h) for i, h in pyramids.hashes.items()})
    return None


class ShardVerifier:
    """Verifies shards in a worker: the pyramid reader and the texture weights are built
    once, so the images shared by consecutive shards are read and weighted once."""

    def __init__(self, setup: VerifySetup):
        self.setup = setup
        self.pyramids = CachedPyramids(setup.cache, setup.hashes)
        self.weights = TextureWeights(self.pyramids, setup.texture, setup.counts) if setup.texture else None
        self.mirrored = _mirrored(setup.config.mirror, self.pyramids)
        self.views = ImageViews(setup.images, setup.config.agreement.max_side)

    def __call__(self, shard: Shard, folder: Path) -> int:
        """Verify the shard's pairs both ways and write its Parquet file; returns its link count."""
        pairs: list[Pair] = list(shard.pairs)
        links = verify_both_ways(pairs, self.pyramids, self.setup.config, torch.device(self.setup.device),
                                 self.weights, self.mirrored, views=self.views)
        write_shard(shard.path(folder), pairs, links)
        return len(links)
