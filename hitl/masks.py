"""Shared-detail masks of stored links: align each link finely, segment, store polygons.

A step of discovery (after the links, before the clusters are drawn) and callable on
its own. Resumable: links that already have a mask are skipped. Images are decoded
at most ``max_side`` px on their longer side (masks are outlines, not pixel-exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from db.records import Link, LinkMaskRecord
from db.store import Store
from engine.align import AlignConfig
from engine.cosegment import MaskConfig, link_mask
from engine.images import ImageReadError
from hitl.agreement import ImageViews, image_sources


@dataclass(frozen=True)
class MasksConfig:
    max_side: int = 1024  # decode side: enough for outlines, cheap on large scans
    commit_every: int = 32  # masks per store transaction (the resume granularity)
    align: AlignConfig = field(default_factory=AlignConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)


def compute_link_masks(store: Store, links: Sequence[Link], backbone=None, config: MasksConfig = MasksConfig(),
                       progress: bool = True) -> int:
    """Masks for ``links`` that have none yet; returns how many were computed.

    Args:
        backbone: adds finer-scale feature similarity to the evidence (None: structure only).
    """
    done = store.link_masks([lk.link_id for lk in links])
    todo = [lk for lk in links if lk.link_id not in done]
    views = ImageViews(image_sources(store.list_images()), config.max_side)
    batch: list[LinkMaskRecord] = []
    for link in tqdm(todo, desc="masks of shared details", unit="link", disable=not progress or not todo):
        try:
            view_a, scale_a = views(link.image_a)
            view_b, scale_b = views(link.image_b)
        except (ImageReadError, KeyError):
            continue  # an image gone missing: the link keeps its box only
        found = link_mask(view_a, view_b, link.box_a, link.match.affine, config.align, config.mask, backbone,
                          scale_a, scale_b)
        batch.append(LinkMaskRecord(link.link_id, tuple(found.polygon_a), tuple(found.polygon_b),
                                    found.alignment.refined))
        if len(batch) >= config.commit_every:
            store.save_link_masks(batch)
            batch = []
    store.save_link_masks(batch)
    return len(todo)

