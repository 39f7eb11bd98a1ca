"""A team on one project: blind double review, agreement with known answers, adjudication."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from db.records import ImageRecord
from db.store import Store
from engine.types import IDENTITY_AFFINE, Box, ModelRef, PairMatch
from hitl.team import (
    activity,
    adjudicate,
    agreement,
    disagreements,
    double_review_share,
    is_blind,
    judgement_table,
    plan_new_links,
    reviewers_for,
    second_reviews,
    set_double_review_share,
)

BOX = Box(0, 0, 10, 10)


@pytest.fixture
def store() -> Store:
    """Ten links between eleven images."""
    s = Store(":memory:")
    s.add_images([ImageRecord(f"i{k}", f"{k}", f"/x/{k}.jpg", 100, 100) for k in range(11)])
    s.add_model(ModelRef("m", "m"))
    run = s.start_run("m", {})
    s.add_links(run, [PairMatch(f"i{k}", f"i{k + 1}", BOX, BOX, IDENTITY_AFFINE, 0.5 - k / 100, 9)
                      for k in range(10)])
    return s


def test_draw_is_a_pure_function_of_the_link_and_the_share():
    assert {reviewers_for(k, 0.0) for k in range(200)} == {1}
    assert {reviewers_for(k, 1.0) for k in range(200)} == {2}
    drawn = [reviewers_for(k, 0.3) for k in range(4000)]
    assert drawn == [reviewers_for(k, 0.3) for k in range(4000)]
    assert 0.27 < drawn.count(2) / len(drawn) < 0.33
    with pytest.raises(ValueError, match="share"):
        reviewers_for(1, 1.5)


def test_plan_is_drawn_once_and_only_while_on(store):
    links = store.list_links()
    assert plan_new_links(store, links) == {} and store.review_plan() == {}  # off by default
    set_double_review_share(store, 1.0)
    assert double_review_share(store) == 1.0
    assert set(plan_new_links(store, links).values()) == {2}
    set_double_review_share(store, 0.5)
    assert plan_new_links(store, links) == {}  # already drawn: never moves
    assert set(store.review_plan().values()) == {2}


def test_blind_double_review_agreement_dispute_and_adjudication(store):
    set_double_review_share(store, 1.0)
    plan_new_links(store, store.list_links())
    store.add_verdict(1, "confirm", "ana")
    assert is_blind(store, 1, "ben") and not is_blind(store, 1, "ana")
    assert [lk.link_id for lk in second_reviews(store, "ben")] == [1]
    assert second_reviews(store, "ana") == []
    assert store.link_status(1) == "confirm"  # a single verdict is in force meanwhile

    store.add_verdict(1, "confirm", "ben")  # agreed
    assert store.link_status(1) == "confirm" and second_reviews(store, "cem") == []
    store.add_verdict(2, "confirm", "ana")
    store.add_verdict(2, "reject", "ben")  # disagreed
    assert store.link_status(2) == "disputed"
    assert [lk.link_id for lk in store.list_links(status=["confirm", "reject"])] == [1]  # training
    (dispute,) = disagreements(store)
    assert dispute.link.link_id == 2
    assert {(v.annotator, v.verdict) for v in dispute.verdicts} == {("ana", "confirm"), ("ben", "reject")}

    ruling = adjudicate(store, 2, "reject", "cem", note="different dog")
    assert store.link_status(2) == "reject" and disagreements(store) == []
    assert store.get_verdict(ruling).role == "adjudication"
    assert [v.verdict for v in store.link_history(2)] == ["confirm", "reject", "reject"]  # originals kept
    store.add_verdict(2, "confirm", "ana")  # a later review does not overturn the ruling
    assert store.link_status(2) == "reject"
    store.undo_verdict(ruling, "cem")
    assert store.link_status(2) == "disputed"  # undoing the ruling reopens the dispute


def test_outside_double_review_the_latest_verdict_is_in_force(store):
    store.add_verdict(3, "confirm", "ana")
    store.add_verdict(3, "reject", "ben")
    assert store.link_status(3) == "reject"
    assert not is_blind(store, 3, "cem")


def test_cohen_kappa_and_krippendorff_alpha_known_answer(store):
    """Ten links, two annotators agreeing on 8: 4 confirm-confirm, 4 reject-reject, 2 crossed.

    p_o = 0.8, p_e = 0.5 -> κ = 0.6; coincidences 8/8/2/2 of 20 values -> α = 1 - 0.2/(200/380) = 0.62.
    """
    ana = ["confirm"] * 5 + ["reject"] * 5
    ben = ["confirm"] * 4 + ["reject"] + ["confirm"] + ["reject"] * 4
    for link_id, (a, b) in enumerate(zip(ana, ben), start=1):
        store.add_verdict(link_id, a, "ana")
        store.add_verdict(link_id, b, "ben")
    store.add_verdict(1, "confirm", "cem")  # a third annotator on one link only
    found = agreement(judgement_table(store.reviewer_verdicts()))
    pair = next(p for p in found.pairs if (p.annotator_a, p.annotator_b) == ("ana", "ben"))
    assert (pair.n_links, pair.agreed) == (10, 8)
    assert pair.kappa == pytest.approx(0.6)
    cem = next(p for p in found.pairs if p.annotator_b == "cem" and p.annotator_a == "ana")
    assert (cem.n_links, cem.kappa) == (1, None)  # one shared label: κ undefined
    assert found.n_links == 10 and found.annotators == ("ana", "ben", "cem")
    only_two = agreement({k: {a: v for a, v in row.items() if a != "cem"}
                          for k, row in judgement_table(store.reviewer_verdicts()).items()})
    assert only_two.alpha == pytest.approx(0.62)


def test_agreement_of_nothing_is_empty():
    found = agreement({})
    assert (found.pairs, found.alpha, found.n_links) == ((), None, 0)


def test_activity_counts_per_annotator_per_day(store):
    day1, day2 = datetime(2026, 1, 1, 9, tzinfo=UTC), datetime(2026, 1, 2, 9, tzinfo=UTC)
    v = store.add_verdict(1, "confirm", "ana", created=day1)
    store.add_verdict(2, "reject", "ana", created=day1)
    store.undo_verdict(v, "ana", created=day2)
    store.add_verdict(3, "unsure", "ben", created=day2)
    adjudicate(store, 4, "confirm", "ben")
    rows = activity(store.list_verdicts(since=day1))
    today = rows[0]["day"]
    assert rows == [
        {"day": today, "annotator": "ben", "confirm": 1, "reject": 0, "unsure": 0, "undo": 0,
         "adjudications": 1},
        {"day": "2026-01-02", "annotator": "ana", "confirm": 0, "reject": 0, "unsure": 0, "undo": 1,
         "adjudications": 0},
        {"day": "2026-01-02", "annotator": "ben", "confirm": 0, "reject": 0, "unsure": 1, "undo": 0,
         "adjudications": 0},
        {"day": "2026-01-01", "annotator": "ana", "confirm": 1, "reject": 1, "unsure": 0, "undo": 0,
         "adjudications": 0}]
