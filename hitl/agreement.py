"""Links weighed by how well their two regions agree once finely aligned (issue 9).

Verification (``engine/verify.py``) accepts a region pair when enough stride-16 cells
are mutual nearest neighbours under one affine. Two *different* objects of one shape
pass it too: two oval medallions, a cup and a helmet, two coins. Their outlines and
coarse layout match cell for cell; a copy also agrees inside, stroke for stroke. On the
multi-source demo, 105 of the 253 links above the threshold joined two different
objects (median score 0.037 against 0.048 for true links).

So every link whose verification score reaches the threshold is aligned finely
(``engine/align.py``: its affine, then a regularised flow) and the two regions'
*structure* images are correlated. Structure is luminance high-passed and divided by
its local contrast, so an engraving's hatching and an oil's tones of one form look
alike. The link's score is then weighted by ``min(1, max(0, correlation) / full)``:
links that agree keep their score, links that do not fade below the threshold. A fine
alignment's agreement validating a coarse match is the check of the authors' later
work (RANSAC-Flow; thesis slides, reference 002).

On the links of a discovery run, the correlation separates true links from wrong ones
with ROC AUC 0.76 against 0.70 for the verification score, on the multi-source demo.
Precision and recall at the default threshold, with and without the weight, are in the
README (*Aligned agreement*). Links below the threshold are not measured (their weight
could only lower them) and keep ``agreement=None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from db.store import Store
from engine.align import AlignConfig, refine_alignment
from engine.images import ImageReadError, load_rgb
from engine.types import PairMatch

AGREEMENT_MODES = ("structure", "off")


@dataclass(frozen=True)
class AgreementConfig:
    mode: str = "structure"  # "structure": weigh links by their aligned agreement; "off": scores as verified
    # Correlation from which a link keeps its whole score. 0.2 raised pair precision and
    # recall on both demos at the threshold 0.02; 0.3 gives more precision and less
    # recall (README, *Aligned agreement*).
    full: float = 0.2
    max_side: int = 1024  # images are decoded at most this side, as for the masks
    align: AlignConfig = field(default_factory=AlignConfig)

    def __post_init__(self) -> None:
        if self.mode not in AGREEMENT_MODES:
            raise ValueError(f"agreement mode must be one of {', '.join(AGREEMENT_MODES)}, not {self.mode!r}")
        if not 0 < self.full <= 1:
            raise ValueError(f"AgreementConfig.full must be in (0, 1], got {self.full}")


class ImageViews:
    """Decoded views of images by id, the last ``keep`` kept: links sharing an image are
    handled back to back, so each image is decoded about once.

    ``images``: image id -> (path, original width); a view is at most ``max_side`` px and
    comes with its scale (view px per original px).
    """

    def __init__(self, images: Mapping[str, tuple[str, int]], max_side: int, keep: int = 16):
        self.images, self.max_side, self.keep = images, max_side, keep
        self._views: dict[str, tuple[np.ndarray, float]] = {}

    def __call__(self, image_id: str) -> tuple[np.ndarray, float]:
        """(H, W, 3) uint8 view and its scale; KeyError or ImageReadError when unreadable."""
        if image_id not in self._views:
            path, width = self.images[image_id]
            if len(self._views) >= self.keep:
                self._views.pop(next(iter(self._views)))
            rgb = load_rgb(path, max_side=self.max_side)
            self._views[image_id] = (rgb, rgb.shape[1] / width)
        return self._views[image_id]


def agreement_weight(correlation: float, full: float) -> float:
    """The share of its score a link keeps: its correlation over ``full``, in [0, 1]."""
    return float(np.clip(correlation / full, 0.0, 1.0))


def link_agreement(match: PairMatch, views: ImageViews, config: AgreementConfig) -> float:
    """Structure correlation of a link's two regions once finely aligned."""
    image_a, scale_a = views(match.image_a)
    image_b, scale_b = views(match.image_b)
    return refine_alignment(image_a, image_b, match.box_a, match.affine, config.align, scale_a, scale_b).correlation


def weigh_by_agreement(matches: Sequence[PairMatch], views: ImageViews, config: AgreementConfig,
                       min_score: float) -> list[PairMatch]:
    """Matches at or above ``min_score`` with their agreement and weighted score; the
    others, and those whose images cannot be read, unchanged."""
    if config.mode == "off":
        return list(matches)
    out = []
    for m in matches:
        if m.score < min_score:
            out.append(m)
            continue
        try:
            corr = link_agreement(m, views, config)
        except (ImageReadError, KeyError, OSError):
            out.append(m)  # the features were read, the pixels no longer: keep the verified score
            continue
        out.append(replace(m, score=m.score * agreement_weight(corr, config.full), agreement=corr))
    return out


def weigh_unmeasured_links(store: Store, model_id: str, views: ImageViews, config: AgreementConfig,
                           min_score: float) -> int:
    """Weigh the model's discovery links at or above ``min_score`` that were stored
    without an agreement (before schema v7, or by a run with ``mode="off"``), so every
    link a threshold compares was scored alike; returns how many were measured.

    Links from other runs (e.g. a confirmed one-shot hit) keep their own score.
    """
    if config.mode == "off":
        return 0
    runs = {r.run_id for r in store.list_runs(model_id=model_id, kind="discovery")}
    todo = [lk for lk in store.list_links(model_id=model_id, min_score=min_score)
            if lk.run_id in runs and lk.match.agreement is None]
    todo.sort(key=lambda lk: (lk.image_a, lk.image_b))  # an image's links back to back: decoded once
    weighed = weigh_by_agreement([lk.match for lk in todo], views, config, min_score)
    return store.set_link_agreement([(lk.link_id, m.score, m.agreement) for lk, m in zip(todo, weighed)
                                     if m.agreement is not None])


def image_sources(images) -> dict[str, tuple[str, int]]:
    """image id -> (path, width) of image records, what :class:`ImageViews` reads."""
    return {im.image_id: (str(im.path), int(im.width)) for im in images}
