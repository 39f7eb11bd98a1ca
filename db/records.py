"""Typed records the project store returns, beside engine's own (`engine.types`).

Engine records (`PairMatch`, `Region`, `Cluster`, `ModelRef`) say what was computed;
these add what the project remembers about them: ids, the run and model that made
them, who judged them and when. All timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.types import Box, ModelRef, PairMatch, Region

CONFIRM, REJECT, UNSURE = "confirm", "reject", "unsure"
VERDICTS = (CONFIRM, REJECT, UNSURE)
"""Judgements an expert can give a link or a cluster."""

REVOKE = "revoke"
"""The verdict kind that withdraws an earlier verdict (undo)."""

UNREVIEWED = "unreviewed"
"""Status of a link or cluster without a live verdict."""

DISPUTED = "disputed"
"""Status of a double-reviewed link whose two reviewers disagree, until adjudicated."""

TARGET_KINDS = ("link", "cluster")

DIRECTIONS = ("a_copies_b", "b_copies_a", "common_model", "unknown")
"""Who copied whom on a confirmed link, as the expert judged it (stored with the verdict)."""

REVIEW, ADJUDICATION = "review", "adjudication"
ROLES = (REVIEW, ADJUDICATION)
"""A verdict's role: a reviewer's judgement, or an adjudicator's ruling on a disagreement."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


@dataclass(frozen=True)
class ImageRecord:
    """One image of the collection.

    ``image_id`` is the first 16 hex digits of ``sha256`` (the file's content hash), so
    the same bytes under two names are one image. ``width``/``height`` are after EXIF
    orientation. ``year`` is a sortable year parsed from the free-text ``date``.
    """

    image_id: str
    sha256: str
    path: str
    width: int
    height: int
    title: str | None = None
    artist: str | None = None
    date: str | None = None
    year: int | None = None
    medium: str | None = None
    collection: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "folder"
    iiif_canvas: str | None = None
    iiif_manifest: str | None = None
    source_url: str | None = None
    canvas_width: int | None = None
    canvas_height: int | None = None
    added: datetime | None = None


@dataclass(frozen=True)
class ModelVersion:
    """A model version as recorded in the project: lineage, checkpoint hash, config."""

    ref: ModelRef
    checkpoint_sha256: str | None = None
    round: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    created: datetime | None = None

    @property
    def model_id(self) -> str:
        return self.ref.model_id


@dataclass(frozen=True)
class Run:
    """A discovery (or import) run: which model, with which parameters, how it ended."""

    run_id: int
    model_id: str
    kind: str
    params: dict[str, Any]
    status: str
    started: datetime
    finished: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class Link:
    """A stored candidate link: a `PairMatch` plus its ids and current verdict status.

    ``status`` is the latest live verdict (``confirm``/``reject``/``unsure``) or
    ``unreviewed``.
    """

    link_id: int
    run_id: int
    model_id: str
    match: PairMatch
    status: str = UNREVIEWED

    @property
    def image_a(self) -> str:
        return self.match.image_a

    @property
    def image_b(self) -> str:
        return self.match.image_b

    @property
    def box_a(self) -> Box:
        return self.match.box_a

    @property
    def box_b(self) -> Box:
        return self.match.box_b

    @property
    def score(self) -> float:
        return self.match.score


@dataclass(frozen=True)
class Verdict:
    """One row of the append-only verdict log.

    A ``revoke`` row withdraws verdict ``revokes``; ``revoked_by`` is filled in when
    the store reads history (the id of the revoke row that withdrew this verdict).
    ``geometry`` is what the expert saw: ``{"box_a": [...], "box_b": [...], "affine": [[...], [...]]}``
    for links. A link verdict with ``origin_verdict`` was given through a cluster verdict
    (that one's id): undoing the cluster verdict revokes it too.
    """

    verdict_id: int
    target_kind: str
    target_id: int
    verdict: str
    annotator: str
    created: datetime
    note: str | None = None
    revokes: int | None = None
    geometry: dict[str, Any] | None = None
    revoked_by: int | None = None
    origin_verdict: int | None = None  # the cluster verdict this link verdict was derived from
    role: str = "review"  # or ADJUDICATION: settles reviewers' disagreement on the link
    direction: str | None = None  # one of DIRECTIONS, or None when not said


@dataclass(frozen=True)
class RegionRecord:
    """A stored region: a detail in one image, from a hand annotation or a discovery run."""

    region_id: int
    region: Region
    label: str | None = None
    source: str = "discovery"
    run_id: int | None = None
    cluster_id: int | None = None
    link_id: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredCluster:
    """A cluster of a discovery run: its project-wide id, member regions and status."""

    cluster_id: int
    run_id: int
    model_id: str
    number: int
    regions: tuple[RegionRecord, ...]
    status: str = UNREVIEWED

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(sorted({r.region.image_id for r in self.regions}))

    @property
    def link_ids(self) -> tuple[int, ...]:
        return tuple(sorted({r.link_id for r in self.regions if r.link_id is not None}))


@dataclass(frozen=True)
class MapPoint:
    """One point of a model's 2D map: an image or a region, its position and group."""

    kind: str
    item_id: str
    x: float
    y: float
    group: int = -1


@dataclass(frozen=True)
class TrainingRound:
    """A fine-tuning round: parent model in, new model out, metrics before and after."""

    round_id: int
    parent_model: str
    status: str
    params: dict[str, Any]
    started: datetime
    new_model: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    log_path: str | None = None
    finished: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class AnnotationFile:
    """A ground-truth annotation file attached to the project for evaluation."""

    path: str
    format: str
    label: str | None = None
    added: datetime | None = None


_YEAR = re.compile(r"(?<!\d)(\d{3,4})(?!\d)")


def parse_year(date: str | None) -> int | None:
    """Sortable year from a free-text date: the first 3-4 digit number in it.

    ``"c. 1605-1610"`` -> 1605, ``"1620s"`` -> 1620, ``"ca. 850"`` -> 850,
    ``"undated"`` -> None. Ranges sort by their start, which is what a timeline wants.
    """
    if not date:
        return None
    found = _YEAR.search(str(date))
    return int(found.group(1)) if found else None


Polygon = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class LinkMaskRecord:
    """The shared detail of a link as polygons in A's and B's original pixels
    (engine/cosegment.py); ``refined``: the alignment kept its local flow."""

    link_id: int
    polygon_a: Polygon
    polygon_b: Polygon
    refined: bool
