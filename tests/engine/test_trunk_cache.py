"""The frozen trunk's cache: exact last-stage features, keyed by the prefix's weights."""

from __future__ import annotations

import copy

import numpy as np
import torch
from PIL import Image

from engine.features import FeatureCache, FeatureConfig, FeaturePyramid, collection_features
from engine.trunk_cache import (
    TrunkByProduct,
    TrunkCache,
    bank_from_inputs,
    cached_bank,
    fill_feature_cache,
    freeze_prefix,
    last_stage,
    prefix_key,
    pyramids_from_inputs,
    split_trunk,
    trunk_inputs,
)

FEATURES = FeatureConfig(max_side=6, n_scales=2)


def _folder(tmp_path, n=2):
    g = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(g.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(path)
        items.append((f"img{i}", path))
    return items


def test_split_and_freeze_keep_the_last_stage_trainable(random_effnet):
    model = copy.deepcopy(random_effnet)
    prefix, last = split_trunk(model)
    assert len(prefix) == len(model.trunk) - 1 and last is model.trunk[-1]
    params = freeze_prefix(model)
    assert {id(p) for p in params} == {id(p) for p in last.parameters()}
    assert not any(p.requires_grad for p in prefix.parameters())


def test_prefix_key_follows_the_prefix_weights_only(random_effnet):
    model = copy.deepcopy(random_effnet)
    key = prefix_key(model)
    with torch.no_grad():
        next(split_trunk(model)[1].parameters()).add_(1.0)  # the last stage: same cache
    assert prefix_key(model) == key
    with torch.no_grad():
        next(split_trunk(model)[0].parameters()).add_(1.0)  # the prefix: another cache
    assert prefix_key(model) != key


def test_cached_inputs_give_the_whole_backbones_pyramids(random_effnet, tmp_path):
    items = _folder(tmp_path)
    full = collection_features(random_effnet, items, FEATURES, None, progress=False)
    inputs, failures = trunk_inputs(random_effnet, items, FEATURES, tmp_path / "cache", progress=False)
    assert not failures and inputs.image_ids == ["img0", "img1"] and inputs.maps[0][0].dtype == torch.float16
    for mine, theirs in zip(pyramids_from_inputs(random_effnet, inputs), full.pyramids):
        for a, b in zip(mine.levels, theirs.levels):
            assert a.shape == b.shape and (a * b).sum(0).min() > 0.999  # cosine of every cell
    # Read back from disk: the same inputs, nothing recomputed.
    assert len(list(TrunkCache(tmp_path / "cache", random_effnet, FEATURES).dir.rglob("*.npz"))) == 2
    again, _ = trunk_inputs(random_effnet, items, FEATURES, tmp_path / "cache", progress=False)
    assert all(torch.equal(a, b) for x, y in zip(again.maps, inputs.maps) for a, b in zip(x, y))


def test_last_stage_runs_channels_last_with_the_same_features_and_gradients(random_effnet):
    """The layout is a speed choice (issue 10): features and gradients equal the plain layout's."""
    model = copy.deepcopy(random_effnet)
    _, last = split_trunk(model)
    channels = next(m for m in last.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    x = torch.randn(3, channels, 5, 7, generator=torch.Generator().manual_seed(0))
    plain = torch.nn.functional.normalize(last(x.contiguous()), dim=1)
    plain.sum().backward()
    expected = [p.grad.clone() for p in last.parameters()]
    model.zero_grad()
    mine = last_stage(model, x, amp=False)
    assert mine.is_contiguous(memory_format=torch.channels_last)  # the layout actually used
    assert torch.allclose(mine, plain, atol=1e-5)
    mine.sum().backward()
    assert all(torch.allclose(p.grad, e, atol=1e-4, rtol=1e-4) for p, e in zip(last.parameters(), expected))


def test_fill_feature_cache_writes_only_what_is_missing(random_effnet, tmp_path):
    items = _folder(tmp_path)
    inputs, _ = trunk_inputs(random_effnet, items, FEATURES, None, progress=False)
    hashes = {"img0": "a" * 64, "img1": "b" * 64}
    assert fill_feature_cache(random_effnet, inputs, tmp_path / "f", FEATURES, hashes) == 2
    assert fill_feature_cache(random_effnet, inputs, tmp_path / "f", FEATURES, hashes) == 0
    cached = FeatureCache(tmp_path / "f", random_effnet.model_id, FEATURES).get("a" * 64)
    assert cached is not None and cached.image_size == (80, 64) and len(cached.levels) == 2


def test_cached_bank_reads_the_feature_cache_and_runs_the_last_stage_only_for_the_rest(random_effnet, tmp_path):
    items = _folder(tmp_path, n=3)
    inputs, _ = trunk_inputs(random_effnet, items, FEATURES, None, progress=False)
    hashes = {"img0": "a" * 64, "img1": "b" * 64, "img2": "c" * 64}
    cache = FeatureCache(tmp_path / "f", random_effnet.model_id, FEATURES)
    # img1's cached pyramid is a marker no last stage computes: the bank must hold it as stored
    computed = pyramids_from_inputs(random_effnet, inputs)
    marker = FeaturePyramid(tuple(torch.full_like(t, 0.25) for t in computed[1].levels), computed[1].image_size)
    cache.put("b" * 64, marker)
    bank = cached_bank(random_effnet, inputs, tmp_path / "f", FEATURES, hashes)
    assert bank.image_ids == ["img0", "img1", "img2"] and bank.levels[0].dtype == torch.float32
    h, w = marker.levels[0].shape[1:]
    assert torch.equal(bank.levels[0][1, :, :h, :w], torch.full_like(marker.levels[0], 0.25).float())
    # the others ran the last stage, were written to the cache and equal it up to float16
    exact = bank_from_inputs(random_effnet, inputs)
    for i in (0, 2):
        assert torch.allclose(bank.levels[0][i], exact.levels[0][i], atol=2e-3)
    assert cache.path("a" * 64).is_file() and cache.path("c" * 64).is_file()


def test_features_leave_the_trunk_cache_as_a_by_product(random_effnet, tmp_path, monkeypatch):
    """One forward, two caches: discovery's features fill the trunk cache a round reads."""
    monkeypatch.setenv("ARTMINER_PRECISION", "fp32")  # compare with the whole backbone in float32
    items = _folder(tmp_path, n=3)
    full = collection_features(random_effnet, items, FEATURES, None, progress=False)
    by_product = TrunkByProduct(tmp_path / "cache", random_effnet, FEATURES)
    feats = collection_features(random_effnet, items, FEATURES, tmp_path / "cache", progress=False, extract=by_product)
    for mine, theirs in zip(feats.pyramids, full.pyramids):
        for a, b in zip(mine.levels, theirs.levels):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert len(list(by_product.cache.dir.rglob("*.npz"))) == 3
    # trunk_inputs now finds every image cached, equal to computing them afresh
    cached, _ = trunk_inputs(random_effnet, items, FEATURES, tmp_path / "cache", progress=False)
    fresh, _ = trunk_inputs(random_effnet, items, FEATURES, None, progress=False)
    assert all(torch.equal(a, b) for x, y in zip(cached.maps, fresh.maps) for a, b in zip(x, y))


def test_the_by_product_needs_a_staged_trunk(random_effnet):
    model = copy.deepcopy(random_effnet)
    assert TrunkByProduct.available(model)
    model.trunk = torch.nn.Identity()
    assert not TrunkByProduct.available(model)
