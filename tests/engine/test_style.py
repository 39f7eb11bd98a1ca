"""Style descriptors: drawing technique, not content, sets them apart."""

import numpy as np
import pytest

from engine.style import StyleConfig, style_matrix, style_statistics
from tests.conftest import textured


def _hatched(seed: int, period: int, size=(96, 128)) -> np.ndarray:
    """Parallel ink lines of one period over a random smooth tone: a print's technique."""
    h, w = size
    tone = textured(seed, h, w).mean(axis=2)
    lines = ((np.arange(w)[None, :] + np.arange(h)[:, None]) % period) < period // 2
    ink = np.where(lines, tone * 0.2, 240.0)
    return np.repeat(ink[..., None], 3, axis=2).astype(np.uint8)


def test_statistics_size_and_known_channels(effnet):
    config = StyleConfig(side=64, layers=(2, 3))
    stats = style_statistics(effnet, textured(0, 48, 64), config)
    children = list(effnet.trunk.children())
    import torch

    x = torch.zeros(1, 3, 32, 32)
    channels = []
    for child in children[:4]:
        x = child(x)
        channels.append(x.shape[1])
    assert stats.shape == (2 * (channels[2] + channels[3]),)
    assert np.isfinite(stats).all() and (stats[channels[2] : 2 * channels[2]] >= 0).all()  # stds


def test_same_technique_is_closer_than_same_content(effnet):
    """Two hatched images of different tones are nearer in style than one tone drawn
    hatched and as a smooth wash."""
    config = StyleConfig(side=128)
    hatched_a, hatched_b = _hatched(1, 6), _hatched(2, 6)
    wash_a = textured(1, 96, 128)
    stats = [style_statistics(effnet, im, config) for im in (hatched_a, hatched_b, wash_a)]
    assert np.linalg.norm(stats[0] - stats[1]) < 0.5 * np.linalg.norm(stats[0] - stats[2])


def test_style_matrix_known_groups():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (2, 40))
    stats = np.concatenate([centres[0] + rng.normal(0, 0.3, (10, 40)), centres[1] + rng.normal(0, 0.3, (10, 40))])
    d = style_matrix(list(stats), n_components=4)
    assert d.shape == (20, 4) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    within = np.linalg.norm(d[:10] - d[:10].mean(0), axis=1).max()
    between = np.linalg.norm(d[:10].mean(0) - d[10:].mean(0))
    assert between > 2 * within


def test_bad_inputs_are_refused(effnet):
    with pytest.raises(ValueError, match="N >= 2"):
        style_matrix([np.ones(4)])
    with pytest.raises(ValueError, match="layers"):
        StyleConfig(layers=())
    with pytest.raises(ValueError, match="past the trunk"):
        style_statistics(effnet, textured(0, 32, 32), StyleConfig(layers=(99,)))
