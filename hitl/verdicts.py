"""Giving and undoing verdicts on links as a given user: the one door the app uses.

`Store.add_verdict` records whatever it is told; these functions first check the acting
user's role and that they act as themself (`hitl.roles`), so an app visitor who is a
viewer, or who edits ``?annotator=`` in the URL, cannot write under any name.
"""

from __future__ import annotations

from typing import Any

from db.records import Verdict
from db.store import Store
from hitl.roles import User, acting_name


def record_verdict(store: Store, link_id: int, verdict: str, annotator: str | None = None, *,
                   actor: User | None = None, note: str | None = None,
                   geometry: dict[str, Any] | None = None, direction: str | None = None) -> int:
    """A verdict on a link by ``actor`` (or, with no actor, by ``annotator``); its id.

    Raises:
        Forbidden: ``actor`` may not give verdicts, or ``annotator`` is someone else.
    """
    annotator = acting_name(actor, annotator, "verdict")
    return store.add_verdict(link_id, verdict, annotator, note=note, geometry=geometry, direction=direction)


def undo_last_verdict(store: Store, annotator: str | None = None, *,
                      actor: User | None = None) -> Verdict | None:
    """Revoke the acting user's own last live link verdict; the revoked verdict, or None.

    Raises:
        Forbidden: ``actor`` may not give verdicts, or ``annotator`` is someone else.
    """
    annotator = acting_name(actor, annotator, "verdict")
    last = store.last_verdict_by(annotator, target_kind="link")
    if last is None:
        return None
    store.undo_verdict(last.verdict_id, annotator)
    return last
