"""Rounds as chart rows; verdict counts since a round."""

from __future__ import annotations

from datetime import UTC, datetime

from db.records import TrainingRound, Verdict
from hitl.views.round_history import last_round_start, metric_rows, round_table, verdict_counts

T0, T1 = datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)


def test_metric_rows_flatten_before_and_after():
    rounds = [TrainingRound(1, "m0", "done", {}, T0, "m1",
                            {"before": {"map": 0.5, "holdout": {"ap": 0.6}, "note": "x"},
                             "after": {"map": 0.7, "holdout": {"ap": 0.65}, "n": True}}),
              TrainingRound(2, "m1", "running", {}, T1)]
    assert metric_rows(rounds) == [
        {"round": 1, "metric": "holdout.ap", "before": 0.6, "after": 0.65},
        {"round": 1, "metric": "map", "before": 0.5, "after": 0.7}]
    assert last_round_start(rounds) == T0  # round 2 is still running: counts start at round 1
    assert last_round_start([]) is None


def test_verdict_counts():
    def v(i: int, kind: str) -> Verdict:
        return Verdict(i, "link", i, kind, "mk", T0, revokes=1 if kind == "revoke" else None)

    log = [v(1, "confirm"), v(2, "confirm"), v(3, "reject"), v(4, "revoke")]
    assert verdict_counts(log) == {"confirm": 2, "reject": 1, "unsure": 0, "undo": 1}


def test_round_table_shows_each_rounds_own_figures():
    rounds = [TrainingRound(1, "m0", "done", {}, T0, "m1",
                            {"before": {"oneshot_map": 0.369}, "after": {"oneshot_map": 0.41, "heldout_link_ap": 0.5},
                             "steps": 60, "positives": {"mined": {"pairs": 96, "precision": 0.44}, "expert": {"pairs": 8},
                                           "rejected": {"pairs": 20}}}),
              TrainingRound(2, "m1", "failed", {}, T1)]
    first, second = round_table(rounds)
    assert first == {"round": 1, "status": "done", "steps": 60, "oneshot_map": "0.369 -> 0.410",
                     "heldout_link_ap": "- -> 0.500", "expert pairs": 8, "expert precision": None,
                     "mined pairs": 96, "mined precision": 0.44, "rejected pairs": 20}
    assert second == {"round": 2, "status": "failed", "steps": None}


def test_round_table_says_whether_the_new_model_was_activated():
    kept = TrainingRound(3, "m1", "done", {}, T1, "m2", {"activated": False, "gate": "its held-out link AP fell"})
    made = TrainingRound(4, "m1", "done", {}, T1, "m3", {"activated": True, "gate": "held-out pairs' loss fell"})
    assert round_table([kept])[0]["new model"] == "not activated: its held-out link AP fell"
    assert round_table([made])[0]["new model"] == "made active"
