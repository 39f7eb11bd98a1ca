"""The style map of a project: images laid out by how they are drawn (engine/style.py).

A step of discovery beside the content map: early-layer statistics of every image,
standardised and reduced by PCA, UMAP to 2D, HDBSCAN style groups, stored per model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from db.store import Store
from engine.backbone import Backbone
from engine.embed import density_groups, map_2d
from engine.images import ImageReadError, load_rgb
from engine.style import StyleConfig, style_matrix, style_statistics


def style_descriptors(backbone: Backbone, items: list[tuple[str, str]], config: StyleConfig = StyleConfig(),
                      progress: bool = True) -> tuple[list[str], np.ndarray]:
    """Ids of the readable images and their (N, k) style descriptors."""
    ids, stats = [], []
    for image_id, path in tqdm(items, desc="style statistics", unit="img", disable=not progress):
        try:
            rgb = load_rgb(path, max_side=2 * config.side)
        except ImageReadError:
            continue
        ids.append(image_id)
        stats.append(style_statistics(backbone, rgb, config))
    if len(ids) < 2:
        return ids, np.zeros((len(ids), 0), np.float32)
    return ids, style_matrix(stats, config.n_components)


def store_style_map(store: Store, backbone: Backbone, config: StyleConfig = StyleConfig(),
                    progress: bool = True) -> int:
    """Compute and store the style map of the project's images; returns its size."""
    items = [(im.image_id, im.path) for im in store.list_images()]
    ids, descriptors = style_descriptors(backbone, items, config, progress)
    if len(ids) < 2:
        return 0
    xy = map_2d(descriptors)
    return store.save_style_map(backbone.model_id, ids, xy, density_groups(xy))


def in_style_groups(images_of: Sequence[Sequence[str]], style_group: Mapping[str, int],
                    groups: Sequence[int]) -> list[bool]:
    """Per item (a cluster's or a link's images): does any image belong to one of
    ``groups``? Images without a style point belong to none. No groups: all pass."""
    if not groups:
        return [True] * len(images_of)
    wanted = set(groups)
    return [any(style_group.get(i) in wanted for i in images) for images in images_of]
