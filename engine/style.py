"""Style descriptors: how an image is drawn, not what it shows.

The style report (reference 003) clustered paintings by style from global and local
features and found it hard; content features (the trunk's stride-16 output, which the
map and discovery use) group images by *what* they show. Style lives in early-layer
statistics (Gatys et al.'s texture/style representation): the channel means and
standard deviations of the backbone's first blocks, where hatching, brush strokes,
paper grain and colour are still local. Steps:

1. the image resized so its longer side is ``side`` px (stroke scales comparable
   across images of different sizes);
2. the trunk run up to its last ``layers`` child; after each listed child, per channel
   the spatial mean and standard deviation (the diagonal of the Gram statistics, far
   cheaper than full Gram matrices and as discriminative for media in our tests);
3. over a collection: each dimension standardised, then PCA to ``n_components`` and
   L2-normalised rows, ready for UMAP + HDBSCAN (:mod:`engine.embed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.backbone import Backbone


@dataclass(frozen=True)
class StyleConfig:
    side: int = 320  # px of the image's longer side (the demo draws at 360-480 px)
    # Children of the trunk whose outputs give statistics. EfficientNet-Lite0's trunk is
    # (conv_stem, bn1, blocks[0..4]): 1-3 are the stem's output and its first two blocks
    # (strides 2, 2, 4). On the demo these beat deeper choices: k-means ARI vs medium 0.62
    # against 0.44 for blocks 0-2 and 0.42 for blocks 2-4 (benchmarks/style.py, variants).
    # ResNet-18's trunk is (conv1, bn1, relu, maxpool, layer1, layer2, layer3): use (2, 4).
    layers: tuple[int, ...] = (1, 2, 3)
    n_components: int = 16  # PCA dimensions kept for the map (8-32 give the same groups on the demo)

    def __post_init__(self) -> None:
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"StyleConfig.layers must be non-negative child indices, got {self.layers}")
        if self.side < 32 or self.n_components < 2:
            raise ValueError("StyleConfig.side must be >= 32 and n_components >= 2")


@torch.no_grad()
def style_statistics(backbone: Backbone, rgb: np.ndarray, config: StyleConfig = StyleConfig()) -> np.ndarray:
    """(D,) float32: channel mean and std after each of ``config.layers``.

    Args:
        rgb: (H, W, 3) uint8 image.
    """
    children = list(backbone.trunk.children())
    if max(config.layers) >= len(children):
        raise ValueError(f"layer {max(config.layers)} is past the trunk's {len(children)} children")
    h, w = rgb.shape[:2]
    scale = config.side / max(h, w)
    device = backbone.mean.device
    x = torch.from_numpy(np.array(rgb, copy=True)).permute(2, 0, 1)[None].float().div(255).to(device)
    x = F.interpolate(x, size=(max(8, round(h * scale)), max(8, round(w * scale))), mode="bilinear",
                      antialias=True, align_corners=False)
    x = (x - backbone.mean) / backbone.std
    stats = []
    for i, child in enumerate(children[: max(config.layers) + 1]):
        x = child(x)
        if i in config.layers:
            flat = x[0].flatten(1).float()  # (C, h*w)
            stats += [flat.mean(1), flat.std(1)]
    return torch.cat(stats).cpu().numpy().astype(np.float32)


def style_matrix(statistics: Sequence[np.ndarray], n_components: int = 16) -> np.ndarray:
    """(N, D) statistics -> (N, k) standardised, PCA-reduced, L2-normalised style descriptors.

    ``k`` is ``n_components`` capped by N - 1 (and D).
    """
    x = np.asarray(statistics, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"style_matrix needs (N >= 2, D) statistics, got shape {x.shape}")
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    k = max(1, min(n_components, len(x) - 1, x.shape[1]))
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    # PCA scores, not whitened: whitening would blow weak (noise) components up to the
    # strength of the medium's.
    reduced = u[:, :k] * s[:k]
    reduced /= np.linalg.norm(reduced, axis=1, keepdims=True) + 1e-12
    return reduced.astype(np.float32)
