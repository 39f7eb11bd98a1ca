"""Typed records passed between engine, store, loop and app.

Every layer speaks these small frozen dataclasses, never dicts of unknown shape.
Boxes are in original image pixels, ``(x0, y0)`` top-left inclusive, ``(x1, y1)``
bottom-right exclusive, after EXIF orientation has been applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Affine = tuple[tuple[float, float, float], tuple[float, float, float]]
"""A 2x3 affine matrix mapping pixel ``(x, y, 1)`` of image A to pixel ``(x', y')`` of B."""

IDENTITY_AFFINE: Affine = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))

Inlier = tuple[float, float, float, float]
"""One inlier correspondence of a link: ``(x_a, y_a, x_b, y_b)``, original pixels of A and B."""


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty or inverted box {self.as_list()}")

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.x0 + self.x1), 0.5 * (self.y0 + self.y1))

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def as_xywh(self) -> list[float]:
        return [self.x0, self.y0, self.width, self.height]

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> Box:
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h))

    @classmethod
    def parse(cls, text: str) -> Box:
        """Parse ``"x0,y0,x1,y1"`` as written on the command line."""
        parts = [p for p in text.replace(" ", "").split(",") if p]
        if len(parts) != 4:
            raise ValueError(f"a box needs 4 numbers x0,y0,x1,y1, got {text!r}")
        try:
            x0, y0, x1, y1 = (float(p) for p in parts)
        except ValueError as err:
            raise ValueError(f"a box needs 4 numbers x0,y0,x1,y1, got {text!r}") from err
        return cls(x0, y0, x1, y1)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def inside(self, width: float, height: float) -> bool:
        return self.x0 >= 0 and self.y0 >= 0 and self.x1 <= width and self.y1 <= height

    def clip(self, width: float, height: float) -> Box:
        return Box(max(0.0, self.x0), max(0.0, self.y0), min(width, self.x1), min(height, self.y1))


@dataclass(frozen=True)
class Detection:
    """One hit of a one-shot query: the best-matching window in one image."""

    image_id: str
    box: Box
    score: float
    scale_index: int = -1
    mirrored: bool = False  # found by the mirrored query: the hit is a mirror image of it


@dataclass(frozen=True)
class PairMatch:
    """A repeated region found between two images by pair verification (paper §4).

    ``affine`` maps pixels of ``box_a`` in image A onto image B; a ``mirrored`` copy (a
    print reverses its model) has an affine of negative determinant. ``inliers`` are the
    feature correspondences that support the region (cell centres, heaviest first, at most
    ``VerifyConfig.max_points``): the expert's evidence of why the link was made; empty
    for links that do not come from verification or were stored before they were kept.
    """

    image_a: str
    image_b: str
    box_a: Box
    box_b: Box
    affine: Affine
    score: float
    n_inliers: int
    mirrored: bool = False
    inliers: tuple[Inlier, ...] = ()
    # How well the two regions agree pixel by pixel once finely aligned (a correlation,
    # hitl/agreement.py); ``score`` already carries its weight. None: not measured.
    agreement: float | None = None


@dataclass(frozen=True)
class Region:
    """A detail in one image: a node of the correspondence graph."""

    image_id: str
    box: Box


@dataclass(frozen=True)
class Cluster:
    """A connected component of the correspondence graph: one repeated detail."""

    cluster_id: int
    regions: tuple[Region, ...]
    images: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.images:
            images = tuple(sorted({r.image_id for r in self.regions}))
            object.__setattr__(self, "images", images)


@dataclass(frozen=True)
class ModelRef:
    """A model version: a named pretrained backbone or a fine-tuned checkpoint.

    ``model_id`` is what caches and the store key on: the backbone name for pretrained
    weights, ``<backbone>@<sha256 prefix>`` for a checkpoint.
    """

    model_id: str
    backbone: str
    checkpoint: str | None = None
    parent: str | None = None
