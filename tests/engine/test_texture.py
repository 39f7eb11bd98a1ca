"""Repetitive-texture weights: within an image (burstiness) and across a collection."""

import pytest
import torch
import torch.nn.functional as F

from engine.features import FeaturePyramid
from engine.texture import (
    TextureConfig,
    TextureWeights,
    collection_counts,
    combined_weights,
    in_reference,
    pyramid_weights,
    reference_counts,
    reference_level,
    repetition_counts,
    repetition_weights,
    sampled_reference,
)


def _random_map(h: int, w: int, c: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(c, h, w, generator=g), dim=0)


def _striped_map(h: int = 8, w: int = 10, c: int = 64) -> torch.Tensor:
    """Unique random cells, except rows 0-2 which repeat one feature: 'script'."""
    fmap = _random_map(h, w, c)
    letter = F.normalize(torch.ones(c), dim=0)
    fmap[:, :3, :] = letter[:, None, None]
    return fmap


def test_unique_cells_weigh_one_and_repeated_cells_little():
    fmap = _striped_map()
    counts = repetition_counts(fmap)
    weights = repetition_weights(fmap)
    assert counts.shape == weights.shape == (8, 10)
    # A repeated cell has 3 x 10 - (its 5 x 3 neighbourhood within the band) near-duplicates...
    assert counts[1, 5] == pytest.approx(30 - 15)
    assert weights[1, 5] == pytest.approx(16 ** -0.5)
    # ...random cells of dimension 64 are never that similar to each other.
    assert torch.all(counts[4:] == 0)
    assert torch.all(weights[4:] == 1)


def test_neighbours_are_not_repeats():
    fmap = _random_map(6, 6)
    fmap[:, 2, 3] = fmap[:, 2, 2]  # a duplicate right next to it: the same element, seen twice
    assert repetition_counts(fmap)[2, 2] == 0
    far = _random_map(6, 6)
    far[:, 5, 5] = far[:, 0, 0]
    assert repetition_counts(far)[0, 0] == 1


def test_pyramid_weights_follow_every_level():
    fmap = _striped_map(8, 10)
    coarse = F.normalize(F.avg_pool2d(fmap[None], 2)[0], dim=0)
    weights = pyramid_weights(FeaturePyramid((fmap, coarse), (100, 80)))
    assert [tuple(w.shape) for w in weights] == [(8, 10), (4, 5)]
    assert weights[1][0].max() < 0.5 < weights[1][3].min()


def test_collection_counts_find_an_element_shared_by_other_images():
    maps = [_random_map(4, 5, seed=s) for s in range(4)]
    bar = F.normalize(torch.arange(64.0) - 31.5, dim=0)
    for m, (r, c) in zip(maps[:3], [(0, 0), (3, 4), (2, 1)]):  # the same element, anywhere, in 3 images
        m[:, r, c] = bar
    counts = collection_counts(maps, TextureConfig(), block_elements=7)  # tiny blocks: same answer
    assert counts[0][0, 0] == 2 and counts[1][3, 4] == 2 and counts[2][2, 1] == 2
    assert counts[3].sum() == 0
    assert float(sum(c.sum() for c in counts)) == 6


def test_combined_weights_multiply_and_resize():
    fmap = _random_map(8, 10)
    coarse = F.normalize(F.avg_pool2d(fmap[None], 2)[0], dim=0)
    pyramid = FeaturePyramid((fmap, coarse), (100, 80))
    count = torch.zeros(4, 5)
    count[:, :2] = 3.0  # the left part repeats in 3 other images
    weights = combined_weights(pyramid, count)
    assert weights[1][0, 0] == pytest.approx(0.5)
    assert weights[1][0, 4] == pytest.approx(1.0)
    assert weights[0][0, 0] == pytest.approx(0.5) and weights[0][0, 9] == pytest.approx(1.0)
    assert combined_weights(pyramid, None)[0].shape == (8, 10)


def test_texture_weights_by_image_id_read_each_pyramid_once():
    fmap = _random_map(8, 10)
    pyramid = FeaturePyramid((fmap, F.normalize(F.avg_pool2d(fmap[None], 2)[0], dim=0)), (100, 80))
    reads: list[str] = []

    def read(image_id: str) -> FeaturePyramid:
        reads.append(image_id)
        return pyramid

    count = torch.full((4, 5), 3.0)  # every cell repeats in 3 other images: weight x 0.5
    weights = TextureWeights(read, TextureConfig(), {"a": count})
    assert torch.allclose(weights("a")[0], 0.5 * pyramid_weights(pyramid)[0])
    assert torch.allclose(weights("b")[0], pyramid_weights(pyramid)[0])  # no count: within-image only
    weights("a")
    assert reads == ["a", "b"] and weights.counts["a"] is count and weights.config == TextureConfig()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="feature map"):
        repetition_counts(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        TextureConfig(softness=0)
    assert collection_counts([]) == []


def _template_collection(n: int, shared: int, seed: int = 0) -> list[torch.Tensor]:
    """n random 4x5 maps; the first `shared` hold one template element at cell (0, 0)."""
    maps = [_random_map(4, 5, seed=seed + s) for s in range(n)]
    bar = F.normalize(torch.arange(64.0) - 31.5, dim=0)
    for m in maps[:shared]:
        m[:, 0, 0] = bar
    return maps


def test_reference_level_keeps_about_sample_images():
    assert reference_level(1000, 1000) == 0 and reference_level(50, 0) == 0  # exact
    assert reference_level(1001, 1000) == 1 and reference_level(2000, 1000) == 1
    assert reference_level(2001, 1000) == 2 and reference_level(100_000, 1000) == 7
    keys = [f"{i:064x}" for i in range(4000)]
    for level, expected in [(1, 2000), (2, 1000), (3, 500)]:
        members = sum(in_reference(k, level) for k in keys)
        assert abs(members - expected) < 4 * expected**0.5  # a uniform draw
    # membership is a property of the image: a member at level 2 is one at level 1
    assert all(in_reference(k, 1) for k in keys if in_reference(k, 2))
    assert all(in_reference(k, 0) for k in keys[:10])
    with pytest.raises(ValueError, match="collection_sample"):
        TextureConfig(collection_sample=1)


def test_collection_counts_above_the_sample_compare_with_the_reference_and_scale():
    maps = _template_collection(40, shared=20)
    keys = [f"img{i}" for i in range(40)]
    config = TextureConfig(collection_sample=10)
    reference = sampled_reference(keys, config.collection_sample)
    assert reference is not None and 2 <= len(reference) < 20  # level 2: about 10 of 40
    sampled = collection_counts(maps, config, keys=keys)
    exact = collection_counts(maps, TextureConfig(collection_sample=0))
    assert float(exact[0][0, 0]) == 19 and float(exact[30][0, 0]) == 0
    # each count is the count over the reference images (its own excluded), scaled to the 39 others
    members = set(reference)
    for i in (0, 5, 25, 39):
        over = sum(1 for j in reference if j != i and j < 20 and i < 20)
        assert float(sampled[i][0, 0]) == pytest.approx(over * 39 / (len(reference) - (i in members)))
    # on average the estimate is the document frequency
    assert float(torch.stack([c[0, 0] for c in sampled[:20]]).mean()) == pytest.approx(19, rel=0.35)
    assert all(float(c.max()) < 1e-6 for c in sampled[20:])  # unique cells stay unique
    # up to the sample size the counts are exact, whatever the keys
    assert all(torch.equal(a, b) for a, b in zip(collection_counts(maps, TextureConfig(collection_sample=40),
                                                                   keys=keys), exact))
    with pytest.raises(ValueError, match="keys"):
        collection_counts(maps, config, keys=keys[:3])


def test_reference_counts_skip_each_maps_own_reference():
    maps = _template_collection(3, shared=3)
    counts = reference_counts(maps, maps[:2], [0, 1, None])
    assert [float(c[0, 0]) for c in counts] == [1.0, 1.0, 2.0]
    assert [float(c.sum()) for c in reference_counts(maps, [], [None] * 3)] == [0.0, 0.0, 0.0]
