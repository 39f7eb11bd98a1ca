"""Texture weighting's collection counts: computed once per collection and features, kept on disk."""

from __future__ import annotations

import torch

from engine.features import CachedPyramids, FeatureCache, FeatureConfig, FeaturePyramid
from engine.texture import TextureConfig, collection_counts
from hitl.discover import texture_weights
from hitl.texture_counts import counts_path, kept_collection_counts

CONFIG = TextureConfig(collection_level=0)


def _cache(tmp_path, n=3) -> CachedPyramids:
    """n one-level pyramids in a feature cache; images 0 and 1 share a corner."""
    g = torch.Generator().manual_seed(0)
    maps = [torch.nn.functional.normalize(torch.randn(16, 6, 6, generator=g), dim=0) for _ in range(n)]
    maps[1][:, :3, :3] = maps[0][:, :3, :3]
    cache = FeatureCache(tmp_path, "m@1", FeatureConfig(max_side=6, n_scales=1))
    hashes = {f"img{i}": f"{i:064d}" for i in range(n)}
    for i, m in enumerate(maps):
        cache.put(hashes[f"img{i}"], FeaturePyramid((m,), (96, 96)))
    return CachedPyramids(cache, hashes)


def test_counts_are_computed_once_kept_and_read_back(tmp_path):
    pyramids = _cache(tmp_path)
    ids = ["img0", "img1", "img2"]
    counts = kept_collection_counts(pyramids, CONFIG, ids)
    expected = collection_counts([pyramids(i).levels[0] for i in ids], CONFIG)
    assert all(torch.equal(counts[i], e) for i, e in zip(ids, expected))
    assert counts["img0"][0, 0] > 0.9 and float(counts["img2"].max()) < 0.1  # the shared corner counts
    path = counts_path(pyramids, CONFIG, ids)
    assert path.is_file() and path.parent == pyramids.cache.dir
    # read back, not recomputed: a planted value comes back as it is
    torch.save({pyramids.hashes[i]: torch.full_like(counts[i], 7.0) for i in ids}, path)
    again = kept_collection_counts(pyramids, CONFIG, list(reversed(ids)))  # order does not matter
    assert all(torch.equal(again[i], torch.full_like(counts[i], 7.0)) for i in ids)
    # discovery's texture weights read the same kept counts
    assert torch.equal(texture_weights(pyramids, CONFIG, ids).counts["img1"], again["img1"])


def test_another_collection_or_threshold_keeps_its_own_counts(tmp_path):
    pyramids = _cache(tmp_path, n=4)
    three, four = ["img0", "img1", "img2"], ["img0", "img1", "img2", "img3"]
    assert counts_path(pyramids, CONFIG, three) != counts_path(pyramids, CONFIG, four)
    stricter = TextureConfig(collection_level=0, collection_threshold=0.9)
    assert counts_path(pyramids, CONFIG, three) != counts_path(pyramids, stricter, three)
    kept_collection_counts(pyramids, CONFIG, three)
    assert not counts_path(pyramids, CONFIG, four).is_file()
    assert kept_collection_counts(pyramids, CONFIG, ["img0"]) == {}  # nothing to compare with


def test_an_unreadable_counts_file_is_recomputed(tmp_path):
    pyramids = _cache(tmp_path)
    ids = ["img0", "img1", "img2"]
    path = counts_path(pyramids, CONFIG, ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"cut short")
    counts = kept_collection_counts(pyramids, CONFIG, ids)
    assert counts["img0"][0, 0] > 0.9 and isinstance(torch.load(path, weights_only=True), dict)


def test_a_rounds_proposal_weights_read_the_kept_counts(tmp_path):
    """Mining in a round draws its proposals with the counts discovery kept (not recomputed)."""
    from engine.detect import FeatureBank
    from engine.texture import TextureConfig as Texture
    from engine.train import TrainConfig
    from hitl.project import ProjectPaths
    from hitl.rounds import RoundConfig, _proposal_weights

    paths = ProjectPaths(tmp_path / "artminer.duckdb")
    features = FeatureConfig(max_side=6, n_scales=1)
    pyramids = _cache(paths.features)  # the same cache folder the round reads (model m@1, this config)
    ids = ["img0", "img1", "img2"]
    config = RoundConfig(sources=("mined",), train=TrainConfig(features=features))
    bank = FeatureBank.build(ids, [pyramids(i) for i in ids])
    computed = _proposal_weights(paths, "m@1", bank, pyramids.hashes, config)
    path = counts_path(pyramids, Texture(), ids)
    assert path.is_file()  # kept by the first call
    torch.save({pyramids.hashes[i]: torch.full((6, 6), 50.0) for i in ids}, path)  # as if every cell repeated
    planted = _proposal_weights(paths, "m@1", bank, pyramids.hashes, config)
    assert (planted < computed).all()  # the planted counts were read, not recomputed
    assert _proposal_weights(paths, "m@1", bank, {}, config) is None  # no cache to key them: mine_pairs computes
