"""Texture weighting's collection counts: computed once per collection and features, kept on disk."""

from __future__ import annotations

import hashlib

import torch

from engine.features import CachedPyramids, FeatureCache, FeatureConfig, FeaturePyramid
from engine.texture import TextureConfig, collection_counts, in_reference
from hitl import texture_counts
from hitl.discover import texture_weights
from hitl.texture_counts import counts_path, kept_collection_counts, sampled_counts_path

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


def _template_cache(tmp_path, n: int) -> tuple[CachedPyramids, list[str]]:
    """n one-level pyramids; the first half share a template element at cell (0, 0)."""
    g = torch.Generator().manual_seed(1)
    maps = [torch.nn.functional.normalize(torch.randn(16, 4, 4, generator=g), dim=0) for _ in range(n)]
    bar = torch.nn.functional.normalize(torch.arange(16.0) - 7.5, dim=0)
    for m in maps[: n // 2]:
        m[:, 0, 0] = bar
    cache = FeatureCache(tmp_path, "m@1", FeatureConfig(max_side=4, n_scales=1))
    hashes = {f"img{i}": hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)}
    for i, m in enumerate(maps):
        cache.put(hashes[f"img{i}"], FeaturePyramid((m,), (64, 64)))
    return CachedPyramids(cache, hashes), list(hashes)


def test_above_the_sample_counts_use_the_reference_and_a_grown_collection_updates_them(tmp_path, monkeypatch):
    pyramids, ids = _template_cache(tmp_path, 48)
    config = TextureConfig(collection_level=0, collection_sample=16)  # 40 and 48 images: level 2 (about 12)
    first = kept_collection_counts(pyramids, config, ids[:40])
    scratch = collection_counts([pyramids(i).levels[0] for i in ids[:40]], config,
                                keys=[pyramids.hashes[i] for i in ids[:40]])
    assert all(torch.allclose(first[i], s) for i, s in zip(ids[:40], scratch))  # as computed in one pass
    assert sampled_counts_path(pyramids, config, 2).is_file()
    assert not counts_path(pyramids, config, ids[:40]).is_file()  # exact counts are not computed
    # eight more images: the kept counts are updated, the kept images compared with the new
    # reference images only
    calls = []
    real = texture_counts.reference_counts
    monkeypatch.setattr(texture_counts, "reference_counts",
                        lambda maps, ref, own, cfg: calls.append((len(maps), len(ref))) or real(maps, ref, own, cfg))
    grown = kept_collection_counts(pyramids, config, ids)
    scratch = collection_counts([pyramids(i).levels[0] for i in ids], config, keys=[pyramids.hashes[i] for i in ids])
    assert all(torch.allclose(grown[i], s, atol=1e-5) for i, s in zip(ids, scratch))
    reference = [i for i in ids if in_reference(pyramids.hashes[i], 2)]
    added = [i for i in reference if i in ids[40:]]
    assert calls == ([(40, len(added))] if added else []) + [(8, len(reference))]
    calls.clear()
    assert all(torch.equal(grown[i], again) for i, again in kept_collection_counts(pyramids, config, ids).items())
    assert calls == []  # read back
    # a reference image leaves the collection: counted anew over the remaining reference
    fewer = [i for i in ids if i != reference[0]]
    left = kept_collection_counts(pyramids, config, fewer)
    assert calls[-1] == (len(fewer), len(reference) - 1)
    assert float(left[ids[0]][0, 0]) > 10 and float(left[ids[-1]].max()) < 1e-6  # template vs unique cells
