import math

import numpy as np
import pytest
import torch

from engine.embed import density_groups, image_descriptor_matrix, map_2d, pca_2d


def three_blobs(per_blob: int = 15, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around three orthogonal directions, and their blob labels."""
    rng = np.random.default_rng(0)
    centres = np.eye(dim)[:3]
    x = np.repeat(centres, per_blob, axis=0) + 0.05 * rng.normal(size=(3 * per_blob, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(3), per_blob)


@pytest.fixture(scope="module")
def blob_map():
    x, truth = three_blobs()
    return x, truth, map_2d(x, seed=0)


def test_map_is_deterministic_and_shaped(blob_map):
    x, _, xy = blob_map
    assert xy.shape == (45, 2) and xy.dtype == np.float32
    assert np.array_equal(xy, map_2d(x, seed=0))


def test_groups_on_the_map_recover_blobs(blob_map):
    _, truth, xy = blob_map
    labels = density_groups(xy)
    assert labels.shape == (45,)
    assert len(set(labels) - {-1}) == 3
    for blob in range(3):  # each blob is one group (noise aside), each group one blob
        found = set(labels[truth == blob]) - {-1}
        assert len(found) == 1
        assert set(truth[labels == found.pop()]) == {blob}


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_maps_without_umap(n):
    x, _ = three_blobs(per_blob=1)
    xy = map_2d(x[:n])
    assert xy.shape == (n, 2) and np.isfinite(xy).all()
    if n >= 2:  # distinct points stay distinct
        assert len({tuple(p) for p in xy.tolist()}) == n


def test_pca_known_answer():
    xy = pca_2d(np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]))
    assert abs(xy[0, 0] - xy[1, 0]) == pytest.approx(2.0)
    assert np.allclose(xy[:, 1], 0.0)


def test_density_groups_known_answer_and_tiny_inputs():
    left = np.stack([np.zeros(6), np.linspace(0, 0.5, 6)], axis=1)
    xy = np.concatenate([left, left + [10.0, 0.0]])
    labels = density_groups(xy, min_cluster_size=5)
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6] != -1
    assert density_groups(xy[:4], min_cluster_size=5).tolist() == [-1] * 4
    assert density_groups(np.zeros((0, 2))).shape == (0,)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        density_groups(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        map_2d(np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="min_cluster_size"):
        density_groups(np.zeros((5, 2)), min_cluster_size=1)
    with pytest.raises(ValueError, match="N, R, C"):
        image_descriptor_matrix(np.zeros((3, 4)))


def test_image_descriptor_matrix_known_answer():
    desc = torch.zeros(1, 3, 2)
    desc[0, 0] = torch.tensor([1.0, 0.0])  # whole image
    desc[0, 1:] = torch.tensor([0.0, 1.0])  # both regions point along e1
    out = image_descriptor_matrix(desc)
    assert out.shape == (1, 4)
    assert np.allclose(out[0], np.array([1.0, 0.0, 0.0, 1.0]) / math.sqrt(2))
    assert image_descriptor_matrix(desc[:, :1]).shape == (1, 2)
