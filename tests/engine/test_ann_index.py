import pytest
import torch
import torch.nn.functional as F

from engine.ann_index import (
    AnnConfig,
    RegionIndex,
    query_descriptor,
    region_descriptors,
    two_stage_detect,
)
from engine.detect import DetectConfig, FeatureBank, detect
from engine.features import FeaturePyramid
from engine.types import Box

C = 16


def _map(seed: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(C, h, w, generator=g), dim=0)


def _collection(n: int, copy_into: int | None = None, h: int = 12, w: int = 16):
    """n two-level pyramids of random cells; image ``copy_into`` holds image 0's cells 2..8 x 3..11."""
    pyramids = []
    for i in range(n):
        big, small = _map(2 * i, h, w), _map(2 * i + 1, h // 2, w // 2)
        pyramids.append(FeaturePyramid((big, small), (w * 16, h * 16)))
    if copy_into is not None:
        pyramids[copy_into].levels[0][:, 4:10, 5:13] = pyramids[0].levels[0][:, 2:8, 3:11]
    return [f"img{i:03d}" for i in range(n)], pyramids


def test_region_descriptors_shapes_and_norms():
    pyramid = FeaturePyramid((_map(0, 16, 16), _map(1, 5, 6)), (256, 256))
    regions = region_descriptors(pyramid, window=8, stride=4, blocks=1)
    assert regions.shape == (3 * 3 + 1, C)  # 3x3 windows on 16x16, the 5x6 level pooled whole
    assert torch.allclose(regions.norm(dim=1), torch.ones(10), atol=1e-5)
    expected = F.normalize(pyramid.levels[0][:, 4:12, 8:16].mean(dim=(1, 2)), dim=0)
    assert torch.allclose(regions[1 * 3 + 2], expected, atol=1e-5)  # window row 1, col 2


def test_query_cut_from_a_window_matches_that_region_exactly():
    pyramid = FeaturePyramid((_map(0, 16, 16),), (256, 256))
    query = pyramid.levels[0][:, 4:12, 0:8]
    assert float(region_descriptors(pyramid)[3] @ query_descriptor(query)) == pytest.approx(1.0, abs=1e-5)


def test_block_descriptors_keep_the_layout_a_mean_blurs():
    """blocks=2: a window is its four 4x4 quarters' normalised means, concatenated; a query
    cut from the window matches it exactly, and two windows with the same cells in another
    arrangement no longer look the same (they do as one mean)."""
    pyramid = FeaturePyramid((_map(0, 16, 16), _map(1, 5, 6)), (256, 256))
    regions = region_descriptors(pyramid, window=8, stride=4, blocks=2)
    assert regions.shape == (10, 4 * C) and torch.allclose(regions.norm(dim=1), torch.ones(10), atol=1e-5)
    window = pyramid.levels[0][:, 4:12, 8:16]
    quarters = [window[:, a:a + 4, b:b + 4] for a in (0, 4) for b in (0, 4)]
    expected = F.normalize(torch.cat([F.normalize(q.mean(dim=(1, 2)), dim=0) for q in quarters]), dim=0)
    assert torch.allclose(regions[1 * 3 + 2], expected, atol=1e-5)
    assert float(regions[1 * 3 + 2] @ query_descriptor(window, blocks=2)) == pytest.approx(1.0, abs=1e-5)
    swapped = torch.cat([window[:, 4:], window[:, :4]], dim=1)  # the same cells, top and bottom halves swapped
    assert float(query_descriptor(swapped, blocks=1) @ query_descriptor(window, blocks=1)) == pytest.approx(1.0, abs=1e-5)
    assert float(query_descriptor(swapped, blocks=2) @ query_descriptor(window, blocks=2)) < 0.9
    index = RegionIndex.build(["a"], [region_descriptors(pyramid, blocks=1)], AnnConfig(blocks=1))
    with pytest.raises(ValueError, match="index's blocks"):
        index.search(query_descriptor(window, blocks=2))
    # a level smaller than a block still gives one region, and the odd-sized query too
    assert region_descriptors(FeaturePyramid((_map(2, 1, 3),), (48, 16)), blocks=2).shape == (1, 4 * C)
    assert query_descriptor(window[:, :5, :7], blocks=2).shape == (4 * C,)


def test_bad_inputs():
    with pytest.raises(ValueError, match="descriptor sets"):
        RegionIndex.build(["a", "b"], [torch.zeros(3, C)])
    with pytest.raises(ValueError, match="at least one"):
        RegionIndex.build([], [])
    with pytest.raises(ValueError, match=r"\(C, qh, qw\)"):
        query_descriptor(torch.zeros(C, 4))


def test_flat_index_finds_the_copy_first_and_grows_without_rebuild():
    # one mean per window: these random cells have no spatial smoothness, so a copy 1 cell off
    # the window grid would look as foreign to 2 x 2 blocks as any random image
    ids, pyramids = _collection(12, copy_into=7)
    regions = [region_descriptors(p, blocks=1) for p in pyramids]
    index = RegionIndex.build(ids[:10], regions[:10], AnnConfig(blocks=1))
    assert index.is_flat and len(index) == 10 and "img011" not in index
    query = pyramids[0].levels[0][:, 2:8, 3:11]
    hits = index.search(query_descriptor(query, blocks=1), candidates=3)
    assert [h[0] for h in hits][:2] == ["img000", "img007"] or [h[0] for h in hits][:2] == ["img007", "img000"]
    # a new image holding the copy is found after an add, ids stay stable
    pyramids[11].levels[0][:, 0:6, 0:8] = query
    regions[11] = region_descriptors(pyramids[11], blocks=1)
    index.add(ids[10:], regions[10:])
    index.add(ids[10:], regions[10:])  # adding twice adds nothing
    assert len(index) == 12 and index.n_regions == sum(len(r) for r in regions)
    assert "img011" in [h[0] for h in index.search(query_descriptor(query, blocks=1), candidates=3)]


def test_ivf_pq_index_trains_adds_incrementally_and_round_trips(tmp_path):
    config = AnnConfig(flat_below=0, nlist=4, pq_dims=4, pq_bits=4, nprobe=4, regrow=2.0)
    ids, pyramids = _collection(60, copy_into=33)
    index = RegionIndex.build(ids[:40], [region_descriptors(p) for p in pyramids[:40]], config)
    assert not index.is_flat and index.trained_on == index.n_regions
    index.add(ids[40:], [region_descriptors(p) for p in pyramids[40:]])
    assert index.trained_on < index.n_regions and not index.needs_retraining()
    query = pyramids[0].levels[0][:, 2:8, 3:11]
    found = [h[0] for h in index.search(query_descriptor(query), candidates=5)]
    assert {"img000", "img033"} <= set(found)
    index.save(tmp_path / "ix", extra={"model_id": "m"})
    back, meta = RegionIndex.load(tmp_path / "ix")
    assert meta["model_id"] == "m" and back.config == config and back.image_ids == index.image_ids
    assert [h[0] for h in back.search(query_descriptor(query), candidates=5)] == found
    index.add(["x"], [region_descriptors(pyramids[0])] * 1)
    assert len(index) == 61


def test_flat_index_asks_for_retraining_when_it_outgrows_flat():
    ids, pyramids = _collection(3)
    small = RegionIndex.build(ids, [region_descriptors(p) for p in pyramids], AnnConfig(flat_below=10_000))
    assert not small.needs_retraining()
    tight = RegionIndex.build(ids[:1], [region_descriptors(pyramids[0])], AnnConfig(flat_below=len(region_descriptors(pyramids[0])) + 1))
    tight.add(ids[1:], [region_descriptors(p) for p in pyramids[1:]])
    assert tight.needs_retraining()


def test_two_stage_detection_gives_the_exact_scans_top_hit():
    ids, pyramids = _collection(30, copy_into=17)
    index = RegionIndex.build(ids, [region_descriptors(p) for p in pyramids])
    query = pyramids[0].levels[0][:, 2:8, 3:11].clone()
    own = Box(3 * 16, 2 * 16, 11 * 16, 8 * 16)
    config = DetectConfig(top_k=5)
    exact = detect(query, FeatureBank.build(ids, pyramids), config, exclude=("img000", own))
    staged = two_stage_detect(query, index, dict(zip(ids, pyramids)).__getitem__, config, candidates=4,
                              exclude=("img000", own))
    assert exact[0].image_id == staged[0].image_id == "img017"
    assert exact[0].box == staged[0].box == Box(5 * 16, 4 * 16, 13 * 16, 10 * 16)
    assert staged[0].score == pytest.approx(exact[0].score, abs=1e-5) == pytest.approx(1.0, abs=1e-4)


def test_half_precision_bank_is_converted_once():
    ids, pyramids = _collection(3, copy_into=2)
    bank = FeatureBank.build(ids, pyramids, dtype=torch.float16)
    query = pyramids[0].levels[0][:, 2:8, 3:11]
    first = detect(query, bank)
    converted = bank.compute_levels()
    assert all(level.dtype == torch.float32 for level in converted) and bank.levels is converted
    assert bank.compute_levels() is converted  # the second query converts nothing
    assert detect(query, bank) == first and first[0].image_id in ("img000", "img002")


def test_ann_knn_graph_with_all_hits_equals_the_exact_knn():
    from engine.ann_index import ann_knn_graph
    from engine.shortlist import knn_graph

    g = torch.Generator().manual_seed(5)
    desc = F.normalize(torch.randn(30, 4, C, generator=g), dim=2)
    exact_idx, exact_sim = knn_graph(desc, 5, device="cpu")
    idx, sim = ann_knn_graph(desc, 5, hits_per_region=30 * 4)
    assert torch.equal(idx, exact_idx)
    assert torch.allclose(sim, exact_sim, atol=1e-5)


def test_ann_knn_graph_ivf_pq_finds_planted_neighbours():
    from engine.ann_index import ann_knn_graph

    g = torch.Generator().manual_seed(6)
    base = F.normalize(torch.randn(20, 4, C, generator=g), dim=2)
    twins = F.normalize(base + 0.05 * torch.randn(20, 4, C, generator=g), dim=2)  # image i + 20 is i's twin
    idx, sim = ann_knn_graph(torch.cat([base, twins]), 3, AnnConfig(flat_below=0, nlist=4, pq_dims=4, pq_bits=4, nprobe=4))
    assert idx.shape == (40, 3) and (idx != torch.arange(40)[:, None]).all()
    found = [(idx[i, 0] == (i + 20) % 40).item() for i in range(40)]
    assert sum(found) >= 36  # PQ is approximate: nearly every twin is the first neighbour
    with pytest.raises(ValueError, match=r"\(N, R, C\)"):
        ann_knn_graph(torch.zeros(3, C), 2)


def test_streamed_build_trains_on_the_first_chunk_and_holds_everything():
    ids, pyramids = _collection(60, copy_into=45)
    regions = {i: region_descriptors(p) for i, p in zip(ids, pyramids)}
    config = AnnConfig(flat_below=100, nlist=4, pq_dims=4, pq_bits=4, nprobe=4)  # 7 regions per image
    index = RegionIndex.build_streamed(ids, regions.__getitem__, config, chunk=25)
    assert not index.is_flat and len(index) == 60 and index.image_ids == ids
    assert index.trained_on == index.n_regions and not index.needs_retraining()  # no rebuild on the next call
    query = pyramids[0].levels[0][:, 2:8, 3:11]
    assert "img045" in [h[0] for h in index.search(query_descriptor(query), candidates=5)]
    small = RegionIndex.build_streamed(ids[:3], regions.__getitem__, AnnConfig(), chunk=2)
    assert small.is_flat and len(small) == 3
