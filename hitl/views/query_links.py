"""One-shot query results an expert judges become links, like discovered ones.

A judged hit is stored as a `PairMatch` from the query box to the hit's box, in a
run of kind ``query`` (params: the query image and box), followed by the expert's
verdict: ``confirm`` (a positive for training) or ``reject`` (a hard negative: the
model found it, the expert says it is not the detail). Its affine is the scale-and-translation that maps one box onto the
other, the only geometry a detection gives. From then on it is an ordinary confirmed
link: the training round learns from it and exports include it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from db.records import VERDICTS
from db.store import Store
from engine.types import Affine, Box, Detection, PairMatch
from hitl.roles import User, acting_name

QUERY_RUN_KIND = "query"


@dataclass(frozen=True)
class ConfirmedHit:
    run_id: int
    link_id: int
    verdict_id: int


def box_affine(src: Box, dst: Box) -> Affine:
    """The axis-aligned affine mapping ``src`` onto ``dst`` (scale per axis + translation)."""
    sx, sy = dst.width / src.width, dst.height / src.height
    return ((sx, 0.0, dst.x0 - sx * src.x0), (0.0, sy, dst.y0 - sy * src.y0))


def detection_match(query_image: str, query_box: Box, hit: Detection) -> PairMatch:
    """The link a confirmed hit stands for: query box in A, hit box in B."""
    if hit.image_id == query_image and hit.box == query_box:
        raise ValueError("a query cannot be linked to itself")
    return PairMatch(query_image, hit.image_id, query_box, hit.box,
                     box_affine(query_box, hit.box), float(hit.score), 0)


def start_query_run(store: Store, model_id: str, query_image: str, query_box: Box) -> int:
    """A run to hold the links confirmed from one query."""
    return store.start_run(model_id, {"query_image": query_image, "box": query_box.as_list()},
                           kind=QUERY_RUN_KIND)


def other_images(hits: Sequence[Detection], query_image: str) -> list[Detection]:
    """The hits outside the query's own image (its box is always the best hit of all)."""
    return [h for h in hits if h.image_id != query_image]


def hits_above(hits: Sequence[Detection], min_score: float, done: Collection[int] = ()) -> list[int]:
    """Indices of the hits scoring at least ``min_score`` not judged yet ("confirm all above")."""
    return [i for i, h in enumerate(hits) if h.score >= min_score and i not in done]


def confirm_hit(store: Store, run_id: int, query_image: str, query_box: Box, hit: Detection,
                annotator: str | None, note: str | None = None, *,
                actor: User | None = None) -> ConfirmedHit:
    """Store the hit as a link of query run ``run_id`` and confirm it.

    Raises:
        Forbidden: ``actor`` may not give verdicts, or names someone else (`hitl.roles`).
    """
    return judge_hit(store, run_id, query_image, query_box, hit, "confirm", annotator, note, actor=actor)


def judge_hit(store: Store, run_id: int, query_image: str, query_box: Box, hit: Detection,
              verdict: str, annotator: str | None, note: str | None = None, *,
              actor: User | None = None) -> ConfirmedHit:
    """Store the hit as a link of query run ``run_id`` with the expert's verdict on it.

    Raises:
        Forbidden: ``actor`` may not give verdicts, or names someone else (`hitl.roles`).
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, not {verdict!r}")
    annotator = acting_name(actor, annotator, "confirm_hit")
    link_id = store.add_links(run_id, [detection_match(query_image, query_box, hit)], mark_verified=False)[0]
    verdict_id = store.add_verdict(link_id, verdict, annotator, note=note)
    store.finish_run(run_id)  # a query run is complete after each write; more may follow
    return ConfirmedHit(run_id, link_id, verdict_id)
