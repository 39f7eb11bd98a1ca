"""Several annotators on one project: double review, agreement, adjudication, activity.

* **Double review** (optional): a share of the links (``double_review_share``, a project
  setting, 0 = off) is drawn for two annotators. The draw is a pure function of the
  link id and is recorded once per link (`Store.plan_reviews`), like the held-out split.
  Review is **blind**: until an annotator has answered such a link, the page shows no
  one else's verdict on it.
* **Agreement**: on links judged by two or more annotators (each one's latest verdict),
  Cohen's κ per annotator pair (scikit-learn) and Krippendorff's α over everyone
  (the ``krippendorff`` package: it allows any number of annotators per link and
  missing judgements, where Fleiss' κ needs the same number on every link).
* **Disagreements**: double-reviewed links whose reviewers differ have the status
  ``disputed`` (the store's ``link_status`` view) and wait for an adjudicator, whose
  ruling is a verdict of its own (role ``adjudication``); the two originals stay.
* **Verdict in force** (what training and the counts read): adjudicated > agreed >
  single. A disputed link counts for nothing until adjudicated.
* **Activity**: verdicts per annotator per day, undos included.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from db.records import ADJUDICATION, DISPUTED, REVOKE, UNREVIEWED, VERDICTS, Link, Verdict
from db.store import Store

SHARE_SETTING = "double_review_share"
PLAN_SEED = 0  # the draw of double-reviewed links; any fixed value keeps it reproducible


# ---------------------------------------------------------------------- double review


def reviewers_for(link_id: int, share: float, seed: int = PLAN_SEED) -> int:
    """1 or 2: a pure function of the link id, so every process draws the same links."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the double-review share is a fraction in [0, 1], got {share}")
    digest = hashlib.sha256(f"double-review:{seed}:{link_id}".encode()).digest()
    return 2 if int.from_bytes(digest[:4], "big") / 2**32 < share else 1


def double_review_share(store: Store) -> float:
    return float(store.get_setting(SHARE_SETTING) or 0.0)


def set_double_review_share(store: Store, share: float) -> None:
    """Turn double review on for a share of the links not yet planned (0 turns it off)."""
    reviewers_for(0, share)  # validates
    store.set_setting(SHARE_SETTING, repr(float(share)))


def plan_new_links(store: Store, links: Iterable[Link]) -> dict[int, int]:
    """Draw 1 or 2 reviewers for the links not planned yet (only while the share is > 0)."""
    share = double_review_share(store)
    if share <= 0:
        return {}
    known = store.review_plan()
    new = {lk.link_id: reviewers_for(lk.link_id, share) for lk in links if lk.link_id not in known}
    if new:
        store.plan_reviews(new)
    return new


def second_reviews(store: Store, annotator: str, model_id: str | None = None) -> list[Link]:
    """Double-reviewed links one other annotator has judged and ``annotator`` has not, best first."""
    double = {k for k, n in store.review_plan().items() if n == 2}
    if not double:
        return []
    judges: dict[int, set[str]] = defaultdict(set)
    for v in store.reviewer_verdicts(sorted(double)):
        judges[v.target_id].add(v.annotator)
    wanted = [k for k in double if len(judges[k]) == 1 and annotator not in judges[k]]
    links = store.list_links(link_ids=wanted, model_id=model_id) if wanted else []
    return [lk for lk in links if lk.status not in (DISPUTED,)]


def is_blind(store: Store, link_id: int, annotator: str) -> bool:
    """True while ``annotator`` must not see others' verdicts on a double-reviewed link."""
    if store.review_plan().get(link_id) != 2:
        return False
    return all(v.annotator != annotator for v in store.reviewer_verdicts([link_id]))


# ---------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class PairAgreement:
    annotator_a: str
    annotator_b: str
    n_links: int  # links both judged
    agreed: int
    kappa: float | None  # Cohen's κ; None when undefined (both gave one same label throughout)


@dataclass(frozen=True)
class Agreement:
    pairs: tuple[PairAgreement, ...]
    alpha: float | None  # Krippendorff's α (nominal) over all annotators; None if undefined
    n_links: int  # links judged by at least two annotators
    annotators: tuple[str, ...]


def judgement_table(verdicts: Iterable[Verdict]) -> dict[int, dict[str, str]]:
    """``link_id -> {annotator: verdict}`` from each reviewer's latest verdict (revocations skipped)."""
    table: dict[int, dict[str, str]] = defaultdict(dict)
    for v in sorted(verdicts, key=lambda v: v.verdict_id):
        if v.verdict in VERDICTS and v.role != ADJUDICATION:
            table[v.target_id][v.annotator] = v.verdict
    return dict(table)


def agreement(table: dict[int, dict[str, str]]) -> Agreement:
    """Cohen's κ per annotator pair and Krippendorff's α overall, on links with ≥ 2 judgements."""
    from sklearn.metrics import cohen_kappa_score

    shared = {k: row for k, row in table.items() if len(row) >= 2}
    names = tuple(sorted({a for row in shared.values() for a in row}))
    pairs = []
    for a, b in combinations(names, 2):
        both = [(row[a], row[b]) for row in shared.values() if a in row and b in row]
        if not both:
            continue
        ya, yb = zip(*both)
        kappa = None
        if len(set(ya) | set(yb)) > 1:
            kappa = float(cohen_kappa_score(ya, yb, labels=list(VERDICTS)))
            kappa = kappa if math.isfinite(kappa) else None
        pairs.append(PairAgreement(a, b, len(both), sum(x == y for x, y in both), kappa))
    return Agreement(tuple(pairs), _alpha(shared, names), len(shared), names)


def _alpha(shared: dict[int, dict[str, str]], names: Sequence[str]) -> float | None:
    import krippendorff

    if len(names) < 2 or not shared:
        return None
    codes = {v: i for i, v in enumerate(VERDICTS)}
    data = np.full((len(names), len(shared)), np.nan)  # (annotators, links), nan: not judged
    for j, row in enumerate(shared.values()):
        for i, name in enumerate(names):
            if name in row:
                data[i, j] = codes[row[name]]
    if len(np.unique(data[~np.isnan(data)])) < 2:
        return None  # one label throughout: agreement is perfect but α is undefined
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))


# ---------------------------------------------------------------------- adjudication


@dataclass(frozen=True)
class Disagreement:
    link: Link
    verdicts: tuple[Verdict, ...]  # each reviewer's latest, kept in the log as given


def disagreements(store: Store, model_id: str | None = None) -> list[Disagreement]:
    """Disputed links with the reviewers' verdicts, best score first: the adjudicator's queue."""
    links = store.list_links(status=DISPUTED, model_id=model_id)
    by_link: dict[int, list[Verdict]] = defaultdict(list)
    for v in store.reviewer_verdicts([lk.link_id for lk in links]):
        by_link[v.target_id].append(v)
    return [Disagreement(lk, tuple(by_link[lk.link_id])) for lk in links]


def adjudicate(store: Store, link_id: int, verdict: str, adjudicator: str,
               note: str | None = None) -> int:
    """The adjudicator's ruling on a link: a verdict of its own, in force over the reviewers'."""
    return store.add_verdict(link_id, verdict, adjudicator, note=note, role=ADJUDICATION)


# ---------------------------------------------------------------------- activity


def activity(verdicts: Iterable[Verdict]) -> list[dict]:
    """Rows ``{"day", "annotator", "confirm", "reject", "unsure", "undo", "adjudications"}``,
    newest day first, one per annotator per day (UTC)."""
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for v in verdicts:
        key = (v.created.strftime("%Y-%m-%d"), v.annotator)
        counts[key]["undo" if v.verdict == REVOKE else v.verdict] += 1
        counts[key]["adjudications"] += v.role == ADJUDICATION
    by_name = sorted(counts.items(), key=lambda kv: kv[0][1])
    newest_first = sorted(by_name, key=lambda kv: kv[0][0], reverse=True)  # stable: names stay sorted
    return [{"day": day, "annotator": who, **{k: c.get(k, 0) for k in (*VERDICTS, "undo")},
             "adjudications": c.get("adjudications", 0)} for (day, who), c in newest_first]


def review_state(store: Store, link: Link, annotator: str) -> str:
    """The status line the review page may show ``annotator``: hidden while blind."""
    if link.status in (UNREVIEWED,) or not is_blind(store, link.link_id, annotator):
        return link.status
    return "hidden (double review: answer first)"
