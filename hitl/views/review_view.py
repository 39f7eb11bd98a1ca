"""What the review page says about a link besides its pictures: the transform in words,
the filters that narrow the queue, and the session's progress.

Pure functions over records; the page draws what they return.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from db.records import ImageRecord, Link
from engine.types import Affine

SAME_SCALE = 0.05  # |scale - 1| below this reads "same size" (5%: below what an eye notices)
SAME_ANGLE_DEG = 1.0  # rotations below a degree read as none
STRETCH = 1.15  # axis scales differing by more than 15% read "stretched"


def describe_affine(affine: Affine) -> str:
    """The link's A -> B affine in words: "B is ×1.30 larger, rotated 4°, mirrored".

    The linear part is split as rotation · scale · (mirror): a negative determinant is a
    mirrored copy (prints reverse their model), ``sqrt(|det|)`` the overall scale, the
    angle of the first column (after undoing the mirror) the rotation, and the ratio of
    the singular values tells a stretched copy from a uniformly scaled one.
    """
    m = np.array([affine[0][:2], affine[1][:2]], dtype=np.float64)  # (2, 2)
    det = float(np.linalg.det(m))
    if not np.isfinite(det) or abs(det) < 1e-12:
        return "degenerate transform"
    mirrored = det < 0
    unflipped = m @ np.diag([-1.0, 1.0]) if mirrored else m
    angle = math.degrees(math.atan2(unflipped[1, 0], unflipped[0, 0]))
    scale = math.sqrt(abs(det))
    s_max, s_min = np.linalg.svd(m, compute_uv=False)
    parts = []
    if abs(scale - 1) < SAME_SCALE:
        parts.append("same size")
    else:
        parts.append(f"scale ×{scale:.2f}")
    if abs(angle) >= SAME_ANGLE_DEG:
        parts.append(f"rotation {angle:+.0f}°")
    if s_max / s_min > STRETCH:
        parts.append(f"stretched {s_max / s_min:.2f}:1")
    if mirrored:
        parts.append("mirrored")
    return ", ".join(parts)


@dataclass(frozen=True)
class ReviewFilter:
    """What narrows the review queue; an empty field lets everything through.

    A link passes a metadata filter when *either* of its images matches (a reviewer
    following one artist wants every link that touches that artist).
    """

    artists: frozenset[str] = frozenset()
    media: frozenset[str] = frozenset()
    collections: frozenset[str] = frozenset()
    min_score: float | None = None
    max_score: float | None = None
    only_links: frozenset[int] | None = None  # links of the chosen cluster, or of a map selection
    models: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.artists or self.media or self.collections or self.models
                    or self.min_score is not None or self.max_score is not None
                    or self.only_links is not None)


def filter_links(links: Sequence[Link], images: Mapping[str, ImageRecord],
                 flt: ReviewFilter) -> list[Link]:
    """The links of ``links`` that pass ``flt`` (order kept)."""
    def meta_ok(values: Collection[str], field: str, link: Link) -> bool:
        if not values:
            return True
        return any(getattr(images.get(i), field, None) in values for i in (link.image_a, link.image_b))

    return [lk for lk in links
            if (flt.min_score is None or lk.score >= flt.min_score)
            and (flt.max_score is None or lk.score <= flt.max_score)
            and (flt.only_links is None or lk.link_id in flt.only_links)
            and (not flt.models or lk.model_id in flt.models)
            and meta_ok(flt.artists, "artist", lk) and meta_ok(flt.media, "medium", lk)
            and meta_ok(flt.collections, "collection", lk)]


def session_progress(answered: int, left: int) -> tuple[float, str]:
    """The session bar: fraction done and its label ("12 answered this session, 40 left")."""
    if answered < 0 or left < 0:
        raise ValueError(f"counts cannot be negative: {answered}, {left}")
    total = answered + left
    return (answered / total if total else 1.0), f"{answered} answered this session, {left} left"
