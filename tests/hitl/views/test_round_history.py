"""Rounds as chart rows; verdict counts since a round."""

from __future__ import annotations

from datetime import UTC, datetime

from db.records import TrainingRound
from hitl.views.round_history import last_round_start, metric_rows

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
