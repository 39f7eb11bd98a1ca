"""What an ingest did: added, duplicate and skipped sources, regions and notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Skipped:
    """Something that was not ingested, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class IngestReport:
    """What an ingest did.

    Attributes:
        added: ids of images new to the project.
        duplicates: ``(path or URL, image_id)`` of files whose content was already there.
        skipped: bad files, unreachable images, unreadable manifests, with reasons.
        regions_added: VIA regions stored.
        metadata_updated: images already in the project whose metadata the CSV updated.
        notes: everything else worth reading (unmatched CSV rows, VIA regions dropped).
    """

    added: tuple[str, ...] = ()
    duplicates: tuple[tuple[str, str], ...] = ()
    skipped: tuple[Skipped, ...] = ()
    regions_added: int = 0
    metadata_updated: int = 0
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """Human-readable lines for the command line."""
        lines = [f"added {len(self.added)} images, {len(self.duplicates)} duplicates, "
                 f"{len(self.skipped)} skipped, {self.regions_added} regions, "
                 f"metadata updated on {self.metadata_updated}"]
        lines += [f"skipped {s.source}: {s.reason}" for s in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"added": list(self.added), "duplicates": [list(d) for d in self.duplicates],
                "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
                "regions_added": self.regions_added, "metadata_updated": self.metadata_updated,
                "notes": list(self.notes)}


@dataclass
class Tally:
    added: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    regions_added: int = 0
    metadata_updated: int = 0

    def report(self) -> IngestReport:
        return IngestReport(tuple(self.added), tuple(self.duplicates), tuple(self.skipped),
                            self.regions_added, self.metadata_updated, tuple(self.notes))
