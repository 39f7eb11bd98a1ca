"""Who may do what: the four roles and the check every acting function makes.

Roles are ordered; each can do what the ones before it can:

``viewer``       browse the map, clusters and propagation views, run queries;
``annotator``    + give and undo verdicts on links and clusters, confirm query hits;
``adjudicator``  + resolve disagreements between annotators, split clusters;
``admin``        + start and stop training rounds, change the active model, manage users.

The check lives in the functions that act (`hitl.cluster_edits`, `hitl.query_links`,
`hitl.verdicts`, `hitl.jobs`), which take the acting `User` as ``actor``: hiding a
button is a convenience, not the guard. ``actor=None`` is the trusted local caller
(the command line, run by whoever can write the project file anyway); the app always
passes its logged-in user. When an actor is given, the verdict's annotator is the
actor's name, never a name chosen elsewhere (a URL parameter, a form).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("viewer", "annotator", "adjudicator", "admin")

ACTIONS: dict[str, str] = {
    "view": "viewer",
    "query": "viewer",
    "verdict": "annotator",
    "confirm_hit": "annotator",
    "adjudicate": "adjudicator",
    "split_cluster": "adjudicator",
    "train": "admin",
    "stop_training": "admin",
    "set_active_model": "admin",
    "manage_users": "admin",
}
"""Each action and the least role allowed to do it."""


class Forbidden(PermissionError):
    """The acting user's role does not allow the action; the message says which is needed."""


@dataclass(frozen=True)
class User:
    """An identity and its role (``viewer`` < ``annotator`` < ``adjudicator`` < ``admin``)."""

    name: str
    role: str

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise ValueError("a user needs a name")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; choose one of {', '.join(ROLES)}")

    def can(self, action: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(_least_role(action))


def _least_role(action: str) -> str:
    try:
        return ACTIONS[action]
    except KeyError:
        raise ValueError(f"unknown action {action!r}") from None


def require(actor: User | None, action: str) -> None:
    """Raise `Forbidden` unless ``actor`` may do ``action`` (``None``: trusted local caller)."""
    least = _least_role(action)
    if actor is not None and not actor.can(action):
        raise Forbidden(f"{actor.name} ({actor.role}) may not {action.replace('_', ' ')}: "
                        f"needs the {least} role")


def acting_name(actor: User | None, annotator: str | None, action: str = "verdict") -> str:
    """The annotator to record for ``action``: checks the role, and that an actor acts as
    themself only.

    Raises:
        Forbidden: the role does not allow it, or ``annotator`` names someone else.
        ValueError: no actor and no annotator name.
    """
    require(actor, action)
    if actor is None:
        if not annotator or not annotator.strip():
            raise ValueError("a verdict needs an annotator name")
        return annotator
    if annotator is not None and annotator != actor.name:
        raise Forbidden(f"{actor.name} may not record verdicts as {annotator!r}")
    return actor.name
