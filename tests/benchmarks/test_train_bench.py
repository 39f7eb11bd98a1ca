"""benchmarks/train.py: the phase clock (a whole run takes minutes: it is a benchmark, run by hand)."""

from benchmarks.train import PhaseClock


def test_phase_clock_splits_the_round_at_each_phase():
    clock = PhaseClock()
    clock.starts = [("a", 10.0), ("b", 12.5), ("c", 20.0)]
    assert clock.durations(21.0) == {"a": 2.5, "b": 7.5, "c": 1.0}
