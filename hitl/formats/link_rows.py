"""What every export format needs per link: its images and the verdict in force."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from db import ImageRecord, Link, Store, Verdict
from db.records import LinkMaskRecord
from engine.types import PairMatch


@dataclass(frozen=True)
class Row:
    """A link with what every format needs: its images and the verdict in force."""

    link: Link
    image_a: ImageRecord
    image_b: ImageRecord
    verdict: Verdict | None
    mask: LinkMaskRecord | None = None  # the shared detail's polygons, when computed


def link_rows(store: Store, statuses: Iterable[str], inliers: bool = False) -> list[Row]:
    """Rows of the links whose status is in ``statuses``; ``inliers``: with their points."""
    links = store.list_links(status=list(statuses), order="link_id", inliers=inliers)
    current = store.current_verdicts("link")
    ids = sorted({i for lk in links for i in (lk.image_a, lk.image_b)})
    images = {im.image_id: im for im in store.list_images(image_ids=ids)}
    masks = store.link_masks([lk.link_id for lk in links])
    return [Row(lk, images.get(lk.image_a) or unknown_image(lk.image_a),
                images.get(lk.image_b) or unknown_image(lk.image_b), current.get(lk.link_id),
                masks.get(lk.link_id))
            for lk in links]


def unknown_image(image_id: str) -> ImageRecord:
    """Stand-in for a link's image missing from the images table (never expected)."""
    return ImageRecord(image_id, "", "", 0, 0, source="missing")


def write_atomic(out: Path, text: str) -> None:
    """Write atomically, so an interrupted export never leaves half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)


def iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")



def link_key(model_id: str, match: PairMatch) -> tuple:
    return (model_id, match.image_a, match.image_b, tuple(match.box_a.as_list()),
            tuple(match.box_b.as_list()))

